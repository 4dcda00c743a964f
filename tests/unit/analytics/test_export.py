"""CSV export: RFC 4180 quoting, and rows that parse back to the facts."""

from __future__ import annotations

import csv
import io
from datetime import datetime

from analytics_service.core.events import StepStatus, derive_facts
from analytics_service.core.export import STEP_COLUMNS, header, step_rows
from tests.unit.analytics.builders import step_event


def test_rows_with_commas_quotes_and_newlines_parse_back() -> None:
    event = step_event("e1", "charge", status=StepStatus.FAILED, error_type="Card,Declined")
    fact = derive_facts((event,)).steps[0]
    awkward = 'said "no",\nthen hung up'
    fact = type(fact)(**{**vars(fact), "error_message": awkward, "depends_on": ("a", "b")})
    text = header(STEP_COLUMNS) + step_rows([fact])
    assert text.endswith("\r\n")
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    assert len(rows) == 1
    row = rows[0]
    assert row["error_type"] == "Card,Declined"
    assert row["error_message"] == awkward
    assert row["status"] == "failed"
    assert float(row["duration_seconds"]) == fact.duration_seconds
    assert datetime.fromisoformat(row["finished_at"]) == fact.finished_at
    assert row["depends_on"].split(" ") == ["a", "b"]

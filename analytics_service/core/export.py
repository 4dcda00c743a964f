"""Facts as RFC 4180 CSV: a header row, then one row per fact, CRLF line ends."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from datetime import datetime

from analytics_service.core.events import ExecutionFact, StepAttemptFact

STEP_COLUMNS = (
    "tenant",
    "workflow_id",
    "workflow_version",
    "execution_id",
    "step_id",
    "action",
    "attempt",
    "status",
    "error_type",
    "error_message",
    "started_at",
    "finished_at",
    "duration_seconds",
    "depends_on",
)
EXECUTION_COLUMNS = (
    "tenant",
    "workflow_id",
    "workflow_version",
    "execution_id",
    "status",
    "error_type",
    "error_message",
    "started_at",
    "finished_at",
    "duration_seconds",
    "estimated_time_saved_seconds",
    "business_value",
    "parent_execution_id",
)
# Dependencies share one cell; step ids cannot contain spaces.
DEPENDS_ON_SEPARATOR = " "


def _cell(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, tuple):
        return DEPENDS_ON_SEPARATOR.join(value)
    if hasattr(value, "value"):
        return str(value.value)
    return str(value)


def csv_lines(rows: Iterable[Sequence[object]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerows([_cell(value) for value in row] for row in rows)
    return buffer.getvalue()


def header(columns: Sequence[str]) -> str:
    return csv_lines([columns])


def step_rows(facts: Iterable[StepAttemptFact]) -> str:
    return csv_lines([getattr(fact, column) for column in STEP_COLUMNS] for fact in facts)


def execution_rows(facts: Iterable[ExecutionFact]) -> str:
    return csv_lines([getattr(fact, column) for column in EXECUTION_COLUMNS] for fact in facts)

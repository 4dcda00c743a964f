"""`step_attempts` rows from step events: one row per attempt, per fallback and per
compensation (`kind`), each with its own outcome.

An attempt's row is written when it starts and updated once, when it ends; a finished
row never changes again (a cancel of a step waiting to retry does not touch the attempt
that failed). A fallback or compensation is recorded as it finishes, keyed by the
attempt it followed.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from engine_service.core.state import EventKind, ExecutionEvent, StepStatus

ATTEMPT = "ATTEMPT"
FALLBACK = "FALLBACK"
COMPENSATION = "COMPENSATION"
_KINDS = {
    EventKind.STEP_STATUS_CHANGED: ATTEMPT,
    EventKind.STEP_FALLBACK_FINISHED: FALLBACK,
    EventKind.STEP_COMPENSATION_FINISHED: COMPENSATION,
}
# The conflict target of the upsert, and which rows it may still update.
KEY = ("execution_id", "step_id", "attempt", "kind")
UNFINISHED = StepStatus.RUNNING.value
# A row is written when its attempt starts and updated when it ends one of these ways.
_RECORDED = frozenset(
    {
        StepStatus.RUNNING,
        StepStatus.COMPLETED,
        StepStatus.FAILED,
        StepStatus.TIMED_OUT,
        StepStatus.CANCELLED,
    }
)


def attempt_rows(events: Sequence[ExecutionEvent]) -> list[dict[str, Any]]:
    """The rows `events` insert or update, merged so each key appears once."""
    rows: dict[tuple[str, str, int, str], dict[str, Any]] = {}
    for event in events:
        kind = _KINDS.get(event.kind)
        if kind is None or event.step_status not in _RECORDED or event.attempt <= 0:
            continue
        key = (event.execution_id, event.step_id, event.attempt, kind)
        row = rows.get(key)
        if row is None:
            row = rows[key] = _new_row(event, kind)
        elif row["status"] != UNFINISHED:
            continue  # ended earlier in this batch: later events are not its outcome
        row.update(_ending(event))
    return list(rows.values())


def _new_row(event: ExecutionEvent, kind: str) -> dict[str, Any]:
    started: datetime | None
    if event.step_status is StepStatus.RUNNING:
        started = event.timestamp
    elif kind == ATTEMPT:
        started = event.started_at
    else:  # a handler has no start event; its duration tells when it started
        started = event.timestamp - timedelta(seconds=event.duration or 0)
    return {
        "execution_id": event.execution_id,
        "step_id": event.step_id,
        "attempt": event.attempt,
        "kind": kind,
        "action": event.action,
        "status": UNFINISHED,
        "started_at": started,
        "finished_at": None,
        "duration_seconds": None,
        "error_type": "",
    }


def _ending(event: ExecutionEvent) -> dict[str, Any]:
    assert event.step_status is not None
    if event.step_status is StepStatus.RUNNING:
        return {}
    return {
        "status": event.step_status.value,
        "finished_at": event.timestamp,
        "duration_seconds": event.duration,
        "error_type": event.error.type if event.error else "",
    }

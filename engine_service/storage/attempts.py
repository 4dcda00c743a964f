"""`step_attempts` rows from step events: one row per attempt, updated as it finishes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from engine_service.core.state import ExecutionEvent, StepStatus

# An attempt's row is written when it starts and updated when it ends one of these ways.
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
    """The attempt rows `events` insert or update, merged so each key appears once."""
    rows: dict[tuple[str, str, int], dict[str, Any]] = {}
    for event in events:
        if event.step_status not in _RECORDED or event.attempt <= 0:
            continue
        key = (event.execution_id, event.step_id, event.attempt)
        row = rows.setdefault(key, _attempt_row(event))
        row.update(_attempt_update(event))
    return list(rows.values())


def _attempt_row(event: ExecutionEvent) -> dict[str, Any]:
    started = event.timestamp if event.step_status is StepStatus.RUNNING else event.started_at
    return {
        "execution_id": event.execution_id,
        "step_id": event.step_id,
        "attempt": event.attempt,
        "action": event.action,
        "status": StepStatus.RUNNING.value,
        "started_at": started,
        "finished_at": None,
        "duration_seconds": None,
        "error_type": "",
    }


def _attempt_update(event: ExecutionEvent) -> dict[str, Any]:
    assert event.step_status is not None
    if event.step_status is StepStatus.RUNNING:
        return {}
    return {
        "status": event.step_status.value,
        "finished_at": event.timestamp,
        "duration_seconds": event.duration,
        "error_type": event.error.type if event.error else "",
    }

"""Durations in events are never negative, whatever the wall clock does."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from engine_service.core.definitions import parse_definition
from engine_service.core.execution_events import ExecutionEvents
from engine_service.core.state import ExecutionState, ExecutionStatus

STARTED = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


class SteppedBackClock:
    """A wall clock that NTP stepped back by two seconds after the execution started."""

    def now(self) -> datetime:
        return STARTED - timedelta(seconds=2)


def test_an_execution_that_ends_after_the_clock_stepped_back_has_no_negative_duration() -> None:
    # ../shared/repros/analytics/relay_poison.py: analytics refuses a negative duration,
    # and such an event used to hold back the whole outbox.
    definition = parse_definition({"id": "wf", "steps": [{"id": "a", "action": "noop"}]})
    state = ExecutionState(
        id="e1",
        tenant="default",
        workflow_id="wf",
        workflow_version=1,
        created_at=STARTED,
        status=ExecutionStatus.RUNNING,
        started_at=STARTED,
    )
    events = ExecutionEvents(definition, SteppedBackClock())
    for status in (ExecutionStatus.COMPLETED, ExecutionStatus.FAILED, ExecutionStatus.CANCELLED):
        event = events.execution_event(state, status)
        assert event.duration == 0.0

"""The critical path: the chain each execution waited on, most common across executions."""

from __future__ import annotations

from datetime import timedelta

import pytest

from analytics_service.core.critical_path import critical_path
from analytics_service.core.events import StepAttemptFact, derive_facts
from tests.unit.analytics.builders import T0, step_event


def diamond(execution_id: str, slow_branch: str) -> tuple[StepAttemptFact, ...]:
    """start -> (left | right) -> end, where `slow_branch` finishes last."""
    left_end = 20 if slow_branch == "left" else 10
    right_end = 20 if slow_branch == "right" else 10
    events = (
        step_event(execution_id, "start", seconds=5, finished_at=T0 + timedelta(seconds=5)),
        step_event(
            execution_id,
            "left",
            seconds=left_end - 5,
            finished_at=T0 + timedelta(seconds=left_end),
            depends_on=("start",),
        ),
        step_event(
            execution_id,
            "right",
            seconds=right_end - 5,
            finished_at=T0 + timedelta(seconds=right_end),
            depends_on=("start",),
        ),
        step_event(
            execution_id,
            "end",
            seconds=2,
            finished_at=T0 + timedelta(seconds=22),
            depends_on=("left", "right"),
        ),
    )
    return derive_facts(events).steps


def test_the_chain_critical_in_most_executions_wins_with_its_share() -> None:
    facts = diamond("e1", "left") + diamond("e2", "left") + diamond("e3", "right")
    path = critical_path(facts)
    assert path.step_ids == ("start", "left", "end")
    assert path.share == pytest.approx(2 / 3)
    # From the start of `start` (T0) to the end of `end` (T0 + 22s).
    assert path.average_duration == pytest.approx(22.0)


def test_retried_steps_span_from_their_first_attempt() -> None:
    first = step_event("e1", "only", attempt=1, seconds=3, finished_at=T0 + timedelta(seconds=3))
    second = step_event("e1", "only", attempt=2, seconds=4, finished_at=T0 + timedelta(seconds=9))
    path = critical_path(derive_facts((first, second)).steps)
    assert path.step_ids == ("only",)
    assert path.average_duration == pytest.approx(9.0)


def test_no_facts_no_path() -> None:
    path = critical_path(())
    assert path.step_ids == ()
    assert path.share == 0.0

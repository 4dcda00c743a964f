"""`evolve` (the hot path's `dataclasses.replace`) and the lazy views conditions read."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from engine_service.core.state import (
    EventKind,
    ExecutionEvent,
    ExecutionState,
    StepState,
    StepStatus,
    evolve,
)
from engine_service.core.step_decisions import LazyActivation, StepView

NOW = datetime(2026, 11, 22, tzinfo=UTC)


def test_evolve_equals_replace_and_leaves_the_original_alone() -> None:
    event = ExecutionEvent(
        event_id="x",
        execution_id="e",
        sequence=0,
        timestamp=NOW,
        kind=EventKind.STEP_STATUS_CHANGED,
        tenant="t",
        workflow_id="w",
        workflow_version=1,
        step_id="a",
        depends_on=("b",),
    )
    changed = evolve(event, sequence=7, step_status=StepStatus.RUNNING)
    assert changed == replace(event, sequence=7, step_status=StepStatus.RUNNING)
    assert event.sequence == 0
    assert event.step_status is None
    assert evolve(event) == event
    assert evolve(event) is not event


def test_evolve_refuses_an_unknown_field() -> None:
    with pytest.raises(TypeError, match="StepState has no field \\['bogus'\\]"):
        evolve(StepState("a"), bogus=1)


def test_the_step_view_reads_output_and_status_of_each_step() -> None:
    steps = {
        "a": StepState("a", status=StepStatus.COMPLETED, output={"n": 1}),
        "b": StepState("b"),
    }
    view = StepView(steps)
    assert dict(view) == {
        "a": {"output": {"n": 1}, "status": "COMPLETED"},
        "b": {"output": None, "status": "PENDING"},
    }
    assert len(view) == 2
    assert "a" in view
    assert "c" not in view


def test_a_lazy_activation_is_built_once_on_first_read() -> None:
    builds = []

    def build() -> dict[str, object]:
        builds.append(1)
        return {"inputs": {"x": 1}, "steps": {}}

    activation = LazyActivation(build)
    assert builds == []
    assert activation["inputs"] == {"x": 1}
    assert sorted(activation) == ["inputs", "steps"]
    assert len(activation) == 2
    assert builds == [1]


def test_an_execution_state_evolves_with_its_steps_shared() -> None:
    state = ExecutionState(id="e", tenant="t", workflow_id="w", workflow_version=1, created_at=NOW)
    later = evolve(state, last_sequence=3)
    assert later.last_sequence == 3
    assert later.steps is state.steps

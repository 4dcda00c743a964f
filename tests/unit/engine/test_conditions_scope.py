"""What a condition sees: the step's upstream steps only, all settled, whatever the timing.

Conditions (`when`, connection conditions) and `transform` expressions read `steps`; a
step that is not upstream may not have run, so it is never in `steps`, however the
expression names it (`steps.b`, `steps[inputs.which]`, a macro over `steps`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from engine_service.core.definitions import parse_definition
from engine_service.core.engine import Engine
from engine_service.core.errors import DefinitionInvalid
from engine_service.core.state import ExecutionState, StepState, StepStatus
from engine_service.core.step_decisions import StepDecisions
from tests.unit.engine.scheduler_harness import run

pytestmark = pytest.mark.looptime

SS = StepStatus


def _racing(b_seconds: float, when: str) -> dict[str, Any]:
    """c waits for x only; b runs alongside, finishing before or after x."""
    return {
        "id": "wf",
        "steps": [
            {"id": "x", "action": "delay", "parameters": {"seconds": 1}},
            {"id": "b", "action": "delay", "parameters": {"seconds": b_seconds}},
            {"id": "c", "action": "noop", "depends_on": ["x"], "when": when},
        ],
    }


@pytest.mark.parametrize("b_seconds", [0.5, 5])
async def test_a_computed_index_cannot_read_a_step_that_is_not_upstream(
    engine: Engine, b_seconds: float
) -> None:
    when = 'steps[inputs.which].status == "COMPLETED"'
    final, _ = await run(engine, _racing(b_seconds, when), inputs={"which": "b"})
    assert final.steps["c"].status is SS.FAILED
    assert final.steps["c"].error is not None
    assert final.steps["c"].error.type == "ConditionError"
    assert "no such key: 'b'" in final.steps["c"].error.message


@pytest.mark.parametrize("b_seconds", [0.5, 5])
async def test_a_macro_over_steps_sees_the_upstream_steps_only(
    engine: Engine, b_seconds: float
) -> None:
    when = "steps.all(k, k == 'x') && size(steps) == 1 && !('b' in steps)"
    final, _ = await run(engine, _racing(b_seconds, when))
    assert final.steps["c"].status is SS.COMPLETED


async def test_the_activation_holds_transitive_upstream_steps_all_settled(engine: Engine) -> None:
    definition = {
        "id": "wf",
        "steps": [
            {"id": "a", "action": "echo", "parameters": {"n": 1}},
            {"id": "side", "action": "delay", "parameters": {"seconds": 9}},
            {"id": "b", "action": "echo", "depends_on": ["a"], "parameters": {"n": 2}},
            {
                "id": "c",
                "action": "transform",
                "depends_on": ["b"],
                "when": "steps.exists(k, k == 'a') && steps.all(k, steps[k].status == 'COMPLETED')",
                "parameters": {"expression": "steps.map(k, k)"},
            },
        ],
    }
    final, _ = await run(engine, definition)
    assert final.steps["c"].status is SS.COMPLETED
    assert sorted(final.steps["c"].output) == ["a", "b"]


@pytest.mark.parametrize(
    "when",
    [
        "steps.exists(k, steps[k].status == 'FAILED')",
        "steps.all(k, steps[k].status == 'COMPLETED')",
        "steps.exists_one(k, k == 'a')",
        "steps.map(k, k).size() == 1",
        "steps.filter(k, k == 'a').size() == 1",
        "'a' in steps && size(steps) == 1 && steps.size() == 1",
        "steps[inputs.which].status == 'COMPLETED'",
    ],
)
def test_macros_and_computed_indexes_over_steps_are_accepted(when: str) -> None:
    steps = [
        {"id": "a", "action": "noop"},
        {"id": "c", "action": "noop", "depends_on": ["a"], "when": when},
    ]
    parse_definition({"id": "w", "steps": steps})


@pytest.mark.parametrize(
    ("when", "message"),
    [
        ("steps.b.status == 'COMPLETED'", "steps.b: step 'b' is not upstream of 'c'"),
        ("steps['b'].status == 'COMPLETED'", "steps.b: step 'b' is not upstream of 'c'"),
        ("steps.exists(k, k == 'a') && has(steps.b.output)", "step 'b' is not upstream"),
        ("steps.nope.status == 'COMPLETED'", "steps.nope: unknown step 'nope'"),
    ],
)
def test_a_literal_step_that_is_not_upstream_is_still_refused(when: str, message: str) -> None:
    steps = [
        {"id": "a", "action": "noop"},
        {"id": "b", "action": "noop"},
        {"id": "c", "action": "noop", "depends_on": ["a"], "when": when},
    ]
    with pytest.raises(DefinitionInvalid) as info:
        parse_definition({"id": "w", "steps": steps})
    assert [(p.path, message in p.message) for p in info.value.problems] == [
        ("steps[2].when", True)
    ]


def test_a_compensation_sees_its_own_step_besides_the_upstream_ones() -> None:
    definition = parse_definition(
        {
            "id": "w",
            "steps": [
                {"id": "a", "action": "noop"},
                {"id": "other", "action": "noop"},
                {"id": "b", "action": "noop", "depends_on": ["a"]},
            ],
        }
    )
    state = ExecutionState(
        id="e",
        tenant="t",
        workflow_id="w",
        workflow_version=1,
        created_at=datetime(2024, 1, 1, tzinfo=UTC),
        steps={
            sid: StepState(sid, status=SS.COMPLETED, output={"n": 1}) for sid in ["a", "b", "other"]
        },
    )
    decisions = StepDecisions(definition, {})
    assert list(decisions.lazy_activation(state, "b")["steps"]) == ["a"]
    assert list(decisions.lazy_activation(state, "b", with_self=True)["steps"]) == ["a", "b"]
    assert decisions.lazy_activation(state, "b")["steps"]["a"] == {
        "output": {"n": 1},
        "status": "COMPLETED",
    }

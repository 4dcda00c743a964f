"""Limits on CEL expressions: length and nesting before the library sees them (it crashes
on deep trees), and a budget on what an evaluation may cost (it blocks the event loop)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from typing import Any

import pytest

from engine_service.core.cel_budget import EXPRESSION_LIMITS
from engine_service.core.conditions import (
    ConditionTooCostly,
    ExpressionTooCostly,
    compile_condition,
    evaluate_condition,
    evaluate_expression,
)
from engine_service.core.definitions import parse_definition, validate_definition
from engine_service.core.engine import Engine
from engine_service.core.errors import ConditionError, ExpressionError
from engine_service.core.state import ExecutionState, StepState, StepStatus
from engine_service.core.step_decisions import SettleStep, StepDecisions
from tests.unit.engine.scheduler_harness import run

LIMITS = EXPRESSION_LIMITS
# The expressions of issue 11: each took the process down (signal 11) in the library.
CRASHING = {
    "selections": "inputs" + ".a" * 20000 + " == 1",
    "additions": "1" + " + 1" * 20000 + " == 1",
    "indexes": "inputs" + "[0]" * 20000 + " == 1",
    "method calls": "'x'" + ".size().string()" * 10000 + " == ''",
}


def _in_a_subprocess(code: str) -> subprocess.CompletedProcess[str]:
    """A crash of the CEL library kills the process it runs in: not pytest's."""
    return subprocess.run(
        [sys.executable, "-"],
        input=textwrap.dedent(code),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _lit(count: int) -> str:
    return "[" + ",".join(str(n) for n in range(count)) + "]"


def test_expressions_that_crash_the_library_are_refused_naming_the_field() -> None:
    steps = [
        {"id": f"s{i}", "action": "noop", "when": when} for i, when in enumerate(CRASHING.values())
    ]
    done = _in_a_subprocess(
        f"""
        import json
        from engine_service.core.definitions import validate_definition
        problems, _, _ = validate_definition({{"id": "w", "steps": {steps!r}}})
        print(json.dumps([[p.path, p.message] for p in problems]))
        """
    )
    assert done.returncode == 0, done.stderr[-2000:]
    problems = json.loads(done.stdout)
    assert [path for path, _ in problems] == [f"steps[{i}].when" for i in range(len(CRASHING))]
    assert all("characters, over the limit of 4096" in message for _, message in problems)


@pytest.mark.parametrize("expression", list(CRASHING.values()), ids=list(CRASHING))
def test_evaluating_an_expression_that_crashes_the_library_fails_cleanly(expression: str) -> None:
    done = _in_a_subprocess(
        f"""
        from engine_service.core.conditions import evaluate_expression
        from engine_service.core.errors import ExpressionError
        try:
            evaluate_expression({expression!r}, {{"inputs": {{}}}})
        except ExpressionError as exc:
            print(exc.reason)
        """
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "over the limit of 4096" in done.stdout


@pytest.mark.parametrize(
    "expression",
    [
        "inputs" + ".a" * 120 + " == 1",
        "1" + " + 1" * 120 + " == 122",
        "inputs.x" + "[0]" * 120,
        "true" + " && true" * 120,
        "!" * 120 + "true",
        "size(" * 40 + "'x'" + ")" * 40,
        "(" * 40 + "1" + ")" * 40,
        "[" * 40 + "]" * 40,
        "true ? 1 : " * 40 + "1",
    ],
)
def test_expressions_nesting_past_the_limit_are_refused(expression: str) -> None:
    assert len(expression) <= LIMITS.max_length
    message = compile_condition(expression)
    assert message is not None
    assert "deep" in message
    with pytest.raises(ConditionError, match="deep"):
        evaluate_condition(expression, {"inputs": {}})


@pytest.mark.parametrize(
    "expression",
    [
        "inputs" + ".a" * 95 + " == 1",
        " || ".join(f"inputs.x == {n}" for n in range(40)),
        "size(" * 30 + "'x'" + ")" * 30 + " > 0",
    ],
)
def test_expressions_within_the_limits_compile(expression: str) -> None:
    assert compile_condition(expression) is None


def test_a_long_expression_is_refused_with_its_length() -> None:
    expression = "inputs.x == '" + "a" * LIMITS.max_length + "'"
    assert compile_condition(expression) == (
        f"{len(expression)} characters, over the limit of {LIMITS.max_length}"
    )


def test_garbage_too_deep_for_the_library_is_refused_without_reaching_it() -> None:
    done = _in_a_subprocess(
        """
        from engine_service.core.conditions import compile_condition
        print(compile_condition(")" + "inputs" + ".a" * 1300))
        print(compile_condition("#" + "(" * 1000))
        """
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("invalid CEL") == 2


# -- the evaluation budget ----------------------------------------------------------------


def test_nested_comprehensions_over_literals_are_refused_at_registration() -> None:
    when = f"{_lit(300)}.all(a, {_lit(300)}.all(b, {_lit(300)}.all(c, a + b + c >= 0)))"
    problems, _, _ = validate_definition(
        {
            "id": "w",
            "steps": [
                {"id": "a", "action": "noop", "when": when},
                {"id": "b", "action": "transform", "parameters": {"expression": when}},
            ],
        }
    )
    assert [p.path for p in problems] == ["steps[0].when", "steps[1].parameters.expression"]
    assert all("over the budget of 50000" in p.message for p in problems)


def test_comprehensions_over_small_literals_are_accepted() -> None:
    assert compile_condition(f"{_lit(20)}.all(a, {_lit(20)}.exists(b, a == b))") is None


def test_a_condition_whose_data_makes_it_too_costly_fails_with_its_own_type() -> None:
    activation: dict[str, Any] = {"inputs": {"items": list(range(300))}}
    when = "inputs.items.all(a, inputs.items.all(b, inputs.items.all(c, a + b + c >= 0)))"
    assert compile_condition(when) is None  # the data is unknown at registration
    with pytest.raises(ConditionTooCostly, match="over the budget of 50000") as info:
        evaluate_condition(when, activation)
    assert isinstance(info.value, ConditionError)
    assert evaluate_condition(when, {"inputs": {"items": list(range(5))}}) is True


def test_a_quadratic_map_over_large_data_is_too_costly() -> None:
    expression = "inputs.items.map(x, x * 2)"
    with pytest.raises(ExpressionTooCostly) as info:
        evaluate_expression(expression, {"inputs": {"items": list(range(2000))}})
    assert not isinstance(info.value, ConditionError)
    assert evaluate_expression(expression, {"inputs": {"items": [1, 2]}}) == [2, 4]


def test_data_too_large_to_hand_over_is_too_costly_but_unread_data_is_free() -> None:
    big = {"blob": [{"k": str(n)} for n in range(20_000)], "flag": True}
    with pytest.raises(ConditionTooCostly, match="the data it reads is over"):
        evaluate_condition("size(inputs.blob) > 0", {"inputs": big})
    # Only the parts an expression names are handed to the library.
    assert evaluate_condition("inputs.flag", {"inputs": big}) is True
    assert evaluate_condition("has(inputs.flag) && !has(inputs.nope)", {"inputs": big}) is True


def test_data_nested_too_deep_is_refused_before_the_library_converts_it() -> None:
    deep: Any = 1
    for _ in range(10_000):
        deep = [deep]
    with pytest.raises(ConditionTooCostly, match="nested over 200 deep"):
        evaluate_condition("size(inputs.x) == 1", {"inputs": {"x": deep}})


def test_a_costly_condition_fails_its_step_not_the_engine() -> None:
    when = "inputs.items.all(a, inputs.items.all(b, a != b || a == b))"
    definition = parse_definition(
        {"id": "w", "steps": [{"id": "a", "action": "noop", "when": when}]}
    )
    state = ExecutionState(
        id="e",
        tenant="t",
        workflow_id="w",
        workflow_version=1,
        created_at=datetime(2024, 1, 1, tzinfo=UTC),
        inputs={"items": list(range(1000))},
        steps={"a": StepState("a")},
    )
    decision = StepDecisions(definition, {}).decide(state, definition.steps[0])
    assert isinstance(decision, SettleStep)
    assert decision.error is not None
    assert decision.error.type == "ConditionTooCostly"


def test_expression_errors_keep_their_types() -> None:
    with pytest.raises(ExpressionError) as info:
        evaluate_expression("inputs.nope", {"inputs": {}})
    assert not isinstance(info.value, ExpressionTooCostly)


@pytest.mark.looptime
async def test_a_costly_transform_fails_its_step_and_the_run_goes_on(engine: Engine) -> None:
    definition = {
        "id": "wf",
        "on_failure": "CONTINUE",
        "steps": [
            {
                "id": "big",
                "action": "transform",
                "parameters": {"expression": "inputs.items.map(x, x * 2)"},
            },
            {"id": "after", "action": "echo", "parameters": {"n": 1}},
        ],
    }
    final, _ = await run(engine, definition, inputs={"items": list(range(2000))})
    assert final.steps["big"].status is StepStatus.FAILED
    assert final.steps["big"].error is not None
    assert final.steps["big"].error.type == "ExpressionTooCostly"
    assert final.steps["after"].output == {"n": 1}

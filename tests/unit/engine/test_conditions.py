"""CEL conditions and transform expressions: compile checks, evaluation, JSON conversion."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine_service.core.conditions import (
    compile_condition,
    evaluate_condition,
    evaluate_expression,
    referenced_steps,
    to_json,
)
from engine_service.core.errors import ConditionError, EngineError, ExpressionError

# Shared CI machines are slow at times: time limits would make these flaky, not stricter.
relaxed = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=50)

ACTIVATION: dict[str, Any] = {
    "inputs": {"amount": 120, "region": "eu", "tags": ["a", "b"]},
    "steps": {
        "check": {"output": {"approved": True, "score": 0.75}, "status": "COMPLETED"},
        "flaky": {"output": None, "status": "FAILED"},
    },
}


def test_valid_and_empty_expressions_compile() -> None:
    assert compile_condition("inputs.amount > 100 && steps.check.status == 'COMPLETED'") is None
    assert compile_condition("") is None
    assert compile_condition("   ") is None


def test_a_syntax_error_is_returned_as_a_message() -> None:
    message = compile_condition("inputs.amount >")
    assert message is not None
    assert "Syntax error" in message


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("inputs.amount > 100", True),
        ("inputs.region == 'us'", False),
        ("steps.check.output.approved && steps.check.output.score > 0.5", True),
        ("steps.flaky.status == 'FAILED'", True),
        ("'b' in inputs.tags", True),
        ("has(inputs.missing)", False),
        ("", True),
    ],
)
def test_conditions_evaluate_over_inputs_and_step_results(expression: str, expected: bool) -> None:
    assert evaluate_condition(expression, ACTIVATION) is expected


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ("inputs.amount", "must evaluate to a bool, got int 120"),
        ("inputs.nope == 1", "no such key: 'nope'"),
        ("steps.ghost.status == 'COMPLETED'", "no such key: 'ghost'"),
        ("inputs.tags[9] == 'a'", "index out of bounds"),
        ("inputs.amount / 0 > 1", "division by zero"),
        ("inputs.region + 1 == 2", "Unsupported operation"),
        ("nosuch(1)", "Undefined variable or function"),
        ("inputs.amount >", "invalid CEL"),
    ],
)
def test_bad_conditions_raise_a_condition_error_naming_the_expression(
    expression: str, reason: str
) -> None:
    with pytest.raises(ConditionError, match=reason) as info:
        evaluate_condition(expression, ACTIVATION)
    assert info.value.expression == expression
    assert isinstance(info.value, EngineError)


def test_evaluate_expression_returns_plain_json() -> None:
    result = evaluate_expression(
        "{'total': inputs.amount * 2, 'ratio': steps.check.output.score, 'tags': inputs.tags,"
        " 'ok': true, 'none': null, 'n': 3u}",
        ACTIVATION,
    )
    assert result == {
        "total": 240,
        "ratio": 0.75,
        "tags": ["a", "b"],
        "ok": True,
        "none": None,
        "n": 3,
    }


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ('b"hi"', "aGk="),
        ('timestamp("2024-05-01T10:00:00Z")', "2024-05-01T10:00:00Z"),
        ('duration("1.5s")', "1.5s"),
        ('duration("90s")', "90s"),
        ("{1: 'a', 2: 'b'}", {"1": "a", "2": "b"}),
        ("optional.of(5)", 5),
        ("optional.none()", None),
        ("[optional.of([1])]", [[1]]),
    ],
)
def test_non_json_cel_values_are_converted(expression: str, expected: Any) -> None:
    assert evaluate_expression(expression, ACTIVATION) == expected


def test_expression_errors_are_expression_errors_not_condition_errors() -> None:
    with pytest.raises(ExpressionError, match="no such key") as info:
        evaluate_expression("inputs.nope", ACTIVATION)
    assert not isinstance(info.value, ConditionError)


def test_results_json_cannot_carry_are_expression_errors() -> None:
    with pytest.raises(ExpressionError, match="not representable in JSON"):
        evaluate_expression('double("inf")', ACTIVATION)


def test_to_json_writes_bool_map_keys_as_json_booleans() -> None:
    assert to_json({True: 1, False: 0}) == {"true": 1, "false": 0}


def test_to_json_rejects_unknown_types() -> None:
    with pytest.raises(TypeError, match="object"):
        to_json(object())


@pytest.mark.parametrize(
    ("expression", "steps"),
    [
        ("steps.a.output.x > 1 && steps.b.status == 'OK'", {"a", "b"}),
        ('steps["with-dash"].status == "X"', {"with-dash"}),
        ("steps [ 'single' ].output", {"single"}),
        ("steps . spaced .output", {"spaced"}),
        ('"steps.in_string" == inputs.x', set()),
        ("'it''s' == \"steps.no\" && steps.yes.output", {"yes"}),
        ('r"""steps.raw""" == "" && steps.real.status == ""', {"real"}),
        ("inputs.steps.x && mysteps.y", set()),
        ("size(steps) > 0", set()),
    ],
)
def test_referenced_steps_finds_selections_outside_string_literals(
    expression: str, steps: set[str]
) -> None:
    assert referenced_steps(expression) == steps


@relaxed
@given(st.integers(-(2**40), 2**40), st.integers(-(2**40), 2**40))
def test_comparisons_agree_with_python(a: int, b: int) -> None:
    activation = {"inputs": {"a": a, "b": b}, "steps": {}}
    assert evaluate_condition("inputs.a < inputs.b", activation) is (a < b)
    assert evaluate_expression("inputs.a + inputs.b", activation) == a + b

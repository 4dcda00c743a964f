"""JSON Schemas match patterns with RE2: linear time whatever the pattern and the text,
and a pattern RE2 cannot run is refused at registration, naming where it is."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from typing import Any

import pytest

from engine_service.core.definitions import parse_definition
from engine_service.core.errors import DefinitionInvalid
from engine_service.core.json_schemas import schema_problem, validation_errors, validator

CATASTROPHIC = {"type": "object", "properties": {"x": {"type": "string", "pattern": "^(a+)+$"}}}
# With a backtracking engine this takes about 2**64 steps: it never finishes.
EVIL_TEXT = "a" * 64 + "!"


def _in_a_subprocess(code: str) -> str:
    """Python's `re` does not stop for signals mid-match: a subprocess can be killed."""
    done = subprocess.run(
        [sys.executable, "-"],
        input=textwrap.dedent(code),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


def test_start_execution_inputs_are_matched_in_linear_time() -> None:
    out = _in_a_subprocess(
        f"""
        from engine_service.core.engine import _check_inputs
        from engine_service.core.errors import InvalidArgument
        try:
            _check_inputs({{"x": {EVIL_TEXT!r}}}, {CATASTROPHIC!r})
        except InvalidArgument as exc:
            print([p.path for p in exc.problems])
        """
    )
    assert out.strip() == "['inputs.x']"


def test_step_inputs_outputs_and_schedule_inputs_are_matched_in_linear_time() -> None:
    out = _in_a_subprocess(
        f"""
        from engine_service.core.schedules import check_inputs
        from engine_service.core.step_decisions import schema_problem
        from engine_service.core.errors import InvalidArgument
        print(schema_problem({{"x": {EVIL_TEXT!r}}}, {CATASTROPHIC!r}))
        try:
            check_inputs({{"x": {EVIL_TEXT!r}}}, {CATASTROPHIC!r})
        except InvalidArgument as exc:
            print([p.path for p in exc.problems])
        """
    )
    assert out.splitlines() == [
        f"x: {EVIL_TEXT!r} does not match '^(a+)+$'",
        "['schedule.inputs.x']",
    ]


def test_pattern_properties_and_additional_properties_are_matched_in_linear_time() -> None:
    schema = {"patternProperties": {"^(a+)+$": {"type": "integer"}}, "additionalProperties": False}
    out = _in_a_subprocess(
        f"""
        from engine_service.core.json_schemas import validation_errors
        print(sorted(e.message for e in validation_errors({{{EVIL_TEXT!r}: 1}}, {schema!r})))
        """
    )
    assert "does not match any of the regexes" in out


@pytest.mark.parametrize(
    ("schema", "where"),
    [
        ({"properties": {"x": {"pattern": "(a)\\1"}}}, ("properties", "x", "pattern")),
        ({"patternProperties": {"(?=x)": {}}}, ("patternProperties", "(?=x)")),
        ({"prefixItems": [{"pattern": "(?<!a)b"}]}, ("prefixItems", 0, "pattern")),
        ({"propertyNames": {"pattern": "a\\Z"}}, ("propertyNames", "pattern")),
    ],
)
def test_a_pattern_re2_cannot_run_is_refused_where_it_is(
    schema: dict[str, Any], where: tuple[str | int, ...]
) -> None:
    found = schema_problem(schema)
    assert found is not None
    assert found[0] == where
    assert "not a regular expression RE2 supports" in found[1]


def test_unevaluated_properties_cannot_meet_pattern_properties() -> None:
    schema = {
        "patternProperties": {"^a": {}},
        "properties": {"b": {"unevaluatedProperties": False}},
    }
    found = schema_problem(schema)
    assert found is not None
    assert found[0] == ("properties", "b", "unevaluatedProperties")
    assert schema_problem({"unevaluatedProperties": False}) is None


def test_registration_names_the_schema_path_of_each_kind_of_schema() -> None:
    bad = {"type": "object", "properties": {"x": {"type": "string", "pattern": "(a)\\1"}}}
    with pytest.raises(DefinitionInvalid) as info:
        parse_definition(
            {
                "id": "w",
                "input_schema": bad,
                "steps": [{"id": "a", "action": "echo", "input_schema": bad, "output_schema": bad}],
            }
        )
    assert sorted(p.path for p in info.value.problems) == [
        "input_schema.properties.x.pattern",
        "steps[0].input_schema.properties.x.pattern",
        "steps[0].output_schema.properties.x.pattern",
    ]


@pytest.mark.parametrize(
    ("value", "messages"),
    [
        ({"ab": "s", "q": 1}, []),
        ({"ab": 1}, ["1 is not of type 'string'"]),
        ({"zz": 1}, ["'zz' does not match any of the regexes: '^a'"]),
        ({"x": "bad"}, ["'bad' does not match '^\\\\d+$'"]),
    ],
)
def test_patterns_keep_json_schema_semantics(value: dict[str, Any], messages: list[str]) -> None:
    schema = {
        "properties": {"q": {}, "x": {"pattern": "^\\d+$"}},
        "patternProperties": {"^a": {"type": "string"}},
        "additionalProperties": False,
    }
    assert sorted(e.message for e in validation_errors(value, schema)) == messages


def test_patterns_are_unanchored_searches() -> None:
    assert not list(validation_errors("xx123yy", {"pattern": "\\d{3}"}))
    assert list(validation_errors("xx12yy", {"pattern": "\\d{3}"}))


def test_each_schema_draft_is_kept() -> None:
    draft4 = {
        "$schema": "http://json-schema.org/draft-04/schema#",
        "maximum": 3,
        "exclusiveMaximum": True,
    }
    assert [e.message for e in validation_errors(3, draft4)] == [
        "3 is greater than or equal to the maximum of 3"
    ]


def test_a_validator_is_built_once_per_schema() -> None:
    schema = {"type": "string", "pattern": "^a"}
    assert validator(schema) is validator(schema)
    assert validator(dict(schema)) is not validator(schema)

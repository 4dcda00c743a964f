"""References in parameters: parsing, resolution with type preservation, redaction."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine_service.core.errors import InvalidReference
from engine_service.core.references import (
    Reference,
    find_references,
    iter_strings,
    parse_reference,
    redact,
    resolve,
    template_references,
)

# Shared CI machines are slow at times: time limits would make these flaky, not stricter.
relaxed = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=50)

STEPS: dict[str, dict[str, Any]] = {
    "fetch": {"output": {"items": [{"id": 7}, {"id": 8}], "name": "x"}, "status": "COMPLETED"},
    "flaky": {"output": None, "status": "FAILED"},
}
json_scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=8)
json_values = st.recursive(
    json_scalars | st.floats(allow_nan=False, allow_infinity=False),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=10,
)


def _resolve(value: Any, **inputs: Any) -> Any:
    return resolve(value, inputs=inputs, steps=STEPS, secrets={"TOKEN": "s3cr3t"})


@pytest.mark.parametrize(
    ("text", "root", "path"),
    [
        ("${inputs.x}", "inputs", ("x",)),
        ("${inputs.a.b[0]}", "inputs", ("a", "b", 0)),
        ("${steps.a.output.items[0].id}", "steps", ("a", "output", "items", 0, "id")),
        ("${steps.my-step.status}", "steps", ("my-step", "status")),
        ("${secrets.API_KEY}", "secrets", ("API_KEY",)),
        ('${inputs["odd key}"].v}', "inputs", ("odd key}", "v")),
        ("${ inputs.x }", "inputs", ("x",)),
    ],
)
def test_well_formed_references_parse_into_root_and_path(
    text: str, root: str, path: tuple[str | int, ...]
) -> None:
    reference = parse_reference(text)
    assert (reference.root, reference.path) == (root, path)


def test_a_step_reference_names_its_step() -> None:
    assert parse_reference("${steps.fetch.output}").step_id == "fetch"
    assert parse_reference("${inputs.fetch}").step_id is None


def test_reference_text_is_canonical_and_quotes_keys_that_are_not_names() -> None:
    reference = parse_reference('${ inputs["a b"][2].c }')
    assert reference.name == 'inputs["a b"][2].c'
    assert str(reference) == reference.text == '${inputs["a b"][2].c}'


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("${foo.x}", "unknown root 'foo'"),
        ("${}", "expected a root name"),
        ("${inputs}", r"expected \$\{inputs.<name>"),
        ("${inputs[0]}", r"expected \$\{inputs.<name>"),
        ("${inputs.a", "unterminated"),
        ("${inputs.a..b}", "unexpected '..b'"),
        ("${inputs.a[-1]}", r"unexpected '\[-1\]'"),
        ('${inputs["\\q"]}', "bad key"),
        ("${steps.a}", r"expected \$\{steps.<id>.output"),
        ("${steps.a.result}", r"expected \$\{steps.<id>.output"),
        ("${steps.a.status.code}", "status has no fields"),
        ("${secrets.A.B}", r"expected \$\{secrets.<NAME>\}"),
        ("x ${inputs.a}", "exactly one"),
        ("plain", "exactly one"),
    ],
)
def test_malformed_references_are_rejected_with_a_reason(text: str, reason: str) -> None:
    with pytest.raises(InvalidReference, match=reason) as info:
        parse_reference(text)
    assert info.value.text == text


def test_find_references_recurses_in_document_order_and_skips_keys() -> None:
    value = {"${inputs.key}": ["${inputs.a}", {"b": "x${steps.fetch.status}y${inputs.a}"}], "n": 3}
    assert [ref.name for ref in find_references(value)] == [
        "inputs.a",
        "steps.fetch.status",
        "inputs.a",
    ]


def test_iter_strings_yields_paths_of_string_values() -> None:
    assert list(iter_strings({"a": [1, "x", ("y",)], "b": "z"})) == [
        (("a", 1), "x"),
        (("a", 2, 0), "y"),
        (("b",), "z"),
    ]


def test_dollar_dollar_brace_is_a_literal_and_lone_dollars_stay() -> None:
    assert template_references("$${inputs.x} costs $5") == []
    assert _resolve("$${inputs.x} costs $5 ${inputs.x}", x=1).value == "${inputs.x} costs $5 1"


@pytest.mark.parametrize("value", [3, 2.5, True, None, [1, "a"], {"k": {"n": 1}}, "text"], ids=repr)
def test_a_value_that_is_exactly_one_reference_keeps_its_type(value: Any) -> None:
    assert _resolve({"p": "${inputs.v}"}, v=value).value == {"p": value}


def test_references_inside_strings_interpolate_non_strings_as_compact_sorted_json() -> None:
    resolution = _resolve(
        "n=${inputs.n} o=${inputs.o} s=${inputs.s} z=${inputs.z}",
        n=1.5,
        o={"b": [1, True], "a": None},
        s="str",
        z=None,
    )
    assert resolution.value == 'n=1.5 o={"a":null,"b":[1,true]} s=str z=null'


def test_step_outputs_and_statuses_resolve_through_paths() -> None:
    resolution = _resolve(
        ["${steps.fetch.output.items[1].id}", "${steps.flaky.status}", "${steps.flaky.output}"]
    )
    assert resolution.complete
    assert resolution.value == [8, "FAILED", None]


def test_a_resolved_container_is_a_copy_not_the_upstream_output() -> None:
    resolved = _resolve("${steps.fetch.output.items}").value
    resolved.append("mutated")
    assert len(STEPS["fetch"]["output"]["items"]) == 2


def test_missing_inputs_are_named_sorted_and_deduplicated() -> None:
    resolution = _resolve(
        {"b": "${inputs.customer.id}", "a": ["${inputs.zip}", "x ${inputs.customer.id}"]},
        customer={"name": "n"},
    )
    assert resolution.missing_inputs == ("inputs.customer.id", "inputs.zip")
    assert not resolution.complete


@pytest.mark.parametrize(
    "text",
    [
        "${steps.ghost.output}",
        "${steps.fetch.output.items[5]}",
        "${steps.fetch.output.name.first}",
        "${steps.fetch.output[0]}",
        "${steps.fetch.output.items.id}",
    ],
)
def test_unresolvable_step_references_are_reported(text: str) -> None:
    resolution = _resolve({"p": text})
    assert resolution.missing_steps == (text[2:-1],)
    assert resolution.missing_inputs == ()


def test_secrets_resolve_and_are_collected_for_redaction() -> None:
    resolution = _resolve({"auth": "Bearer ${secrets.TOKEN}", "raw": "${secrets.TOKEN}"})
    assert resolution.value == {"auth": "Bearer s3cr3t", "raw": "s3cr3t"}
    assert resolution.secret_values == {"s3cr3t"}


def test_unknown_secrets_are_reported_missing() -> None:
    resolution = _resolve("${secrets.NOPE}")
    assert resolution.missing_secrets == ("secrets.NOPE",)
    assert resolution.secret_values == frozenset()


def test_resolve_raises_on_a_malformed_reference() -> None:
    with pytest.raises(InvalidReference):
        _resolve({"p": "${inputs.}"})


def test_redact_hides_every_occurrence_in_values_and_keys() -> None:
    value = {"s3cr3t": ["a s3cr3t b s3cr3t", 5, None], "t": ("s3cr3t",)}
    assert redact(value, {"s3cr3t"}) == {"***": ["a *** b ***", 5, None], "t": ["***"]}


def test_redact_hides_the_longest_secret_whole_and_ignores_empty_ones() -> None:
    assert redact("key=abcdef", ["abc", "abcdef", ""]) == "key=***"
    assert redact({"a": "x"}, [""]) == {"a": "x"}


def test_redact_leaves_non_string_values_alone() -> None:
    assert redact({1: 2.5}, ["2.5"]) == {1: 2.5}


@relaxed
@given(st.dictionaries(st.sampled_from(["a", "b", "c"]), json_values, max_size=3))
def test_identical_inputs_give_identical_resolved_parameters(inputs: dict[str, Any]) -> None:
    parameters = {"x": "${inputs.a}", "y": ["${inputs.b} and ${inputs.c}"], "z": "${inputs.c}"}
    first = resolve(parameters, inputs=inputs, steps={}, secrets={})
    second = resolve(parameters, inputs=dict(inputs), steps={}, secrets={})
    assert first == second
    assert first.missing_inputs == tuple(
        sorted(f"inputs.{name}" for name in "abc" if name not in inputs)
    )


@relaxed
@given(json_values)
def test_resolution_preserves_the_type_and_value_of_a_whole_reference(value: Any) -> None:
    resolution = resolve(
        {"p": ["${steps.a.output}"]},
        inputs={},
        steps={"a": {"output": value, "status": "COMPLETED"}},
        secrets={},
    )
    assert resolution.complete
    assert resolution.value == {"p": [value]}
    assert type(resolution.value["p"][0]) is type(value)


@relaxed
@given(json_values)
def test_values_without_references_resolve_to_themselves(value: Any) -> None:
    if any("$" in text for _, text in iter_strings(value)):
        return
    normalized = resolve(value, inputs={}, steps={}, secrets={}).value
    assert normalized == value


def test_reference_equality_is_by_root_and_path() -> None:
    assert parse_reference("${inputs.a}") == Reference(root="inputs", path=("a",))

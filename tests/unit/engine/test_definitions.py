"""Parsing definitions: accepted shapes, defaults, the graph form, the canonical dict form."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine_service.core.definition_format import (
    definition_to_dict,
    format_duration,
    format_path,
    parse_duration,
)
from engine_service.core.definitions import (
    DefinitionLimits,
    definition_schema,
    parse_definition,
    validate_definition,
)
from engine_service.core.errors import DefinitionInvalid
from engine_service.core.model import (
    ActionCall,
    FailurePolicy,
    JitterMode,
    RetryPolicy,
    StepDefinition,
)

# Shared CI machines are slow at times: time limits would make these flaky, not stricter.
relaxed = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=60)


def step(step_id: str, *depends_on: str, **fields: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"id": step_id, "action": fields.pop("action", "noop"), **fields}
    if depends_on:
        data["depends_on"] = list(depends_on)
    return data


def workflow(*steps: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"id": "wf", "steps": list(steps), **fields}


def test_a_minimal_definition_gets_every_default() -> None:
    definition = parse_definition(workflow(step("a")))
    assert definition.id == "wf"
    assert definition.tenant == "default"
    assert definition.on_failure is FailurePolicy.STOP
    assert definition.timeout is None
    assert definition.max_concurrent_steps == 0
    assert definition.steps == (StepDefinition(id="a", action="noop"),)
    assert definition.steps[0].retry == RetryPolicy(
        max_attempts=1, initial_interval=1.0, backoff_coefficient=2.0, jitter=JitterMode.NONE
    )


def test_every_field_is_parsed() -> None:
    definition = parse_definition(
        workflow(
            step("a", parameters={"u": "${inputs.url}"}, name="A", description="first"),
            step(
                "b",
                "a",
                action="echo",
                when="steps.a.status == 'COMPLETED'",
                retry={
                    "max_attempts": 5,
                    "initial_interval": "500ms",
                    "backoff_coefficient": 3,
                    "maximum_interval": "2m",
                    "jitter": "FULL",
                    "non_retryable_errors": ["ValueError"],
                },
                timeout="1h",
                continue_on_error=True,
                input_schema={"type": "object"},
                output_schema={},
                compensate={"action": "undo", "parameters": {"id": "${steps.b.output.id}"}},
                fallback={"action": "noop"},
            ),
            version=3,
            tenant="acme",
            name="W",
            description="d",
            labels={"team": "x"},
            estimated_time_saved=90,
            business_value=12.5,
            input_schema={"type": "object", "required": ["url"]},
            max_concurrent_steps=4,
            timeout="1.5s",
            on_failure="COMPENSATE",
        )
    )
    assert (definition.version, definition.tenant, definition.name) == (3, "acme", "W")
    assert definition.labels == {"team": "x"}
    assert (definition.estimated_time_saved, definition.business_value) == (90.0, 12.5)
    assert definition.input_schema == {"type": "object", "required": ["url"]}
    assert (definition.max_concurrent_steps, definition.timeout) == (4, 1.5)
    assert definition.on_failure is FailurePolicy.COMPENSATE
    b = definition.step("b")
    assert b.depends_on == ("a",)
    assert b.retry == RetryPolicy(5, 0.5, 3.0, 120.0, JitterMode.FULL, ("ValueError",))
    assert (b.timeout, b.continue_on_error, b.output_schema) == (3600.0, True, {})
    assert b.compensate == ActionCall("undo", {"id": "${steps.b.output.id}"})
    assert b.fallback == ActionCall("noop")
    assert definition.step("a").parameters == {"u": "${inputs.url}"}


@pytest.mark.parametrize(
    ("given_name", "policy"),
    [
        ("STOP", FailurePolicy.STOP),
        ("CONTINUE", FailurePolicy.CONTINUE),
        ("FAILURE_POLICY_COMPENSATE", FailurePolicy.COMPENSATE),
        ("FAILURE_POLICY_UNSPECIFIED", FailurePolicy.STOP),
        ("", FailurePolicy.STOP),
    ],
)
def test_failure_policies_accept_short_and_proto_names(
    given_name: str, policy: FailurePolicy
) -> None:
    assert parse_definition(workflow(step("a"), on_failure=given_name)).on_failure is policy


@pytest.mark.parametrize(
    ("given_name", "mode"),
    [
        ("NONE", JitterMode.NONE),
        ("FULL", JitterMode.FULL),
        ("JITTER_MODE_FULL", JitterMode.FULL),
        ("JITTER_MODE_UNSPECIFIED", JitterMode.NONE),
    ],
)
def test_jitter_modes_accept_short_and_proto_names(given_name: str, mode: JitterMode) -> None:
    definition = parse_definition(workflow(step("a", retry={"jitter": given_name})))
    assert definition.steps[0].retry.jitter is mode


def test_zero_retry_fields_mean_the_defaults() -> None:
    retry = {"max_attempts": 0, "backoff_coefficient": 0}
    policy = parse_definition(workflow(step("a", retry=retry))).steps[0].retry
    assert (policy.max_attempts, policy.backoff_coefficient) == (1, 2.0)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("1.5s", 1.5),
        ("500ms", 0.5),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("0s", 0.0),
        (".25s", 0.25),
        (" 3s ", 3.0),
        ("1.000000000s", 1.0),
        (7, 7.0),
        (0.1 + 0.2, 0.3),
    ],
)
def test_durations_parse_to_seconds_rounded_to_nanoseconds(value: Any, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("abc", "bad duration 'abc'"),
        ("1d", "bad duration"),
        ("-1s", "bad duration"),
        (-2, "negative"),
        (True, "expected a duration"),
        ([1], "expected a duration"),
        ("400000000000s", "longer than"),
    ],
)
def test_bad_durations_are_rejected(value: Any, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_duration(value)


@pytest.mark.parametrize(
    ("seconds", "text"), [(1.5, "1.5s"), (120.0, "120s"), (0.0, "0s"), (1e-9, "0.000000001s")]
)
def test_durations_format_as_proto_json(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_format_path_quotes_keys_that_are_not_names() -> None:
    assert format_path("steps[0].parameters", "a b", 2, "c") == 'steps[0].parameters["a b"][2].c'
    assert format_path("", "labels") == "labels"


def test_steps_come_out_in_topological_order_with_ties_by_declaration() -> None:
    definition = parse_definition(
        workflow(step("report", "fetch", "score"), step("score"), step("fetch"), step("x"))
    )
    assert definition.step_ids == ("score", "fetch", "report", "x")


def test_the_graph_form_becomes_steps_with_edge_conditions() -> None:
    definition = parse_definition(
        {
            "id": "g",
            "nodes": [step("join"), step("left"), step("right")],
            "connections": [
                {"source": "left", "target": "join", "condition": "steps.left.output.ok"},
                {"source": "right", "target": "join"},
            ],
        }
    )
    assert definition.step_ids == ("left", "right", "join")
    join = definition.step("join")
    assert join.depends_on == ("left", "right")
    assert join.edge_conditions == {"left": "steps.left.output.ok"}


def test_a_graph_with_nodes_only_runs_them_in_declaration_order() -> None:
    definition = parse_definition({"id": "g", "nodes": [step("b"), step("a")]})
    assert definition.step_ids == ("b", "a")
    assert "connections" not in definition.source


def test_the_source_is_the_canonical_proto_json_form() -> None:
    definition = parse_definition(
        workflow(
            step("b", "a", retry={"initial_interval": 0.5, "jitter": "FULL"}, timeout=90),
            step("a", parameters={"x": 1}),
            on_failure="CONTINUE",
            estimated_time_saved="2m",
        )
    )
    assert definition.source == {
        "id": "wf",
        "tenant": "default",
        "estimated_time_saved": "120s",
        "on_failure": "FAILURE_POLICY_CONTINUE",
        "steps": [
            {
                "id": "a",
                "action": "noop",
                "parameters": {"x": 1},
                "retry": {
                    "max_attempts": 1,
                    "initial_interval": "1s",
                    "backoff_coefficient": 2.0,
                    "jitter": "JITTER_MODE_NONE",
                },
            },
            {
                "id": "b",
                "action": "noop",
                "depends_on": ["a"],
                "retry": {
                    "max_attempts": 1,
                    "initial_interval": "0.5s",
                    "backoff_coefficient": 2.0,
                    "jitter": "JITTER_MODE_FULL",
                },
                "timeout": "90s",
            },
        ],
    }


def test_the_graph_form_is_kept_in_the_source() -> None:
    data = {
        "id": "g",
        "nodes": [step("a"), step("b")],
        "connections": [{"source": "a", "target": "b", "condition": "true"}],
    }
    source = parse_definition(data).source
    assert [node["id"] for node in source["nodes"]] == ["a", "b"]
    assert source["connections"] == [{"source": "a", "target": "b", "condition": "true"}]
    assert "steps" not in source


def test_a_definition_can_be_written_in_the_other_form() -> None:
    definition = parse_definition(
        {
            "id": "g",
            "nodes": [step("a"), step("b")],
            "connections": [{"source": "a", "target": "b"}],
        }
    )
    as_steps = definition_to_dict(definition, form="steps")
    assert as_steps["steps"][1]["depends_on"] == ["a"]
    assert parse_definition(as_steps) == definition


def test_connection_conditions_cannot_be_written_in_the_steps_form() -> None:
    definition = parse_definition(
        {
            "id": "g",
            "nodes": [step("a"), step("b")],
            "connections": [{"source": "a", "target": "b", "condition": "true"}],
        }
    )
    with pytest.raises(ValueError, match="graph form"):
        definition_to_dict(definition, form="steps")


def test_parsing_copies_the_input_so_later_changes_do_not_leak_in() -> None:
    data = workflow(step("a", parameters={"nested": {"v": 1}}))
    definition = parse_definition(data)
    data["steps"][0]["parameters"]["nested"]["v"] = 2
    assert definition.steps[0].parameters == {"nested": {"v": 1}}


def test_schema_and_created_at_keys_are_accepted_and_ignored() -> None:
    data = workflow(step("a"), created_at="2024-01-01T00:00:00Z")
    data["$schema"] = "./workflow-definition.schema.json"
    assert "created_at" not in parse_definition(data).source


def test_the_published_schema_is_draft_2020_12_with_descriptions() -> None:
    schema = definition_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    for name, field in schema["properties"].items():
        assert "description" in field, name
    for name, definition in schema["$defs"].items():
        assert "description" in definition, name


def test_validate_definition_returns_the_plan_and_parallel_stages() -> None:
    data = workflow(step("c", "a", "b"), step("a"), step("b"))
    assert validate_definition(data) == ([], ["a", "b", "c"], [["a", "b"], ["c"]])


def test_validate_definition_returns_problems_and_no_plan() -> None:
    problems, plan, stages = validate_definition(workflow(step("a", "ghost")))
    assert [str(p) for p in problems] == ["steps[0].depends_on[0]: unknown step 'ghost'"]
    assert (plan, stages) == ([], [])


def test_limits_can_be_raised() -> None:
    many = workflow(*(step(f"s{i}") for i in range(5)))
    with pytest.raises(DefinitionInvalid):
        parse_definition(many, limits=DefinitionLimits(max_steps=4))
    assert len(parse_definition(many, limits=DefinitionLimits(max_steps=5)).steps) == 5


# -- round trip ---------------------------------------------------------------------------

ids = st.sampled_from(["a", "b", "c", "d", "e"])
texts = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=6)
json_leaves = st.none() | st.booleans() | st.integers(-100, 100) | texts
parameters = st.dictionaries(
    st.sampled_from(["x", "y", "z w"]),
    st.recursive(json_leaves, lambda c: st.lists(c, max_size=2), max_leaves=4),
    max_size=2,
)
durations = st.one_of(
    st.floats(0, 10_000, allow_nan=False),
    st.integers(0, 10_000).map(lambda n: f"{n}ms"),
    st.integers(0, 100).map(lambda n: f"{n / 4}s"),
)
retries = st.fixed_dictionaries(
    {},
    optional={
        "max_attempts": st.integers(0, 100),
        "initial_interval": durations,
        "backoff_coefficient": st.sampled_from([0, 1, 1.5, 2, 10]),
        "jitter": st.sampled_from(["NONE", "FULL", "JITTER_MODE_FULL"]),
        "non_retryable_errors": st.lists(st.sampled_from(["E1", "E2"]), max_size=2),
    },
)
step_fields = {
    "parameters": parameters,
    "retry": retries,
    "timeout": durations,
    "continue_on_error": st.booleans(),
    "input_schema": st.sampled_from([{}, {"type": "object"}]),
    "compensate": st.just({"action": "undo"}),
    "fallback": st.just({"action": "noop", "parameters": {"n": 1}}),
    "name": texts,
    "description": texts,
    "when": st.sampled_from(["", "true", "inputs.x > 1"]),
}


@st.composite
def definitions(draw: st.DrawFn) -> dict[str, Any]:
    """Valid definitions in either form: dependencies only point at earlier ids, so the
    graph is a DAG, and declaration order is shuffled."""
    count = draw(st.integers(1, 5))
    names = ["a", "b", "c", "d", "e"][:count]
    nodes = []
    edges = []
    for index, name in enumerate(names):
        node = {
            "id": name,
            "action": "noop",
            **draw(st.fixed_dictionaries({}, optional=step_fields)),
        }
        nodes.append(node)
        for source in draw(st.lists(st.sampled_from(names[:index]), unique=True)) if index else []:
            edges.append((source, name))
    nodes = draw(st.permutations(nodes))
    top = draw(
        st.fixed_dictionaries(
            {"id": st.just("wf")},
            optional={
                "on_failure": st.sampled_from(["STOP", "FAILURE_POLICY_CONTINUE", "COMPENSATE"]),
                "timeout": durations,
                "max_concurrent_steps": st.integers(0, 8),
                "labels": st.dictionaries(st.sampled_from(["k", "l"]), texts, max_size=2),
                "business_value": st.floats(-1e6, 1e6, allow_nan=False),
                "estimated_time_saved": durations,
                "version": st.integers(0, 5),
                "tenant": st.sampled_from(["", "acme"]),
            },
        )
    )
    if draw(st.booleans()):
        conditions = st.sampled_from(["", "true"])
        connections = [
            {"source": s, "target": t, **({"condition": c} if (c := draw(conditions)) else {})}
            for s, t in edges
        ]
        return {**top, "nodes": nodes, "connections": connections}
    for node in nodes:
        node["depends_on"] = [s for s, t in edges if t == node["id"]]
    return {**top, "steps": nodes}


@relaxed
@given(definitions())
def test_parse_of_to_dict_gives_back_an_equal_definition(data: dict[str, Any]) -> None:
    definition = parse_definition(data)
    canonical = definition_to_dict(definition)
    assert canonical == definition.source
    again = parse_definition(canonical)
    assert again == definition
    assert again.source == definition.source
    json.dumps(canonical, allow_nan=False)  # storable as JSON as is


@relaxed
@given(definitions())
def test_parsed_steps_respect_dependencies(data: dict[str, Any]) -> None:
    definition = parse_definition(data)
    seen: set[str] = set()
    for parsed in definition.steps:
        assert set(parsed.depends_on) <= seen
        seen.add(parsed.id)

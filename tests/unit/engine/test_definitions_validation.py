"""Rejecting definitions: every problem is listed, each at its path."""

from __future__ import annotations

import json
from typing import Any

import pytest

from engine_service.core.definitions import DefinitionLimits, parse_definition
from engine_service.core.errors import DefinitionInvalid, InvalidArgument

DEFAULT_LIMITS = DefinitionLimits()


def step(step_id: str, *depends_on: str, **fields: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"id": step_id, "action": fields.pop("action", "noop"), **fields}
    if depends_on:
        data["depends_on"] = list(depends_on)
    return data


def workflow(*steps: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"id": "wf", "steps": list(steps), **fields}


def graph(nodes: list[dict[str, Any]], *connections: tuple[str, str, str]) -> dict[str, Any]:
    return {
        "id": "g",
        "nodes": nodes,
        "connections": [
            {"source": s, "target": t, **({"condition": c} if c else {})} for s, t, c in connections
        ],
    }


def problems(data: Any, limits: DefinitionLimits = DEFAULT_LIMITS) -> list[tuple[str, str]]:
    with pytest.raises(DefinitionInvalid) as info:
        parse_definition(data, limits=limits)
    return [(p.path, p.message) for p in info.value.problems]


def only_problem(data: Any, limits: DefinitionLimits = DEFAULT_LIMITS) -> tuple[str, str]:
    found = problems(data, limits)
    assert len(found) == 1, found
    return found[0]


# -- shape (the published JSON Schema) --------------------------------------------------


def test_definition_invalid_is_an_invalid_argument_listing_each_problem() -> None:
    with pytest.raises(InvalidArgument, match=r"steps\[0\]: 'action' is a required property"):
        parse_definition(workflow({"id": "a"}))


def test_the_shape_is_checked_first_and_reports_every_shape_problem() -> None:
    found = problems(
        workflow(
            {"id": "a", "acton": "noop"},
            step("b", retry={"max_attempts": 101}, depends_on="a"),
            on_failure="EXPLODE",
            max_concurrent_steps=-1,
        )
    )
    assert ("steps[0]", "'action' is a required property") in found
    assert ("steps[0]", "Unevaluated properties are not allowed ('acton' was unexpected)") in found
    assert ("steps[1].retry.max_attempts", "101 is greater than the maximum of 100") in found
    assert ("steps[1].depends_on", "'a' is not of type 'array'") in found
    assert ("max_concurrent_steps", "-1 is less than the minimum of 0") in found
    assert any(path == "on_failure" for path, _ in found)


def test_a_definition_must_be_an_object_with_an_id() -> None:
    assert only_problem([]) == ("", "[] is not of type 'object'")
    assert only_problem({"steps": [step("a")]}) == ("", "'id' is a required property")


def test_nodes_may_not_declare_depends_on() -> None:
    path, message = only_problem(graph([step("a", "b"), step("b")]))
    assert path == "nodes[0]"
    assert "'depends_on' was unexpected" in message


def test_a_definition_that_is_not_json_is_rejected() -> None:
    path, message = only_problem(workflow(step("a", parameters={"when": object()})))
    assert path == ""
    assert "not JSON" in message
    assert "not JSON" in only_problem(workflow(step("a", parameters={"x": float("nan")})))[1]


def test_a_definition_past_the_size_limit_is_rejected_before_anything_else() -> None:
    data = workflow(step("a", parameters={"blob": "x" * 2000}))
    size = len(json.dumps(data, separators=(",", ":")))
    path, message = only_problem(data, DefinitionLimits(max_definition_bytes=1000))
    assert (path, message) == ("", f"the definition is {size} bytes, over the limit of 1000")


# -- forms and sizes ----------------------------------------------------------------------


def test_an_empty_workflow_is_rejected() -> None:
    assert only_problem(workflow()) == ("steps", "the workflow has no steps")
    assert only_problem({"id": "g", "nodes": [], "connections": []}) == (
        "steps",
        "the workflow has no steps",
    )


def test_a_workflow_with_neither_form_is_rejected() -> None:
    assert only_problem({"id": "wf"}) == ("steps", "give steps, or nodes and connections")


def test_both_forms_at_once_are_rejected() -> None:
    data = {**workflow(step("a")), "nodes": [step("b")]}
    assert only_problem(data) == ("", "give either steps or nodes + connections, not both")


def test_connections_without_nodes_name_the_missing_nodes() -> None:
    found = problems({"id": "g", "connections": [{"source": "a", "target": "b"}]})
    assert found == [
        ("connections[0].source", "unknown node 'a'"),
        ("connections[0].target", "unknown node 'b'"),
        ("nodes", "the workflow has no steps"),
    ]


def test_too_many_steps_are_rejected() -> None:
    data = workflow(*(step(f"s{i}") for i in range(4)))
    assert only_problem(data, DefinitionLimits(max_steps=3)) == (
        "steps",
        "4 steps, over the limit of 3",
    )
    nodes = graph([step(f"s{i}") for i in range(4)])
    assert only_problem(nodes, DefinitionLimits(max_steps=3))[0] == "nodes"


def test_too_many_dependencies_are_rejected() -> None:
    limits = DefinitionLimits(max_depends_on=1)
    data = workflow(step("a"), step("b"), step("c", "a", "b"))
    assert only_problem(data, limits) == (
        "steps[2].depends_on",
        "2 dependencies, over the limit of 1",
    )
    edges = graph([step("a"), step("b"), step("c")], ("a", "c", ""), ("b", "c", ""))
    assert only_problem(edges, limits)[0] == "nodes[2]"


def test_ids_must_match_the_pattern_and_length_limit() -> None:
    found = problems(
        {"id": "9wf", "steps": [step("ok-id_1"), step("has space"), step("x" * 11)]},
        DefinitionLimits(max_id_length=10),
    )
    assert found == [
        ("id", "'9wf' is not an id: it must match ^[A-Za-z_][A-Za-z0-9_-]*$"),
        ("steps[1].id", "'has space' is not an id: it must match ^[A-Za-z_][A-Za-z0-9_-]*$"),
        ("steps[2].id", "11 characters, over the limit of 10"),
    ]


# -- the dependency graph ---------------------------------------------------------------


def test_duplicate_ids_are_rejected() -> None:
    found = problems(workflow(step("a"), step("b"), step("a")))
    assert found == [("steps[2].id", "duplicate id 'a' (first at steps[0].id)")]


def test_unknown_self_and_repeated_dependencies_are_rejected() -> None:
    found = problems(workflow(step("a"), step("b", "a", "ghost", "b", "a")))
    assert found == [
        ("steps[1].depends_on[1]", "unknown step 'ghost'"),
        ("steps[1].depends_on[2]", "'b' depends on itself"),
        ("steps[1].depends_on[3]", "duplicate dependency on 'a'"),
    ]


def test_a_cycle_is_named_at_the_edge_that_closes_it() -> None:
    found = problems(workflow(step("a", "c"), step("b", "a"), step("c", "b"), step("d")))
    assert found == [("steps[0].depends_on[0]", "cycle: a -> b -> c -> a")]


def test_every_separate_cycle_is_reported() -> None:
    found = problems(workflow(step("a", "b"), step("b", "a"), step("c", "d"), step("d", "c")))
    assert [message for _, message in found] == ["cycle: a -> b -> a", "cycle: c -> d -> c"]


def test_graph_form_cycles_self_loops_and_duplicate_edges_point_at_connections() -> None:
    found = problems(
        graph(
            [step("a"), step("b"), step("c")],
            ("a", "b", ""),
            ("b", "a", ""),
            ("c", "c", ""),
            ("a", "b", ""),
        )
    )
    # Reported per target node, in node order, then cycles.
    assert found == [
        ("connections[3]", "duplicate dependency on 'a'"),
        ("connections[2]", "'c' depends on itself"),
        ("connections[1]", "cycle: a -> b -> a"),
    ]


def test_unknown_connection_endpoints_are_rejected() -> None:
    found = problems(graph([step("a")], ("a", "zz", ""), ("yy", "a", "")))
    assert found == [
        ("connections[0].target", "unknown node 'zz'"),
        ("connections[1].source", "unknown node 'yy'"),
    ]


# -- expressions and schemas --------------------------------------------------------------


def test_invalid_cel_in_when_and_in_conditions_is_rejected() -> None:
    found = problems(graph([step("a", when="inputs.x >"), step("b")], ("a", "b", "steps.a ==")))
    assert [path for path, _ in found] == ["connections[0].condition", "nodes[0].when"]
    assert all(message.startswith("invalid CEL: ") for _, message in found)


def test_invalid_json_schemas_are_rejected_at_the_offending_keyword() -> None:
    found = problems(
        workflow(
            step("a", input_schema={"type": "nope"}),
            step("b", output_schema={"properties": {"x": {"minimum": "zero"}}}),
            input_schema={"required": "x"},
        )
    )
    assert [path for path, _ in found] == [
        "steps[0].input_schema.type",
        "steps[1].output_schema.properties.x.minimum",
        "input_schema.required",
    ]
    assert all(message.startswith("invalid JSON Schema: ") for _, message in found)


def test_json_schemas_are_checked_against_the_draft_they_name() -> None:
    draft4 = "http://json-schema.org/draft-04/schema#"
    # Valid in draft 4 (boolean exclusiveMinimum), invalid in the default 2020-12.
    schema = {"minimum": 0, "exclusiveMinimum": True}
    parse_definition(workflow(step("a", input_schema={"$schema": draft4, **schema})))
    found = problems(
        workflow(
            step("a", input_schema=schema, output_schema={"$schema": "https://example.com/s"}),
            step("b", input_schema={"$schema": 4}),
        )
    )
    assert found == [
        (
            "steps[0].input_schema.exclusiveMinimum",
            "invalid JSON Schema: True is not of type 'number'",
        ),
        (
            'steps[0].output_schema["$schema"]',
            "unsupported JSON Schema draft 'https://example.com/s'",
        ),
        ('steps[1].input_schema["$schema"]', "unsupported JSON Schema draft 4"),
    ]


# -- durations and retry policies ---------------------------------------------------------


def test_bad_durations_are_rejected_at_their_path() -> None:
    found = problems(
        workflow(
            step("a", timeout="soon", retry={"initial_interval": -1, "maximum_interval": "9y"}),
            timeout="1d",
            estimated_time_saved=-5,
        )
    )
    assert [path for path, _ in found] == [
        "steps[0].retry.initial_interval",
        "steps[0].retry.maximum_interval",
        "steps[0].timeout",
        "estimated_time_saved",
        "timeout",
    ]


def test_max_attempts_outside_0_to_100_are_rejected_by_the_schema() -> None:
    found = problems(workflow(step("a", retry={"max_attempts": -1})))
    assert found == [("steps[0].retry.max_attempts", "-1 is less than the minimum of 0")]


def test_retry_ranges_are_checked_once_the_shape_is_right() -> None:
    found = problems(
        workflow(
            step("a", retry={"backoff_coefficient": 0.5}),
            step("b", retry={"initial_interval": "10s", "maximum_interval": "5s"}),
            step("c", retry={"backoff_coefficient": -3, "initial_interval": 0}),
        )
    )
    assert found == [
        (
            "steps[0].retry.backoff_coefficient",
            "must be at least 1 (or 0 for the default 2.0), got 0.5",
        ),
        ("steps[1].retry.maximum_interval", "5s is shorter than initial_interval 10s"),
        (
            "steps[2].retry.backoff_coefficient",
            "must be at least 1 (or 0 for the default 2.0), got -3",
        ),
    ]


# -- references ---------------------------------------------------------------------------


def test_malformed_references_are_rejected_at_the_parameter() -> None:
    found = problems(
        workflow(
            step("a", parameters={"url": "https://x/${inputs.}", "list": ["ok", "${nope.x}"]}),
            step("b", fallback={"action": "noop", "parameters": {"q": "${secrets}"}}),
        )
    )
    assert [path for path, _ in found] == [
        "steps[0].parameters.url",
        "steps[0].parameters.list[1]",
        "steps[1].fallback.parameters.q",
    ]


def test_references_to_steps_that_are_not_upstream_are_rejected() -> None:
    found = problems(
        workflow(
            step("a"),
            step("b"),
            step(
                "c",
                "a",
                parameters={"x": "${steps.a.output}", "y": "n=${steps.b.output.n}"},
                when="steps.a.status == 'COMPLETED' && steps.b.status == 'COMPLETED'",
            ),
        )
    )
    not_upstream = "step 'b' is not upstream of 'c', so it may not have run (add a dependency)"
    assert found == [
        ("steps[2].parameters.y", f"${{steps.b.output.n}}: {not_upstream}"),
        ("steps[2].when", f"steps.b: {not_upstream}"),
    ]


def test_transitive_upstream_steps_may_be_referenced() -> None:
    data = workflow(
        step("a"),
        step("b", "a"),
        step("c", "b", parameters={"x": "${steps.a.output.v}"}, when="steps.a.status != ''"),
    )
    assert parse_definition(data).step("c").parameters == {"x": "${steps.a.output.v}"}


def test_references_to_unknown_steps_and_to_the_step_itself_are_rejected() -> None:
    found = problems(
        workflow(
            step("a", parameters={"x": "${steps.ghost.output}", "y": "${steps.a.status}"}),
            step("b", fallback={"action": "noop", "parameters": {"z": "${steps.b.output}"}}),
            step("c", when='steps["c"].status == "X"'),
        )
    )
    assert found == [
        ("steps[0].parameters.x", "${steps.ghost.output}: unknown step 'ghost'"),
        ("steps[0].parameters.y", "${steps.a.status}: a step cannot read its own result"),
        ("steps[1].fallback.parameters.z", "${steps.b.output}: a step cannot read its own result"),
        ("steps[2].when", "steps.c: a step cannot read its own result"),
    ]


def test_a_dashed_id_selected_with_a_dot_in_cel_gets_a_hint() -> None:
    data = workflow(step("load-data"), step("b", "load-data", when="steps.load-data.ok"))
    path, message = only_problem(data)
    assert path == "steps[1].when"
    assert message == (
        'steps.load: unknown step \'load\' (in CEL, write steps["load-data"] for ids with "-")'
    )
    fixed = workflow(step("load-data"), step("b", "load-data", when='steps["load-data"].ok'))
    assert parse_definition(fixed).step("b").when == 'steps["load-data"].ok'


def test_a_compensation_may_read_its_own_step_output() -> None:
    compensate = {"action": "delete", "parameters": {"id": "${steps.a.output.id}"}}
    assert parse_definition(workflow(step("a", compensate=compensate))).steps[0].compensate


def test_compensations_may_not_read_steps_that_are_not_upstream() -> None:
    compensate = {"action": "delete", "parameters": {"id": "${steps.b.output.id}"}}
    path, message = only_problem(workflow(step("a", compensate=compensate), step("b")))
    assert path == "steps[0].compensate.parameters.id"
    assert "not upstream" in message


def test_inputs_and_unknown_secrets_are_fine_at_registration() -> None:
    data = workflow(step("a", parameters={"k": "${secrets.NOT_YET_DEFINED}", "i": "${inputs.x}"}))
    assert parse_definition(data).steps[0].parameters["k"] == "${secrets.NOT_YET_DEFINED}"


def test_connection_conditions_may_only_read_upstream_steps() -> None:
    found = problems(
        graph(
            [step("a"), step("b"), step("c")],
            ("a", "c", "steps.a.output.ok && steps.b.output.ok"),
        )
    )
    assert found == [
        (
            "connections[0].condition",
            "steps.b: step 'b' is not upstream of 'c', so it may not have run (add a dependency)",
        )
    ]


def test_reference_checks_still_run_when_the_graph_has_a_cycle() -> None:
    found = problems(
        workflow(step("a", "b"), step("b", "a"), step("c", parameters={"x": "${steps.a.output}"}))
    )
    assert [path for path, _ in found] == ["steps[0].depends_on[0]", "steps[2].parameters.x"]


def test_every_kind_of_problem_is_reported_in_one_pass() -> None:
    found = problems(
        workflow(
            step("a", "ghost", when="1 +"),
            step("a", timeout="never"),
            step("c", "c", parameters={"x": "${steps.a.output"}),
            step("d", input_schema={"type": 5}, retry={"backoff_coefficient": 0.1}),
        )
    )
    assert [path for path, _ in found] == [
        "steps[1].id",
        "steps[0].depends_on[0]",
        "steps[2].depends_on[0]",
        "steps[1].timeout",
        "steps[3].retry.backoff_coefficient",
        "steps[3].input_schema.type",
        "steps[0].when",
        "steps[2].parameters.x",
    ]

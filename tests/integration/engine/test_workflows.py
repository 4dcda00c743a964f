"""RegisterWorkflow, GetWorkflow, ListWorkflows and ValidateWorkflow over gRPC."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2
from stepstream.v1 import engine_pb2, workflow_pb2

from tests.integration.engine.conftest import Harness
from tests.integration.engine.helpers import (
    bad_fields,
    chain,
    definition,
    details_of,
    register,
    rpc_error,
)


async def test_register_assigns_versions_and_get_returns_them(harness: Harness) -> None:
    first = await register(harness.stub, chain("orders", "noop", "echo", echo={"n": 1}))
    second = await register(harness.stub, chain("orders", "noop"))
    assert (first.version, second.version) == (1, 2)
    assert first.tenant == "default"

    latest = await harness.stub.GetWorkflow(engine_pb2.GetWorkflowRequest(workflow_id="orders"))
    assert latest.workflow.version == 2
    assert [s.id for s in latest.workflow.steps] == ["s0"]
    old = await harness.stub.GetWorkflow(
        engine_pb2.GetWorkflowRequest(workflow_id="orders", version=1)
    )
    assert [s.id for s in old.workflow.steps] == ["s0", "s1"]
    assert old.workflow.steps[1].parameters["n"] == 1
    assert list(old.workflow.steps[1].depends_on) == ["s0"]


async def test_register_keeps_the_graph_form(harness: Harness) -> None:
    graph = definition(
        {
            "id": "graph",
            "nodes": [{"id": "a", "action": "noop"}, {"id": "b", "action": "noop"}],
            "connections": [{"source": "a", "target": "b", "condition": "true"}],
        }
    )
    stored = await register(harness.stub, graph)
    assert [n.id for n in stored.nodes] == ["a", "b"]
    assert stored.connections[0].condition == "true"
    assert not stored.steps


async def test_register_reports_every_problem_as_a_field_violation(harness: Harness) -> None:
    broken = chain("broken", "noop", "noop")
    broken.steps[1].depends_on[:] = ["missing"]
    broken.steps.add(id="s0", action="noop")
    error = await rpc_error(
        harness.stub.RegisterWorkflow(engine_pb2.RegisterWorkflowRequest(definition=broken))
    )
    fields = bad_fields(error)
    assert "steps[1].depends_on[0]" in fields
    assert any(field.startswith("steps[2]") for field in fields)


async def test_register_without_steps_is_invalid(harness: Harness) -> None:
    error = await rpc_error(
        harness.stub.RegisterWorkflow(
            engine_pb2.RegisterWorkflowRequest(definition=workflow_pb2.WorkflowDefinition(id="x"))
        )
    )
    assert bad_fields(error)


async def test_workflows_are_per_tenant(harness: Harness) -> None:
    message = chain("shared", "noop")
    message.tenant = "acme"
    stored = await register(harness.stub, message)
    assert stored.tenant == "acme"
    error = await rpc_error(
        harness.stub.GetWorkflow(engine_pb2.GetWorkflowRequest(workflow_id="shared"))
    )
    assert error.code() is grpc.StatusCode.NOT_FOUND
    (info,) = details_of(error, error_details_pb2.ResourceInfo)
    assert (info.resource_type, info.resource_name) == ("workflow", "shared")
    found = await harness.stub.GetWorkflow(
        engine_pb2.GetWorkflowRequest(workflow_id="shared", tenant="acme")
    )
    assert found.workflow.tenant == "acme"


async def test_get_workflow_bad_input(harness: Harness) -> None:
    error = await rpc_error(harness.stub.GetWorkflow(engine_pb2.GetWorkflowRequest()))
    assert bad_fields(error) == ["workflow_id"]
    error = await rpc_error(
        harness.stub.GetWorkflow(engine_pb2.GetWorkflowRequest(workflow_id="w", version=-1))
    )
    assert bad_fields(error) == ["version"]
    await register(harness.stub, chain("w", "noop"))
    error = await rpc_error(
        harness.stub.GetWorkflow(engine_pb2.GetWorkflowRequest(workflow_id="w", version=7))
    )
    assert error.code() is grpc.StatusCode.NOT_FOUND


async def test_list_workflows_pages_filters_and_versions(harness: Harness) -> None:
    for name in ("a", "b", "c"):
        message = chain(name, "noop")
        message.labels["team"] = "red" if name != "b" else "blue"
        await register(harness.stub, message)
    await register(harness.stub, chain("a", "noop"))  # the latest "a" has no labels

    first = await harness.stub.ListWorkflows(engine_pb2.ListWorkflowsRequest(page_size=2))
    assert len(first.workflows) == 2
    assert first.next_page_token
    rest = await harness.stub.ListWorkflows(
        engine_pb2.ListWorkflowsRequest(page_size=2, page_token=first.next_page_token)
    )
    ids = [w.id for w in (*first.workflows, *rest.workflows)]
    assert sorted(ids) == ["a", "b", "c"]
    assert not rest.next_page_token

    red = await harness.stub.ListWorkflows(engine_pb2.ListWorkflowsRequest(labels={"team": "red"}))
    assert [w.id for w in red.workflows] == ["c"]
    every = await harness.stub.ListWorkflows(engine_pb2.ListWorkflowsRequest(all_versions=True))
    assert sorted((w.id, w.version) for w in every.workflows) == [
        ("a", 1),
        ("a", 2),
        ("b", 1),
        ("c", 1),
    ]


async def test_list_workflows_bad_input(harness: Harness) -> None:
    error = await rpc_error(
        harness.stub.ListWorkflows(engine_pb2.ListWorkflowsRequest(page_size=-1))
    )
    assert bad_fields(error) == ["page_size"]
    error = await rpc_error(
        harness.stub.ListWorkflows(engine_pb2.ListWorkflowsRequest(page_token="not-a-token"))
    )
    assert bad_fields(error) == ["page_token"]


async def test_validate_returns_plan_and_stages(harness: Harness) -> None:
    diamond = definition(
        {
            "id": "diamond",
            "steps": [
                {"id": "a", "action": "noop"},
                {"id": "b", "action": "noop", "depends_on": ["a"]},
                {"id": "c", "action": "noop", "depends_on": ["a"]},
                {"id": "d", "action": "noop", "depends_on": ["b", "c"]},
            ],
        }
    )
    response = await harness.stub.ValidateWorkflow(
        engine_pb2.ValidateWorkflowRequest(definition=diamond)
    )
    assert response.valid
    assert not response.problems
    assert list(response.plan) == ["a", "b", "c", "d"]
    assert [list(s.step_ids) for s in response.stages] == [["a"], ["b", "c"], ["d"]]


async def test_validate_lists_problems_without_failing(harness: Harness) -> None:
    cyclic = definition(
        {
            "id": "cyclic",
            "steps": [
                {"id": "a", "action": "noop", "depends_on": ["b"]},
                {"id": "b", "action": "noop", "depends_on": ["a"]},
            ],
        }
    )
    response = await harness.stub.ValidateWorkflow(
        engine_pb2.ValidateWorkflowRequest(definition=cyclic)
    )
    assert not response.valid
    assert response.problems
    assert all(p.message for p in response.problems)
    assert not response.plan
    empty = await harness.stub.ValidateWorkflow(engine_pb2.ValidateWorkflowRequest())
    assert not empty.valid
    listed = await harness.stub.ListWorkflows(engine_pb2.ListWorkflowsRequest())
    assert not listed.workflows, "validation must not store anything"

"""Scheduling: the `workflow` action runs a child execution."""

from __future__ import annotations

import asyncio

import pytest

from engine_service.core.engine import Engine, EngineConfig
from engine_service.core.state import ExecutionStatus, StepStatus
from engine_service.core.store import ExecutionQuery
from tests.unit.engine.conftest import EngineFactory
from tests.unit.engine.scheduler_harness import TENANT, run, settle, start

pytestmark = pytest.mark.looptime

ES = ExecutionStatus
SS = StepStatus

CHILD = {
    "id": "child",
    "steps": [
        {"id": "double", "action": "transform", "parameters": {"expression": "inputs.n * 2"}}
    ],
}


async def children_of(engine: Engine, parent_id: str) -> list[str]:
    page = await engine.list_executions(ExecutionQuery(parent_execution_id=parent_id))
    return [state.id for state in page.items]


async def test_the_workflow_action_runs_a_child_and_takes_its_outputs(engine: Engine) -> None:
    await engine.register_workflow(CHILD, TENANT)
    final, _ = await run(
        engine,
        {
            "id": "parent",
            "steps": [
                {
                    "id": "sub",
                    "action": "workflow",
                    "parameters": {"workflow_id": "child", "inputs": {"n": "${inputs.n}"}},
                }
            ],
        },
        inputs={"n": 21},
    )
    assert final.status is ES.COMPLETED
    output = final.steps["sub"].output
    (child_id,) = await children_of(engine, final.id)
    assert output == {"execution_id": child_id, "status": "COMPLETED", "outputs": {"double": 42}}
    child = await engine.get_execution(child_id)
    assert child.id != final.id
    assert (child.parent_execution_id, child.parent_step_id) == (final.id, "sub")
    assert child.inputs == {"n": 21}
    assert child.depth == 1


async def test_a_failed_child_fails_the_parent_step(engine: Engine) -> None:
    await engine.register_workflow(
        {"id": "child", "steps": [{"id": "x", "action": "fail"}]}, TENANT
    )
    final, _ = await run(
        engine,
        {
            "id": "parent",
            "steps": [{"id": "sub", "action": "workflow", "parameters": {"workflow_id": "child"}}],
        },
    )
    assert final.status is ES.FAILED
    error = final.steps["sub"].error
    assert error is not None
    assert error.type == "ChildWorkflowFailed"


async def test_the_depth_limit_stops_a_workflow_that_starts_itself(
    engines: EngineFactory,
) -> None:
    engine = engines(config=EngineConfig(max_workflow_depth=2))
    final, _ = await run(
        engine,
        {
            "id": "loop",
            "steps": [{"id": "again", "action": "workflow", "parameters": {"workflow_id": "loop"}}],
        },
    )
    assert final.status is ES.FAILED
    page = await engine.list_executions(ExecutionQuery(workflow_id="loop"))
    depths = sorted(state.depth for state in page.items)
    assert depths == [0, 1, 2]
    deepest = next(state for state in page.items if state.depth == 2)
    error = deepest.steps["again"].error
    assert error is not None
    assert error.type == "SubWorkflowDepthExceeded"


@pytest.mark.parametrize(
    ("parameters", "error_type"),
    [
        ({}, "InvalidParameters"),
        ({"workflow_id": "absent"}, "WorkflowNotFound"),
        ({"workflow_id": "strict", "inputs": {"wrong": 1}}, "InvalidInputs"),
    ],
)
async def test_a_bad_child_request_fails_the_step_without_retrying(
    engine: Engine, parameters: dict[str, object], error_type: str
) -> None:
    await engine.register_workflow(
        {
            "id": "strict",
            "input_schema": {"type": "object", "required": ["n"]},
            "steps": [{"id": "x", "action": "noop"}],
        },
        TENANT,
    )
    final, _ = await run(
        engine,
        {
            "id": "parent",
            "steps": [
                {
                    "id": "sub",
                    "action": "workflow",
                    "parameters": parameters,
                    "retry": {"max_attempts": 3},
                }
            ],
        },
    )
    error = final.steps["sub"].error
    assert error is not None
    assert error.type == error_type
    assert final.steps["sub"].attempt == 1


async def test_a_scalar_child_input_is_passed_as_value(engine: Engine) -> None:
    await engine.register_workflow(
        {
            "id": "child",
            "steps": [{"id": "x", "action": "echo", "parameters": {"v": "${inputs.value}"}}],
        },
        TENANT,
    )
    final, _ = await run(
        engine,
        {
            "id": "parent",
            "steps": [
                {
                    "id": "sub",
                    "action": "workflow",
                    "parameters": {"workflow_id": "child", "inputs": 5, "version": 1},
                }
            ],
        },
    )
    assert final.steps["sub"].output["outputs"] == {"x": {"v": 5}}


async def test_cancelling_the_parent_cancels_its_children(engine: Engine) -> None:
    await engine.register_workflow(
        {
            "id": "child",
            "steps": [{"id": "wait", "action": "delay", "parameters": {"seconds": 100}}],
        },
        TENANT,
    )
    parent = await start(
        engine,
        {
            "id": "parent",
            "steps": [{"id": "sub", "action": "workflow", "parameters": {"workflow_id": "child"}}],
        },
    )
    await asyncio.sleep(1)
    (child_id,) = await children_of(engine, parent.id)
    await engine.cancel_execution(parent.id)
    child = await engine.wait_for(child_id)
    assert child.status is ES.CANCELLED
    assert child.steps["wait"].status is SS.CANCELLED
    assert asyncio.get_running_loop().time() == 1.0


async def test_a_failed_parent_cancels_its_running_children(engine: Engine) -> None:
    await engine.register_workflow(
        {
            "id": "child",
            "steps": [{"id": "wait", "action": "delay", "parameters": {"seconds": 100}}],
        },
        TENANT,
    )
    parent = await start(
        engine,
        {
            "id": "parent",
            "steps": [
                {"id": "sub", "action": "workflow", "parameters": {"workflow_id": "child"}},
                {"id": "boom", "action": "delay", "parameters": {"seconds": "bad"}},
            ],
        },
    )
    final = await engine.wait_for(parent.id)
    assert final.status is ES.FAILED
    await settle()
    (child_id,) = await children_of(engine, parent.id)
    assert (await engine.wait_for(child_id)).status is ES.CANCELLED


async def test_a_timed_out_workflow_step_cancels_its_child(engine: Engine) -> None:
    await engine.register_workflow(
        {
            "id": "child",
            "steps": [{"id": "wait", "action": "delay", "parameters": {"seconds": 100}}],
        },
        TENANT,
    )
    final, _ = await run(
        engine,
        {
            "id": "parent",
            "steps": [
                {
                    "id": "sub",
                    "action": "workflow",
                    "parameters": {"workflow_id": "child"},
                    "timeout": "5s",
                    "continue_on_error": True,
                }
            ],
        },
    )
    assert final.steps["sub"].status is SS.TIMED_OUT
    (child_id,) = await children_of(engine, final.id)
    child = await engine.wait_for(child_id)
    assert child.status is ES.CANCELLED
    assert child.error is not None
    assert child.error.message == "the parent step was cancelled"

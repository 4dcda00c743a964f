"""Scheduling: the `workflow` action runs a child execution."""

from __future__ import annotations

import asyncio

import pytest

from engine_service.core.engine import Engine, EngineConfig
from engine_service.core.memory_store import InMemoryStore
from engine_service.core.state import ExecutionStatus, StepStatus
from engine_service.core.store import ExecutionQuery
from tests.unit.engine.conftest import EngineFactory
from tests.unit.engine.scheduler_harness import (
    TENANT,
    FailingStore,
    restart,
    run,
    settle,
    start,
)

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
    assert final.steps["sub"].child_execution_id == child_id
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
    assert final.steps["sub"].child_execution_id == (await children_of(engine, final.id))[0]
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
    assert child.error.message == "the parent step timed out"


DELAYED_CHILD = {
    "id": "child",
    "steps": [{"id": "wait", "action": "delay", "parameters": {"seconds": 100}}],
}
PARENT = {
    "id": "parent",
    "steps": [{"id": "sub", "action": "workflow", "parameters": {"workflow_id": "child"}}],
}


async def test_after_a_restart_the_step_takes_over_the_child_its_lost_attempt_started(
    engines: EngineFactory,
) -> None:
    store = InMemoryStore()
    first = engines(store)
    await first.register_workflow(DELAYED_CHILD, TENANT)
    parent = await start(first, PARENT)
    await asyncio.sleep(10)
    (child_id,) = await children_of(first, parent.id)
    second = await restart(engines, first, store)
    final = await second.wait_for(parent.id)
    assert final.status is ES.COMPLETED
    # The re-attempt waited for the same child, which the second engine also took over.
    assert await children_of(second, parent.id) == [child_id]
    assert final.steps["sub"].attempt == 2
    assert final.steps["sub"].output["execution_id"] == child_id
    assert final.steps["sub"].child_execution_id == child_id
    # The child's own step lost its attempt too and ran its 100 s again from the restart.
    assert asyncio.get_running_loop().time() == 110.0


async def test_a_child_that_ended_before_the_restart_is_not_run_again(
    engines: EngineFactory,
) -> None:
    store = FailingStore("sub", SS.COMPLETED)
    first = engines(store)
    await first.register_workflow(CHILD, TENANT)
    parent = await start(
        first,
        {
            "id": "parent",
            "steps": [
                {
                    "id": "sub",
                    "action": "workflow",
                    "parameters": {"workflow_id": "child", "inputs": {"n": 21}},
                }
            ],
        },
    )
    # The child ends, but the write of the parent's step COMPLETED fails: the parent's
    # runner stops with its step RUNNING, as if the engine had died right there.
    stopped = await first.wait_for(parent.id)
    assert stopped.steps["sub"].status is SS.RUNNING
    (child_id,) = await children_of(first, parent.id)
    assert (await first.get_execution(child_id)).status is ES.COMPLETED
    second = await restart(engines, first, store)
    final = await second.wait_for(parent.id)
    assert final.status is ES.COMPLETED
    assert await children_of(second, parent.id) == [child_id]
    assert final.steps["sub"].output["outputs"] == {"double": 42}


async def test_a_retry_after_a_failed_child_starts_a_new_child(
    engines: EngineFactory,
) -> None:
    store = InMemoryStore()
    first = engines(store)
    await first.register_workflow(
        {"id": "child", "steps": [{"id": "x", "action": "fail", "parameters": {"times": 9}}]},
        TENANT,
    )
    final, _ = await run(
        first,
        {
            "id": "parent",
            "steps": [
                {
                    "id": "sub",
                    "action": "workflow",
                    "parameters": {"workflow_id": "child"},
                    "retry": {"max_attempts": 2, "initial_interval": "1s"},
                }
            ],
        },
    )
    assert final.status is ES.FAILED
    assert len(await children_of(first, final.id)) == 2

"""StartExecution, GetExecution, ListExecutions, Cancel/Pause/Resume."""

from __future__ import annotations

import asyncio

import grpc
from google.protobuf import json_format, timestamp_pb2
from google.rpc import error_details_pb2
from stepstream.v1 import engine_pb2, events_pb2

from tests.integration.engine.conftest import Harness
from tests.integration.engine.helpers import (
    bad_fields,
    bounded,
    chain,
    definition,
    details_of,
    execution_status,
    register,
    rpc_error,
    run_to_end,
    start,
    step_status,
    struct,
    watch_all,
)


async def test_start_runs_to_completion_with_outputs(harness: Harness) -> None:
    await register(harness.stub, chain("w", "noop", "echo", echo={"n": "${inputs.n}"}))
    execution = await run_to_end(harness.stub, "w", inputs=struct({"n": 3}))
    assert execution.status == execution_status("COMPLETED")
    assert execution.inputs["n"] == 3
    assert json_format.MessageToDict(execution.outputs) == {"s0": {}, "s1": {"n": 3}}
    assert [s.status for s in execution.steps] == [step_status("COMPLETED")] * 2
    assert execution.steps[0].attempt == 1
    assert execution.finished_at.ToDatetime() >= execution.started_at.ToDatetime()
    assert execution.last_sequence == 7


async def test_start_with_a_known_idempotency_key_returns_the_first(harness: Harness) -> None:
    await register(harness.stub, chain("w", "noop"))
    request = engine_pb2.StartExecutionRequest(workflow_id="w", idempotency_key="order-42")
    first = await harness.stub.StartExecution(request)
    again = await harness.stub.StartExecution(request)
    assert first.created
    assert not again.created
    assert again.execution.id == first.execution.id
    listed = await harness.stub.ListExecutions(engine_pb2.ListExecutionsRequest(workflow_id="w"))
    assert [e.id for e in listed.executions] == [first.execution.id]


async def test_start_bad_input(harness: Harness) -> None:
    error = await rpc_error(harness.stub.StartExecution(engine_pb2.StartExecutionRequest()))
    assert bad_fields(error) == ["workflow_id"]
    error = await rpc_error(
        harness.stub.StartExecution(engine_pb2.StartExecutionRequest(workflow_id="w", version=-2))
    )
    assert bad_fields(error) == ["version"]
    error = await rpc_error(
        harness.stub.StartExecution(engine_pb2.StartExecutionRequest(workflow_id="nope"))
    )
    assert error.code() is grpc.StatusCode.NOT_FOUND


async def test_start_checks_inputs_against_the_schema(harness: Harness) -> None:
    schema = {
        "type": "object",
        "properties": {"count": {"type": "integer", "minimum": 1}},
        "required": ["count"],
    }
    await register(
        harness.stub,
        definition(
            {"id": "typed", "input_schema": schema, "steps": [{"id": "a", "action": "noop"}]}
        ),
    )
    error = await rpc_error(
        harness.stub.StartExecution(
            engine_pb2.StartExecutionRequest(workflow_id="typed", inputs=struct({"count": 0}))
        )
    )
    assert bad_fields(error) == ["inputs.count"]
    started = await start(harness.stub, "typed", inputs=struct({"count": 2}))
    assert started.inputs["count"] == 2


async def test_get_execution_at_a_sequence_replays_history(harness: Harness) -> None:
    await register(harness.stub, chain("w", "noop", "noop"))
    done = await run_to_end(harness.stub, "w")
    past = await harness.stub.GetExecution(
        engine_pb2.GetExecutionRequest(execution_id=done.id, at_sequence=3)
    )
    assert past.execution.last_sequence == 3
    assert past.execution.status == execution_status("RUNNING")
    assert past.execution.steps[0].status == step_status("RUNNING")
    assert past.execution.steps[1].status == step_status("PENDING")


async def test_get_execution_bad_input(harness: Harness) -> None:
    error = await rpc_error(harness.stub.GetExecution(engine_pb2.GetExecutionRequest()))
    assert bad_fields(error) == ["execution_id"]
    error = await rpc_error(
        harness.stub.GetExecution(engine_pb2.GetExecutionRequest(execution_id="x", at_sequence=-1))
    )
    assert bad_fields(error) == ["at_sequence"]
    error = await rpc_error(
        harness.stub.GetExecution(engine_pb2.GetExecutionRequest(execution_id="missing"))
    )
    assert error.code() is grpc.StatusCode.NOT_FOUND
    await register(harness.stub, chain("w", "noop"))
    done = await run_to_end(harness.stub, "w")
    error = await rpc_error(
        harness.stub.GetExecution(
            engine_pb2.GetExecutionRequest(execution_id=done.id, at_sequence=99)
        )
    )
    assert bad_fields(error) == ["at_sequence"]


async def test_list_executions_filters_and_pages(harness: Harness) -> None:
    await register(harness.stub, chain("fast", "noop"))
    await register(harness.stub, chain("slow", "delay", delay={"seconds": 30}))
    done = [await run_to_end(harness.stub, "fast") for _ in range(3)]
    slow = await start(harness.stub, "slow")
    await _wait_for_status(harness, slow.id, "RUNNING")

    running = await harness.stub.ListExecutions(
        engine_pb2.ListExecutionsRequest(statuses=[execution_status("RUNNING")])
    )
    assert [e.id for e in running.executions] == [slow.id]
    page = await harness.stub.ListExecutions(
        engine_pb2.ListExecutionsRequest(workflow_id="fast", page_size=2)
    )
    rest = await harness.stub.ListExecutions(
        engine_pb2.ListExecutionsRequest(
            workflow_id="fast", page_size=2, page_token=page.next_page_token
        )
    )
    newest_first = [e.id for e in reversed(done)]
    assert [e.id for e in (*page.executions, *rest.executions)] == newest_first
    later = timestamp_pb2.Timestamp(seconds=slow.created_at.seconds + 3600)
    none = await harness.stub.ListExecutions(engine_pb2.ListExecutionsRequest(created_after=later))
    assert not none.executions
    other = await harness.stub.ListExecutions(engine_pb2.ListExecutionsRequest(tenant="acme"))
    assert not other.executions


async def test_list_executions_bad_input(harness: Harness) -> None:
    cases = [
        (engine_pb2.ListExecutionsRequest(page_size=-5), ["page_size"]),
        (engine_pb2.ListExecutionsRequest(statuses=[_raw(0)]), ["statuses[0]"]),
        (
            engine_pb2.ListExecutionsRequest(statuses=[execution_status("FAILED"), _raw(42)]),
            ["statuses[1]"],
        ),
        (engine_pb2.ListExecutionsRequest(page_token="%%%"), ["page_token"]),
        (
            engine_pb2.ListExecutionsRequest(
                created_after=timestamp_pb2.Timestamp(seconds=20),
                created_before=timestamp_pb2.Timestamp(seconds=10),
            ),
            ["created_before"],
        ),
    ]
    for request, fields in cases:
        error = await rpc_error(harness.stub.ListExecutions(request))
        assert bad_fields(error) == fields, request


async def test_pause_resume_and_cancel(harness: Harness) -> None:
    await register(harness.stub, chain("w", "delay", "noop", delay={"seconds": 0.3}))
    execution = await start(harness.stub, "w")
    await _wait_for_status(harness, execution.id, "RUNNING")
    paused = await harness.stub.PauseExecution(
        engine_pb2.PauseExecutionRequest(execution_id=execution.id)
    )
    assert paused.execution.status == execution_status("PAUSED")
    resumed = await harness.stub.ResumeExecution(
        engine_pb2.ResumeExecutionRequest(execution_id=execution.id, inputs=struct({"k": "v"}))
    )
    assert resumed.execution.status == execution_status("RUNNING")
    assert resumed.execution.inputs["k"] == "v"
    cancelled = await harness.stub.CancelExecution(
        engine_pb2.CancelExecutionRequest(execution_id=execution.id, reason="enough")
    )
    assert cancelled.execution.status == execution_status("CANCELLED")
    assert cancelled.execution.error.message == "enough"


async def test_resuming_a_completed_execution_fails_its_precondition(harness: Harness) -> None:
    await register(harness.stub, chain("w", "noop"))
    done = await run_to_end(harness.stub, "w")
    for call in (
        harness.stub.ResumeExecution(engine_pb2.ResumeExecutionRequest(execution_id=done.id)),
        harness.stub.PauseExecution(engine_pb2.PauseExecutionRequest(execution_id=done.id)),
        harness.stub.CancelExecution(engine_pb2.CancelExecutionRequest(execution_id=done.id)),
    ):
        error = await rpc_error(call)
        assert error.code() is grpc.StatusCode.FAILED_PRECONDITION
        (failure,) = details_of(error, error_details_pb2.PreconditionFailure)
        assert failure.violations[0].subject == f"execution {done.id}"
        assert failure.violations[0].type == "STATUS_COMPLETED"


async def test_commands_bad_input(harness: Harness) -> None:
    for call in (
        harness.stub.CancelExecution(engine_pb2.CancelExecutionRequest()),
        harness.stub.PauseExecution(engine_pb2.PauseExecutionRequest(execution_id="  ")),
        harness.stub.ResumeExecution(engine_pb2.ResumeExecutionRequest()),
    ):
        assert bad_fields(await rpc_error(call)) == ["execution_id"]
    for call in (
        harness.stub.CancelExecution(engine_pb2.CancelExecutionRequest(execution_id="gone")),
        harness.stub.PauseExecution(engine_pb2.PauseExecutionRequest(execution_id="gone")),
        harness.stub.ResumeExecution(engine_pb2.ResumeExecutionRequest(execution_id="gone")),
    ):
        assert (await rpc_error(call)).code() is grpc.StatusCode.NOT_FOUND


async def _wait_for_status(harness: Harness, execution_id: str, status: str) -> None:
    async def poll() -> None:
        while True:
            response = await harness.stub.GetExecution(
                engine_pb2.GetExecutionRequest(execution_id=execution_id)
            )
            if response.execution.status == execution_status(status):
                return
            await asyncio.sleep(0.01)

    await bounded(poll())


def _raw(number: int) -> events_pb2.ExecutionStatus.ValueType:
    return events_pb2.ExecutionStatus.ValueType(number)


async def test_events_name_the_next_attempt_time_and_the_child_execution(
    harness: Harness,
) -> None:
    stub = harness.stub
    await register(stub, definition({"id": "child", "steps": [{"id": "c", "action": "noop"}]}))
    await register(
        stub,
        definition(
            {
                "id": "parent",
                "steps": [
                    {
                        "id": "flaky",
                        "action": "fail",
                        "parameters": {"times": 1},
                        "retry": {"max_attempts": 2, "initial_interval": "0.05s"},
                    },
                    {
                        "id": "sub",
                        "action": "workflow",
                        "parameters": {"workflow_id": "child"},
                        "depends_on": ["flaky"],
                    },
                ],
            }
        ),
    )
    execution = await start(stub, "parent")
    events = await watch_all(stub, execution.id)
    (retrying,) = [e for e in events if e.step_status == step_status("RETRYING")]
    waited = retrying.next_attempt_at.ToDatetime() - retrying.timestamp.ToDatetime()
    assert 0.04 <= waited.total_seconds() <= 0.2
    (sub_done,) = [
        e for e in events if e.step_id == "sub" and e.step_status == step_status("COMPLETED")
    ]
    reply = await stub.GetExecution(engine_pb2.GetExecutionRequest(execution_id=execution.id))
    (sub,) = [s for s in reply.execution.steps if s.step_id == "sub"]
    assert sub_done.child_execution_id == sub.child_execution_id != ""
    child = await stub.GetExecution(
        engine_pb2.GetExecutionRequest(execution_id=sub.child_execution_id)
    )
    assert child.execution.parent_execution_id == execution.id

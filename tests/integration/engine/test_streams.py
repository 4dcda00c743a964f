"""WatchExecution, WatchExecutions and RunAndWatch over gRPC."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from typing import Any

import grpc
from google.rpc import error_details_pb2
from stepstream.v1 import engine_pb2, events_pb2

from engine_service.core.state import EventKind, ExecutionEvent, ExecutionStatus
from tests.integration.engine.conftest import WATCH_BUFFER_EVENTS, Harness
from tests.integration.engine.helpers import (
    bad_fields,
    bounded,
    chain,
    definition,
    details_of,
    execution_status,
    first,
    register,
    run_to_end,
    start,
    stream_error,
    watch_all,
)

KIND_EXECUTION = events_pb2.EventKind.Value("EVENT_KIND_EXECUTION_STATUS_CHANGED")


def fan_out(width: int) -> dict[str, Any]:
    steps: list[dict[str, Any]] = [{"id": "root", "action": "noop"}]
    steps += [{"id": f"leaf{i}", "action": "noop", "depends_on": ["root"]} for i in range(width)]
    return {"id": "fan", "steps": steps}


async def test_watch_replay_from_any_sequence_equals_the_stored_history(harness: Harness) -> None:
    await register(harness.stub, definition(fan_out(5)))
    done = await run_to_end(harness.stub, "fan")
    stored = await harness.engine.read_events(done.id)
    assert [e.sequence for e in stored] == list(range(1, done.last_sequence + 1))
    for after in range(done.last_sequence + 1):
        watched = await watch_all(harness.stub, done.id, after_sequence=after)
        assert [e.event_id for e in watched] == [e.event_id for e in stored[after:]]
        assert [e.sequence for e in watched] == [e.sequence for e in stored[after:]]


async def test_watch_streams_live_events_and_ends_with_the_execution(harness: Harness) -> None:
    await register(harness.stub, chain("w", "delay", "noop", delay={"seconds": 0.3}))
    execution = await start(harness.stub, "w")
    watched = await watch_all(harness.stub, execution.id)
    sequences = [e.sequence for e in watched]
    assert sequences == list(range(1, len(watched) + 1))
    assert watched[-1].kind == KIND_EXECUTION
    assert watched[-1].execution_status == execution_status("COMPLETED")
    assert watched[-1].duration.ToTimedelta().total_seconds() >= 0.3
    stored = await harness.engine.read_events(execution.id)
    assert [e.event_id for e in watched] == [e.event_id for e in stored]


async def test_a_watcher_that_falls_behind_is_told_where_to_resume(harness: Harness) -> None:
    await register(harness.stub, chain("w", "delay", delay={"seconds": 30}))
    execution = await start(harness.stub, "w")
    stream = harness.stub.WatchExecution(
        engine_pb2.WatchExecutionRequest(execution_id=execution.id)
    )
    history = await first(stream)
    last = history.batch.events[-1]
    await _wait_for_subscribers(harness, 1)
    # More events at once than the watcher's buffer holds, faster than it can read them.
    template = await harness.engine.read_events(execution.id, last.sequence - 1)
    flood = [
        replace(template[0], event_id=str(uuid.uuid4()), sequence=last.sequence + n)
        for n in range(1, WATCH_BUFFER_EVENTS + 5)
    ]
    harness.engine.bus.publish(flood)
    received = [last.sequence]
    error = await stream_error(stream, received=received)
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    (info,) = details_of(error, error_details_pb2.ErrorInfo)
    assert info.reason == "SUBSCRIBER_FELL_BEHIND"
    # What was queued before the overflow is delivered; resuming continues after it.
    assert received == list(range(last.sequence, last.sequence + WATCH_BUFFER_EVENTS + 1))
    assert f"after_sequence={received[-1]}" in (error.details() or "")
    assert info.metadata["after_sequence"] == str(received[-1])


async def test_shutdown_ends_watch_streams_with_where_to_resume(harness: Harness) -> None:
    await register(harness.stub, chain("w", "delay", delay={"seconds": 30}))
    execution = await start(harness.stub, "w")
    stream = harness.stub.WatchExecution(
        engine_pb2.WatchExecutionRequest(execution_id=execution.id)
    )
    received = [e.sequence for e in (await first(stream)).batch.events]
    await _wait_for_subscribers(harness, 1)
    harness.server.streams.close_all()
    error = await stream_error(stream, received=received)
    assert error.code() is grpc.StatusCode.UNAVAILABLE
    (info,) = details_of(error, error_details_pb2.ErrorInfo)
    assert info.reason == "SERVER_SHUTTING_DOWN"
    assert info.metadata["after_sequence"] == str(received[-1])
    assert harness.engine.bus.subscriber_count == 0
    late = await stream_error(
        harness.stub.WatchExecution(engine_pb2.WatchExecutionRequest(execution_id=execution.id))
    )
    assert late.code() is grpc.StatusCode.UNAVAILABLE


async def test_watch_bad_input(harness: Harness) -> None:
    error = await stream_error(harness.stub.WatchExecution(engine_pb2.WatchExecutionRequest()))
    assert bad_fields(error) == ["execution_id"]
    error = await stream_error(
        harness.stub.WatchExecution(
            engine_pb2.WatchExecutionRequest(execution_id="x", after_sequence=-1)
        )
    )
    assert bad_fields(error) == ["after_sequence"]
    error = await stream_error(
        harness.stub.WatchExecution(engine_pb2.WatchExecutionRequest(execution_id="missing"))
    )
    assert error.code() is grpc.StatusCode.NOT_FOUND
    assert harness.engine.bus.subscriber_count == 0


async def test_watch_executions_filters_by_workflow_and_status(harness: Harness) -> None:
    await register(harness.stub, chain("wanted", "noop", "noop"))
    await register(harness.stub, chain("other", "noop"))
    other_tenant = chain("wanted", "noop")
    other_tenant.tenant = "acme"
    await register(harness.stub, other_tenant)
    running_only = harness.stub.WatchExecutions(
        engine_pb2.WatchExecutionsRequest(
            workflow_id="wanted", statuses=[execution_status("RUNNING")]
        )
    )
    everything = harness.stub.WatchExecutions(engine_pb2.WatchExecutionsRequest())
    collected = [
        asyncio.create_task(_collect_until_completed(running_only, 1)),
        asyncio.create_task(_collect_until_completed(everything, 2, expect_terminal=True)),
    ]
    await _wait_for_subscribers(harness, 2)
    wanted = await run_to_end(harness.stub, "wanted")
    other = await run_to_end(harness.stub, "other")
    await run_to_end(harness.stub, "wanted", tenant="acme")
    running_events, all_events = await bounded(asyncio.gather(*collected))

    stored = await harness.engine.read_events(wanted.id)
    in_running = [e for e in stored if _status_at(stored, e) is ExecutionStatus.RUNNING]
    assert [e.event_id for e in running_events] == [e.event_id for e in in_running]
    assert {e.execution_id for e in all_events} == {wanted.id, other.id}
    assert all(e.tenant == "default" for e in all_events)
    running_only.cancel()
    everything.cancel()


async def test_watch_executions_bad_input(harness: Harness) -> None:
    error = await stream_error(
        harness.stub.WatchExecutions(engine_pb2.WatchExecutionsRequest(statuses=[_raw(0), _raw(2)]))
    )
    assert bad_fields(error) == ["statuses[0]"]


async def test_run_and_watch_sends_the_execution_then_its_events(harness: Harness) -> None:
    await register(harness.stub, chain("w", "noop", "noop"))
    request = engine_pb2.RunAndWatchRequest(
        start=engine_pb2.StartExecutionRequest(workflow_id="w", idempotency_key="k")
    )
    messages = [m async for m in harness.stub.RunAndWatch(request)]
    assert messages[0].WhichOneof("payload") == "execution"
    execution = messages[0].execution
    events = [e for m in messages[1:] for e in m.batch.events]
    assert all(m.WhichOneof("payload") == "batch" for m in messages[1:])
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert {e.execution_id for e in events} == {execution.id}
    assert events[-1].execution_status == execution_status("COMPLETED")
    again = [m async for m in harness.stub.RunAndWatch(request)]
    assert again[0].execution.id == execution.id, "the idempotency key applies"


async def test_run_and_watch_bad_input(harness: Harness) -> None:
    error = await stream_error(harness.stub.RunAndWatch(engine_pb2.RunAndWatchRequest()))
    assert bad_fields(error) == ["workflow_id"]
    error = await stream_error(
        harness.stub.RunAndWatch(
            engine_pb2.RunAndWatchRequest(start=engine_pb2.StartExecutionRequest(workflow_id="x"))
        )
    )
    assert error.code() is grpc.StatusCode.NOT_FOUND


def _status_at(history: list[ExecutionEvent], event: ExecutionEvent) -> ExecutionStatus:
    status = ExecutionStatus.PENDING
    for candidate in history[: event.sequence]:
        if candidate.kind is EventKind.EXECUTION_STATUS_CHANGED:
            assert candidate.execution_status is not None
            status = candidate.execution_status
    return status


async def _collect_until_completed(
    stream: object, executions: int, *, expect_terminal: bool = False
) -> list[events_pb2.ExecutionEvent]:
    """Events until `executions` executions have sent their last RUNNING-time event."""
    events: list[events_pb2.ExecutionEvent] = []
    ended: set[str] = set()
    async for response in stream:  # type: ignore[attr-defined]
        for event in response.batch.events:
            events.append(event)
            last_running = event.kind == KIND_EXECUTION and (
                event.execution_status != execution_status("RUNNING")
                and event.execution_status != execution_status("PENDING")
            )
            if last_running or (not expect_terminal and _is_last_step_event(event)):
                ended.add(event.execution_id)
        if len(ended) >= executions:
            return events
    return events


def _is_last_step_event(event: events_pb2.ExecutionEvent) -> bool:
    return event.step_id == "s1" and event.step_status == events_pb2.StepStatus.Value(
        "STEP_STATUS_COMPLETED"
    )


async def _wait_for_subscribers(harness: Harness, count: int) -> None:
    async def poll() -> None:
        while True:
            if harness.engine.bus.subscriber_count >= count:
                return
            await asyncio.sleep(0.01)

    await bounded(poll())


def _raw(number: int) -> events_pb2.ExecutionStatus.ValueType:
    return events_pb2.ExecutionStatus.ValueType(number)

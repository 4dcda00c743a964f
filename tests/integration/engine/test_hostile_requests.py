"""Hostile requests of issue 11, each on its own: INVALID_ARGUMENT naming the field (or
NOT_FOUND), never INTERNAL or UNKNOWN, on SQLite and on Postgres, and nothing stored.

The generated requests of the fuzz tier (tests/fuzz) cover the whole contract; these are
the findings it stands on, kept as examples.
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2
from grpc import aio
from stepstream.v1 import engine_pb2, workflow_pb2

from tests.integration.engine.conftest import Harness
from tests.integration.engine.helpers import (
    bad_fields,
    bounded,
    chain,
    definition,
    execution_status,
    register,
    rpc_error,
    run_to_end,
    start,
    struct,
)

NAN, INF = float("nan"), float("inf")
ENGINE = "/stepstream.v1.EngineService/"


def _token(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


def _with_step(**step: Any) -> workflow_pb2.WorkflowDefinition:
    message = definition({"id": "hostile", "steps": [{"id": "a", "action": "noop"}]})
    for name, value in step.items():
        target = getattr(message.steps[0], name)
        if hasattr(target, "CopyFrom"):
            target.CopyFrom(value)
        else:
            setattr(message.steps[0], name, value)
    return message


async def _refused_on_both(harness: Harness, message: workflow_pb2.WorkflowDefinition) -> list[str]:
    """The fields RegisterWorkflow names; ValidateWorkflow must name the same."""
    registered = await rpc_error(
        harness.stub.RegisterWorkflow(engine_pb2.RegisterWorkflowRequest(definition=message))
    )
    validated = await rpc_error(
        harness.stub.ValidateWorkflow(engine_pb2.ValidateWorkflowRequest(definition=message))
    )
    assert bad_fields(validated) == bad_fields(registered)
    return bad_fields(registered)


async def _nothing_stored(harness: Harness) -> None:
    executions = await harness.stub.ListExecutions(engine_pb2.ListExecutionsRequest())
    workflows = await harness.stub.ListWorkflows(engine_pb2.ListWorkflowsRequest())
    schedules = await harness.stub.ListSchedules(engine_pb2.ListSchedulesRequest())
    assert [w.id for w in workflows.workflows if w.id == "hostile"] == []
    assert list(executions.executions) == []
    assert list(schedules.schedules) == []


# -- durations and timestamps ----------------------------------------------------------


async def test_durations_out_of_range_are_refused_by_field(harness: Harness) -> None:
    for timeout in (
        duration_pb2.Duration(seconds=1, nanos=-5),
        duration_pb2.Duration(seconds=2**62),
        duration_pb2.Duration(seconds=-1),
    ):
        assert await _refused_on_both(harness, _with_step(timeout=timeout)) == [
            "definition.steps[0].timeout"
        ]
    await _nothing_stored(harness)


async def test_timestamps_out_of_range_are_refused_by_field(harness: Harness) -> None:
    message = _with_step()
    message.created_at.CopyFrom(timestamp_pb2.Timestamp(nanos=-1))
    assert await _refused_on_both(harness, message) == ["definition.created_at.nanos"]
    for request, field in (
        (
            engine_pb2.ListExecutionsRequest(
                created_before=timestamp_pb2.Timestamp(seconds=253402300800)
            ),
            "created_before",
        ),
        (
            engine_pb2.ListExecutionsRequest(
                created_after=timestamp_pb2.Timestamp(seconds=-62135596801)
            ),
            "created_after",
        ),
    ):
        assert bad_fields(await rpc_error(harness.stub.ListExecutions(request))) == [field]
    await _nothing_stored(harness)


# -- Struct values and doubles ---------------------------------------------------------


async def test_non_finite_inputs_are_refused_on_every_rpc_that_takes_inputs(
    harness: Harness,
) -> None:
    await register(harness.stub, chain("w", "noop"))
    stub = harness.stub
    calls: list[tuple[Awaitable[Any], str]] = [
        (
            stub.StartExecution(
                engine_pb2.StartExecutionRequest(workflow_id="w", inputs=struct({"x": NAN}))
            ),
            "inputs.x",
        ),
        (
            stub.ResumeExecution(
                engine_pb2.ResumeExecutionRequest(execution_id="e", inputs=struct({"x": NAN}))
            ),
            "inputs.x",
        ),
        (
            stub.CreateSchedule(
                engine_pb2.CreateScheduleRequest(
                    schedule=engine_pb2.Schedule(
                        workflow_id="w", cron="* * * * *", inputs=struct({"x": NAN})
                    )
                )
            ),
            "schedule.inputs.x",
        ),
        (
            stub.UpdateSchedule(
                engine_pb2.UpdateScheduleRequest(schedule_id="s", inputs=struct({"x": NAN}))
            ),
            "inputs.x",
        ),
    ]
    for call, field in calls:
        assert bad_fields(await rpc_error(call)) == [field]
    await _nothing_stored(harness)


async def test_non_finite_numbers_in_definitions_are_refused(harness: Harness) -> None:
    assert await _refused_on_both(harness, _with_step(parameters=struct({"n": INF}))) == [
        "definition.steps[0].parameters.n"
    ]
    message = _with_step()
    message.business_value = NAN
    assert await _refused_on_both(harness, message) == ["definition.business_value"]
    message = _with_step(retry=workflow_pb2.RetryPolicy(max_attempts=2, backoff_coefficient=INF))
    assert await _refused_on_both(harness, message) == [
        "definition.steps[0].retry.backoff_coefficient"
    ]
    await _nothing_stored(harness)


async def test_nul_inside_inputs_is_refused(harness: Harness) -> None:
    await register(harness.stub, chain("w", "noop"))
    for inputs, field in (
        (struct({"x": "a\x00b"}), "inputs.x"),
        (struct({"k\x00": 1}), "inputs"),
        (struct({"list": [1, {"deep": "\x00"}]}), "inputs.list[1].deep"),
    ):
        request = engine_pb2.StartExecutionRequest(workflow_id="w", inputs=inputs)
        assert bad_fields(await rpc_error(harness.stub.StartExecution(request))) == [field]
    await _nothing_stored(harness)


async def test_inputs_over_the_limit_are_refused_before_anything_is_stored(
    harness: Harness,
) -> None:
    # Accepted before, and then larger than analytics' receive limit in the relay's batch.
    await register(harness.stub, chain("w", "noop"))
    request = engine_pb2.StartExecutionRequest(
        workflow_id="w", inputs=struct({"x": "x" * 4_200_000})
    )
    error = await rpc_error(harness.stub.StartExecution(request))
    assert bad_fields(error) == ["inputs"]
    assert "over the limit of 1048576" in (error.details() or "")
    await _nothing_stored(harness)


# -- page tokens, enums, time zones ----------------------------------------------------


async def test_page_tokens_that_do_not_parse_are_invalid_argument(harness: Harness) -> None:
    stub = harness.stub
    lists: list[Callable[[str], Awaitable[Any]]] = [
        lambda t: stub.ListExecutions(engine_pb2.ListExecutionsRequest(page_token=t)),
        lambda t: stub.ListSchedules(engine_pb2.ListSchedulesRequest(page_token=t)),
        lambda t: stub.ListWorkflows(engine_pb2.ListWorkflowsRequest(page_token=t)),
    ]
    tokens = [_token("o:²"), _token("o:" + "9" * 5000), _token("o:" + "9" * 20), "é"]
    for call in lists:
        for token in tokens:
            assert bad_fields(await rpc_error(call(token))) == ["page_token"]


async def test_undefined_enum_numbers_are_refused_by_field(harness: Harness) -> None:
    message = _with_step(retry=workflow_pb2.RetryPolicy(max_attempts=2, jitter=99))  # type: ignore[arg-type]
    message.on_failure = 99  # type: ignore[assignment]
    assert sorted(await _refused_on_both(harness, message)) == [
        "definition.on_failure",
        "definition.steps[0].retry.jitter",
    ]
    request = engine_pb2.CreateScheduleRequest(
        schedule=engine_pb2.Schedule(workflow_id="w", cron="* * * * *", overlap_policy=-1)  # type: ignore[arg-type]
    )
    fields = bad_fields(await rpc_error(harness.stub.CreateSchedule(request)))
    assert fields == ["schedule.overlap_policy"]
    watch = harness.stub.WatchExecutions(engine_pb2.WatchExecutionsRequest(statuses=[99]))  # type: ignore[list-item]
    assert bad_fields(await rpc_error(watch.read())) == ["statuses[0]"]


@pytest.mark.parametrize("zone", ["z" * 300, "Europe", "../etc/passwd", "UTC\n"])
async def test_time_zones_zoneinfo_cannot_open_are_refused(harness: Harness, zone: str) -> None:
    # "z" * 300 was OSError (File name too long), "Europe" IsADirectoryError: INTERNAL.
    await register(harness.stub, chain("w", "noop"))
    request = engine_pb2.CreateScheduleRequest(
        schedule=engine_pb2.Schedule(workflow_id="w", cron="* * * * *", time_zone=zone)
    )
    assert bad_fields(await rpc_error(harness.stub.CreateSchedule(request))) == [
        "schedule.time_zone"
    ]
    update = engine_pb2.UpdateScheduleRequest(schedule_id="s", time_zone=zone)
    assert bad_fields(await rpc_error(harness.stub.UpdateSchedule(update))) == ["time_zone"]
    await _nothing_stored(harness)


# -- strings: NUL, control characters, lengths -----------------------------------------


async def test_nul_and_oversized_ids_never_reach_the_database(harness: Harness) -> None:
    # On Postgres these were UntranslatableCharacterError and `value too long`: INTERNAL.
    stub = harness.stub
    calls: list[tuple[Awaitable[Any], str]] = [
        (stub.GetExecution(engine_pb2.GetExecutionRequest(execution_id="\x00")), "execution_id"),
        (stub.ListExecutions(engine_pb2.ListExecutionsRequest(tenant="\x00")), "tenant"),
        (stub.ListExecutions(engine_pb2.ListExecutionsRequest(tenant="t" * 100_000)), "tenant"),
        (
            stub.StartExecution(
                engine_pb2.StartExecutionRequest(workflow_id="w", tenant="t" * 100_000)
            ),
            "tenant",
        ),
        (
            stub.StartExecution(
                engine_pb2.StartExecutionRequest(workflow_id="w", idempotency_key="k" * 257)
            ),
            "idempotency_key",
        ),
        (stub.GetWorkflow(engine_pb2.GetWorkflowRequest(workflow_id="w\x01")), "workflow_id"),
        (stub.DeleteSchedule(engine_pb2.DeleteScheduleRequest(schedule_id="\x00")), "schedule_id"),
    ]
    for call, field in calls:
        assert bad_fields(await rpc_error(call)) == [field]
    long_tenant = _with_step()
    long_tenant.tenant = "t" * 100_000
    assert await _refused_on_both(harness, long_tenant) == ["definition.tenant"]
    labelled = _with_step()
    labelled.labels["team"] = "a\x00"
    assert await _refused_on_both(harness, labelled) == ["definition.labels.team"]
    await _nothing_stored(harness)


async def test_a_cancel_with_a_nul_reason_is_refused_and_changes_nothing(
    harness: Harness,
) -> None:
    # It answered OK, then the runner died writing the reason on Postgres: the cancel was
    # lost and the execution completed later.
    await register(harness.stub, chain("w", "delay", delay={"seconds": 60}))
    execution = await start(harness.stub, "w")
    request = engine_pb2.CancelExecutionRequest(execution_id=execution.id, reason="stop\x00")
    assert bad_fields(await rpc_error(harness.stub.CancelExecution(request))) == ["reason"]
    found = await harness.stub.GetExecution(
        engine_pb2.GetExecutionRequest(execution_id=execution.id)
    )
    assert found.execution.status in {execution_status("PENDING"), execution_status("RUNNING")}
    assert found.execution.error.message == ""
    cancelled = await bounded(
        harness.stub.CancelExecution(
            engine_pb2.CancelExecutionRequest(execution_id=execution.id, reason="stop")
        )
    )
    assert cancelled.execution.status == execution_status("CANCELLED")
    assert cancelled.execution.error.message == "stop"


# -- bytes that are not a message ------------------------------------------------------


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        if not value:
            return bytes([*out, low])
        out.append(low | 0x80)


def _not_messages(method: Any) -> dict[str, bytes]:
    """Bytes that do not decode as `method`'s request type, each for its own reason."""
    groups = 101  # one past protobuf's nesting limit, in an unknown field
    nested = _varint(9999 << 3 | 3) * groups + _varint(9999 << 3 | 4) * groups
    found = {"garbage": b"\xff", "nested past 100": nested}
    invalid_utf8 = _invalid_utf8(method.input_type)
    if invalid_utf8 is not None:
        found["invalid UTF-8"] = invalid_utf8
    return found


def _invalid_utf8(message_type: Any) -> bytes | None:
    """A message whose first string field (looked for one level deep) holds b"\\xc3\\x28"."""
    for field in message_type.fields:
        if field.type == field.TYPE_STRING:
            return _varint(field.number << 3 | 2) + b"\x02\xc3\x28"
    for field in message_type.fields:
        if field.type == field.TYPE_MESSAGE and field.message_type.fields:
            inner = _invalid_utf8(field.message_type)
            if inner is not None:
                return _varint(field.number << 3 | 2) + _varint(len(inner)) + inner
    return None


async def _raw_call(channel: aio.Channel, path: str, streaming: bool, body: bytes) -> Any:
    if streaming:
        stream = channel.unary_stream(path, None, None)(body)
        return await stream.read()
    return await channel.unary_unary(path, None, None)(body)


async def test_bytes_that_are_not_a_request_are_invalid_argument_on_every_method(
    harness: Harness,
) -> None:
    # They were UNKNOWN ("DecodeError raised by servicer method").
    service = engine_pb2.DESCRIPTOR.services_by_name["EngineService"]
    for method in service.methods:
        for reason, body in _not_messages(method).items():
            path = f"{ENGINE}{method.name}"
            error = await rpc_error(_raw_call(harness.channel, path, method.server_streaming, body))
            assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, (method.name, reason)
            assert "does not decode" in (error.details() or ""), (method.name, reason)
    health = await rpc_error(
        _raw_call(harness.channel, "/grpc.health.v1.Health/Check", False, b"\xff")
    )
    assert health.code() is grpc.StatusCode.INVALID_ARGUMENT
    await _nothing_stored(harness)


# -- outputs ---------------------------------------------------------------------------


async def test_an_output_over_the_limit_fails_its_step_with_a_clear_type(
    harness: Harness,
) -> None:
    # An output travels in events to analytics; unbounded, one step's output could make
    # an event larger than analytics accepts.
    await register(harness.stub, chain("big", "echo", echo={"x": "${inputs.x}"}))
    execution = await run_to_end(harness.stub, "big", inputs=struct({"x": "x" * 600_000}))
    assert execution.status == execution_status("FAILED")
    (step,) = execution.steps
    assert step.error.type == "OutputTooLarge"
    assert "over the limit of 524288" in step.error.message
    fits = await run_to_end(harness.stub, "big", inputs=struct({"x": "x" * 400_000}))
    assert fits.status == execution_status("COMPLETED")

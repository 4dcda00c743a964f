"""Building requests and decoding rich error details in the engine's gRPC tests."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping
from typing import Any, TypeVar, cast

import grpc
import pytest
from google.protobuf import json_format, struct_pb2
from google.rpc import error_details_pb2
from grpc import aio
from grpc_status import rpc_status
from stepstream.v1 import engine_pb2, engine_pb2_grpc, events_pb2, workflow_pb2

T = TypeVar("T")
EOF: Any = aio.EOF  # type: ignore[attr-defined]  # (missing from grpc-stubs)
WAIT_SECONDS = 20.0


def definition(data: Mapping[str, Any]) -> workflow_pb2.WorkflowDefinition:
    return json_format.ParseDict(dict(data), workflow_pb2.WorkflowDefinition())


def chain(workflow_id: str, *actions: str, **parameters: Any) -> workflow_pb2.WorkflowDefinition:
    """Steps s0 -> s1 -> ... running `actions` in order."""
    steps: list[dict[str, Any]] = []
    for index, action in enumerate(actions):
        step: dict[str, Any] = {"id": f"s{index}", "action": action}
        if action in parameters:
            step["parameters"] = parameters[action]
        if index:
            step["depends_on"] = [f"s{index - 1}"]
        steps.append(step)
    return definition({"id": workflow_id, "steps": steps})


def struct(data: Mapping[str, Any]) -> struct_pb2.Struct:
    value = struct_pb2.Struct()
    value.update(dict(data))
    return value


async def register(
    stub: engine_pb2_grpc.EngineServiceAsyncStub, message: workflow_pb2.WorkflowDefinition
) -> workflow_pb2.WorkflowDefinition:
    response = await stub.RegisterWorkflow(engine_pb2.RegisterWorkflowRequest(definition=message))
    return response.workflow


async def start(
    stub: engine_pb2_grpc.EngineServiceAsyncStub, workflow_id: str, **fields: Any
) -> engine_pb2.Execution:
    request = engine_pb2.StartExecutionRequest(workflow_id=workflow_id, **fields)
    response = await stub.StartExecution(request)
    return response.execution


async def watch_all(
    stub: engine_pb2_grpc.EngineServiceAsyncStub, execution_id: str, after_sequence: int = 0
) -> list[events_pb2.ExecutionEvent]:
    """Every event the watch stream sends until it ends."""
    request = engine_pb2.WatchExecutionRequest(
        execution_id=execution_id, after_sequence=after_sequence
    )

    async def collect() -> list[events_pb2.ExecutionEvent]:
        events: list[events_pb2.ExecutionEvent] = []
        async for response in stub.WatchExecution(request):
            events.extend(response.batch.events)
        return events

    return await bounded(collect())


async def run_to_end(
    stub: engine_pb2_grpc.EngineServiceAsyncStub, workflow_id: str, **fields: Any
) -> engine_pb2.Execution:
    execution = await start(stub, workflow_id, **fields)
    await watch_all(stub, execution.id)
    response = await stub.GetExecution(engine_pb2.GetExecutionRequest(execution_id=execution.id))
    return response.execution


async def bounded(awaitable: Awaitable[T], seconds: float = WAIT_SECONDS) -> T:
    return await asyncio.wait_for(awaitable, seconds)


async def first(call: aio.UnaryStreamCall[Any, T]) -> T:
    """The stream's next message (failing if the stream ends first)."""
    message = await bounded(call.read())
    assert message is not EOF, "the stream ended"
    return cast(T, message)


async def rpc_error(awaitable: Awaitable[Any]) -> aio.AioRpcError:
    with pytest.raises(aio.AioRpcError) as caught:
        await bounded(awaitable)
    return caught.value


async def stream_error(
    call: aio.UnaryStreamCall[Any, Any], *, received: list[int] | None = None
) -> aio.AioRpcError:
    """The error a stream ends with; the sequences of batches read first go to `received`."""

    async def drain() -> None:
        while (message := await call.read()) is not EOF:
            if received is not None:
                received.extend(e.sequence for e in cast(Any, message).batch.events)

    return await rpc_error(drain())


async def error_of(call: Any) -> aio.AioRpcError:
    """The error a unary call or a response stream ends with."""
    if isinstance(call, aio.UnaryStreamCall):
        return await stream_error(call)
    return await rpc_error(call)


def masked(error: aio.AioRpcError, key: str) -> tuple[Any, str, bytes]:
    """What a client can learn from an error, with the id it asked about blanked out."""
    status = rpc_status.from_call(cast(Any, error))
    assert status is not None
    serialized = status.SerializeToString().replace(key.encode(), b"<key>")
    return error.code(), (error.details() or "").replace(key, "<key>"), serialized


def details_of(error: aio.AioRpcError, kind: type[T]) -> list[T]:
    status = rpc_status.from_call(cast(Any, error))
    assert status is not None, f"no google.rpc.Status details on {error.code()}"
    found = []
    for detail in status.details:
        if detail.Is(kind.DESCRIPTOR):  # type: ignore[attr-defined]
            message = kind()
            detail.Unpack(message)
            found.append(message)
    return found


def bad_fields(error: aio.AioRpcError) -> list[str]:
    """The fields of the BadRequest violations of an INVALID_ARGUMENT error."""
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, error.details()
    (bad_request,) = details_of(error, error_details_pb2.BadRequest)
    return [violation.field for violation in bad_request.field_violations]


def execution_status(name: str) -> events_pb2.ExecutionStatus.ValueType:
    return events_pb2.ExecutionStatus.Value(f"EXECUTION_STATUS_{name}")


def step_status(name: str) -> events_pb2.StepStatus.ValueType:
    return events_pb2.StepStatus.Value(f"STEP_STATUS_{name}")

"""Bearer tokens scoped to tenants, through every EngineService RPC of a real server.

Tenants A and B, with tokens for A, for B, for B and C, and for every tenant. A caller
never sees, starts, watches or changes another tenant's workflows or executions; another
tenant's execution is NOT_FOUND byte for byte like an id that does not exist.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from stepstream.v1 import engine_pb2, engine_pb2_grpc, events_pb2, workflow_pb2

from tests.integration.engine.helpers import (
    EOF,
    bounded,
    chain,
    details_of,
    error_of,
    execution_status,
    first,
    masked,
    rpc_error,
    stream_error,
    struct,
)
from tests.integration.engine.servers import ALL, BC, A, B, Metadata, Secured, bearer

LONG = {"seconds": 60}  # the step is still running when the test ends
# Ids of equal length, so errors about either serialize to the same number of bytes.
WORKFLOW, NO_WORKFLOW = "wf-alpha", "wf-omega"


def every_rpc(stub: engine_pb2_grpc.EngineServiceAsyncStub) -> dict[str, Callable[..., Any]]:
    """Each RPC with a well-formed request; called with `metadata=`."""
    definition = chain("w", "noop")
    execution = "00000000-0000-4000-8000-000000000000"
    return {
        "RegisterWorkflow": lambda **m: stub.RegisterWorkflow(
            engine_pb2.RegisterWorkflowRequest(definition=definition), **m
        ),
        "GetWorkflow": lambda **m: stub.GetWorkflow(
            engine_pb2.GetWorkflowRequest(workflow_id="w"), **m
        ),
        "ListWorkflows": lambda **m: stub.ListWorkflows(engine_pb2.ListWorkflowsRequest(), **m),
        "ValidateWorkflow": lambda **m: stub.ValidateWorkflow(
            engine_pb2.ValidateWorkflowRequest(definition=definition), **m
        ),
        "StartExecution": lambda **m: stub.StartExecution(
            engine_pb2.StartExecutionRequest(workflow_id="w"), **m
        ),
        "GetExecution": lambda **m: stub.GetExecution(
            engine_pb2.GetExecutionRequest(execution_id=execution), **m
        ),
        "ListExecutions": lambda **m: stub.ListExecutions(engine_pb2.ListExecutionsRequest(), **m),
        "CancelExecution": lambda **m: stub.CancelExecution(
            engine_pb2.CancelExecutionRequest(execution_id=execution), **m
        ),
        "PauseExecution": lambda **m: stub.PauseExecution(
            engine_pb2.PauseExecutionRequest(execution_id=execution), **m
        ),
        "ResumeExecution": lambda **m: stub.ResumeExecution(
            engine_pb2.ResumeExecutionRequest(execution_id=execution), **m
        ),
        "WatchExecution": lambda **m: stub.WatchExecution(
            engine_pb2.WatchExecutionRequest(execution_id=execution), **m
        ),
        "WatchExecutions": lambda **m: stub.WatchExecutions(
            engine_pb2.WatchExecutionsRequest(), **m
        ),
        "RunAndWatch": lambda **m: stub.RunAndWatch(
            engine_pb2.RunAndWatchRequest(start=engine_pb2.StartExecutionRequest(workflow_id="w")),
            **m,
        ),
        "CreateSchedule": lambda **m: stub.CreateSchedule(
            engine_pb2.CreateScheduleRequest(
                schedule=engine_pb2.Schedule(workflow_id="w", cron="* * * * *")
            ),
            **m,
        ),
        "ListSchedules": lambda **m: stub.ListSchedules(engine_pb2.ListSchedulesRequest(), **m),
        "UpdateSchedule": lambda **m: stub.UpdateSchedule(
            engine_pb2.UpdateScheduleRequest(schedule_id="s", paused=True), **m
        ),
        "DeleteSchedule": lambda **m: stub.DeleteSchedule(
            engine_pb2.DeleteScheduleRequest(schedule_id="s"), **m
        ),
    }


BAD_CREDENTIALS: dict[str, Metadata] = {
    "none": (),
    "unknown token": bearer("token-z"),
    "a configured token's prefix": bearer("token-"),
    "a configured token plus a character": bearer("token-aa"),
    "another scheme": (("authorization", "Basic token-a"),),
    "no scheme": (("authorization", "token-a"),),
    "no token": (("authorization", "Bearer "),),
    "two tokens": (*A, *B),
}


async def test_every_rpc_is_unauthenticated_without_a_configured_token(
    secured: Secured,
) -> None:
    service = engine_pb2.DESCRIPTOR.services_by_name["EngineService"]
    calls = every_rpc(secured.stub)
    assert set(calls) == {method.name for method in service.methods}
    for name, call in calls.items():
        for case, metadata in BAD_CREDENTIALS.items():
            error = await error_of(call(metadata=metadata))
            assert error.code() is grpc.StatusCode.UNAUTHENTICATED, (name, case, error)
            (info,) = details_of(error, error_details_pb2.ErrorInfo)
            assert info.reason == "UNAUTHENTICATED"
            assert "token-a" not in (error.details() or "")
    listed = await secured.stub.ListWorkflows(
        engine_pb2.ListWorkflowsRequest(), metadata=(("authorization", "bearer token-a"),)
    )
    assert list(listed.workflows) == [], "the scheme is case-insensitive (RFC 6750)"


async def test_health_and_reflection_need_no_token(secured: Secured) -> None:
    health = health_pb2_grpc.HealthStub(secured.channel)
    response = await health.Check(health_pb2.HealthCheckRequest(service=""))
    assert response.status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(secured.channel)
    call = reflection.ServerReflectionInfo()
    await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
    answer = await bounded(call.read())
    await call.done_writing()
    names = {s.name for s in answer.list_services_response.service}
    assert "stepstream.v1.EngineService" in names


# ---- workflows -----------------------------------------------------------------------


async def test_another_tenants_workflows_are_invisible(secured: Secured) -> None:
    stub = secured.stub
    mine = await _register(stub, chain(WORKFLOW, "noop", "noop"), A)
    assert mine.tenant == "tenant-a", "an empty tenant is the token's only tenant"
    for caller in (B, BC):
        hidden, missing = [
            await rpc_error(
                stub.GetWorkflow(
                    engine_pb2.GetWorkflowRequest(workflow_id=name, tenant="tenant-b"),
                    metadata=caller,
                )
            )
            for name in (WORKFLOW, NO_WORKFLOW)
        ]
        assert hidden.code() is grpc.StatusCode.NOT_FOUND
        assert masked(hidden, WORKFLOW) == masked(missing, NO_WORKFLOW)
        listed = await stub.ListWorkflows(
            engine_pb2.ListWorkflowsRequest(tenant="tenant-b", all_versions=True),
            metadata=caller,
        )
        assert list(listed.workflows) == []
    theirs = await _register(stub, chain(WORKFLOW, "echo"), B)
    assert (theirs.tenant, theirs.version) == ("tenant-b", 1)
    request = engine_pb2.GetWorkflowRequest(workflow_id=WORKFLOW)
    again = await stub.GetWorkflow(request, metadata=A)
    assert [s.id for s in again.workflow.steps] == ["s0", "s1"], "A's workflow is untouched"


async def test_naming_a_foreign_tenant_is_permission_denied(secured: Secured) -> None:
    stub = secured.stub
    await _register(stub, chain("w", "noop"), A)
    foreign = chain("w", "noop")
    foreign.tenant = "tenant-a"
    calls = [
        stub.RegisterWorkflow(engine_pb2.RegisterWorkflowRequest(definition=foreign), metadata=B),
        stub.ValidateWorkflow(engine_pb2.ValidateWorkflowRequest(definition=foreign), metadata=B),
        stub.GetWorkflow(
            engine_pb2.GetWorkflowRequest(workflow_id="w", tenant="tenant-a"), metadata=B
        ),
        stub.ListWorkflows(engine_pb2.ListWorkflowsRequest(tenant="tenant-a"), metadata=BC),
        stub.StartExecution(
            engine_pb2.StartExecutionRequest(workflow_id="w", tenant="tenant-a"), metadata=B
        ),
        stub.ListExecutions(engine_pb2.ListExecutionsRequest(tenant="tenant-a"), metadata=B),
        stub.WatchExecutions(engine_pb2.WatchExecutionsRequest(tenant="tenant-a"), metadata=B),
        stub.RunAndWatch(
            engine_pb2.RunAndWatchRequest(
                start=engine_pb2.StartExecutionRequest(workflow_id="w", tenant="tenant-a")
            ),
            metadata=BC,
        ),
        # A token of several tenants falls back to "default", which it does not cover.
        stub.ListWorkflows(engine_pb2.ListWorkflowsRequest(), metadata=BC),
    ]
    for call in calls:
        error = await error_of(call)
        assert error.code() is grpc.StatusCode.PERMISSION_DENIED, error
        (info,) = details_of(error, error_details_pb2.ErrorInfo)
        assert info.reason == "TENANT_NOT_ALLOWED"
        assert info.metadata["tenant"] in {"tenant-a", "default"}
    executions = await stub.ListExecutions(
        engine_pb2.ListExecutionsRequest(tenant="tenant-a"), metadata=A
    )
    assert list(executions.executions) == [], "nothing was started in A"


# ---- executions ----------------------------------------------------------------------


async def test_another_tenants_execution_is_not_found_like_a_missing_id(
    secured: Secured,
) -> None:
    stub = secured.stub
    await _register(stub, chain("w", "delay", delay=LONG), A)
    execution = await _start(stub, "w", A)
    before = await _running(stub, execution.id, A)
    missing = str(uuid.uuid4())
    for caller in (B, BC):
        for name, call in _by_id(stub).items():
            hidden = await error_of(call(execution.id, caller))
            absent = await error_of(call(missing, caller))
            assert hidden.code() is grpc.StatusCode.NOT_FOUND, (name, hidden)
            assert masked(hidden, execution.id) == masked(absent, missing), name
    after = await stub.GetExecution(
        engine_pb2.GetExecutionRequest(execution_id=execution.id), metadata=A
    )
    assert after.execution == before, "nothing B tried changed A's execution"
    await _command_own_execution(stub, execution.id, A)


async def test_lists_and_watches_show_only_the_callers_tenant(secured: Secured) -> None:
    stub = secured.stub
    for caller in (A, B):
        await _register(stub, chain("w", "noop"), caller)
    watch_b = stub.WatchExecutions(engine_pb2.WatchExecutionsRequest(), metadata=B)
    watch_bc = stub.WatchExecutions(
        engine_pb2.WatchExecutionsRequest(tenant="tenant-b"), metadata=BC
    )
    await asyncio.sleep(0.2)  # the watches subscribe before the runs start
    ran_a = await _run(stub, "w", A)
    ran_b = await _run(stub, "w", B)
    for watch in (watch_b, watch_bc):
        seen = await _events_until_done(watch, ran_b.id)
        assert {e.execution_id for e in seen} == {ran_b.id}, "A's events never reach B"
        assert {e.tenant for e in seen} == {"tenant-b"}
        watch.cancel()
    for caller, own in ((A, ran_a), (B, ran_b)):
        listed = await stub.ListExecutions(engine_pb2.ListExecutionsRequest(), metadata=caller)
        assert [e.id for e in listed.executions] == [own.id]
    both = await stub.ListExecutions(
        engine_pb2.ListExecutionsRequest(tenant="tenant-b"), metadata=BC
    )
    assert [e.id for e in both.executions] == [ran_b.id]


async def test_starting_never_reaches_into_another_tenant(secured: Secured) -> None:
    stub = secured.stub
    await _register(stub, chain(WORKFLOW, "noop"), A)
    hidden, absent = [
        await rpc_error(
            stub.StartExecution(engine_pb2.StartExecutionRequest(workflow_id=name), metadata=B)
        )
        for name in (WORKFLOW, NO_WORKFLOW)
    ]
    assert hidden.code() is grpc.StatusCode.NOT_FOUND
    assert masked(hidden, WORKFLOW) == masked(absent, NO_WORKFLOW)
    start = engine_pb2.StartExecutionRequest(workflow_id=WORKFLOW)
    run = stub.RunAndWatch(engine_pb2.RunAndWatchRequest(start=start), metadata=B)
    assert (await stream_error(run)).code() is grpc.StatusCode.NOT_FOUND
    await _register(stub, chain(WORKFLOW, "noop"), B)
    first_a = await _start(stub, WORKFLOW, A, idempotency_key="k")
    first_b = await _start(stub, WORKFLOW, B, idempotency_key="k")
    assert first_a.id != first_b.id, "idempotency keys are per tenant"
    assert (first_a.tenant, first_b.tenant) == ("tenant-a", "tenant-b")
    streamed = stub.RunAndWatch(engine_pb2.RunAndWatchRequest(start=start), metadata=B)
    opened = await first(streamed)
    assert opened.execution.tenant == "tenant-b"
    streamed.cancel()


async def test_a_token_for_every_tenant_reaches_each_it_names(secured: Secured) -> None:
    stub = secured.stub
    await _register(stub, chain("w", "delay", delay=LONG), A)
    execution = await _start(stub, "w", A)
    await _running(stub, execution.id, ALL)
    listed = await stub.ListExecutions(
        engine_pb2.ListExecutionsRequest(tenant="tenant-a"), metadata=ALL
    )
    assert [e.id for e in listed.executions] == [execution.id]
    default = await stub.ListExecutions(engine_pb2.ListExecutionsRequest(), metadata=ALL)
    assert list(default.executions) == [], "an empty tenant is 'default' for a * token"
    registered = await _register(stub, chain("x", "noop"), ALL)
    assert registered.tenant == "default"
    await _command_own_execution(stub, execution.id, ALL)


async def test_a_token_of_several_tenants_commands_executions_of_each(secured: Secured) -> None:
    stub = secured.stub
    for caller, tenant in ((B, "tenant-b"), (BC, "tenant-c")):
        message = chain("w", "delay", delay=LONG)
        message.tenant = tenant
        await _register(stub, message, caller)
    in_b = await _start(stub, "w", BC, tenant="tenant-b")
    in_c = await _start(stub, "w", BC, tenant="tenant-c")
    assert (in_b.tenant, in_c.tenant) == ("tenant-b", "tenant-c")
    await _running(stub, in_b.id, BC)
    hidden = await rpc_error(
        stub.GetExecution(engine_pb2.GetExecutionRequest(execution_id=in_c.id), metadata=B)
    )
    assert hidden.code() is grpc.StatusCode.NOT_FOUND
    await _command_own_execution(stub, in_b.id, BC)


# ---- helpers -------------------------------------------------------------------------


def _by_id(
    stub: engine_pb2_grpc.EngineServiceAsyncStub,
) -> dict[str, Callable[[str, Metadata], Any]]:
    """Every RPC that names an execution by id."""
    return {
        "GetExecution": lambda i, m: stub.GetExecution(
            engine_pb2.GetExecutionRequest(execution_id=i), metadata=m
        ),
        "GetExecution at a sequence": lambda i, m: stub.GetExecution(
            engine_pb2.GetExecutionRequest(execution_id=i, at_sequence=1), metadata=m
        ),
        "GetExecution past the end": lambda i, m: stub.GetExecution(
            engine_pb2.GetExecutionRequest(execution_id=i, at_sequence=10**6), metadata=m
        ),
        "CancelExecution": lambda i, m: stub.CancelExecution(
            engine_pb2.CancelExecutionRequest(execution_id=i, reason="B says so"), metadata=m
        ),
        "PauseExecution": lambda i, m: stub.PauseExecution(
            engine_pb2.PauseExecutionRequest(execution_id=i), metadata=m
        ),
        "ResumeExecution": lambda i, m: stub.ResumeExecution(
            engine_pb2.ResumeExecutionRequest(execution_id=i, inputs=struct({"k": 1})),
            metadata=m,
        ),
        "WatchExecution": lambda i, m: stub.WatchExecution(
            engine_pb2.WatchExecutionRequest(execution_id=i), metadata=m
        ),
    }


async def _register(
    stub: engine_pb2_grpc.EngineServiceAsyncStub,
    message: workflow_pb2.WorkflowDefinition,
    metadata: Metadata,
) -> workflow_pb2.WorkflowDefinition:
    request = engine_pb2.RegisterWorkflowRequest(definition=message)
    return (await stub.RegisterWorkflow(request, metadata=metadata)).workflow


async def _start(
    stub: engine_pb2_grpc.EngineServiceAsyncStub,
    workflow_id: str,
    metadata: Metadata,
    **fields: Any,
) -> engine_pb2.Execution:
    request = engine_pb2.StartExecutionRequest(workflow_id=workflow_id, **fields)
    return (await stub.StartExecution(request, metadata=metadata)).execution


async def _run(
    stub: engine_pb2_grpc.EngineServiceAsyncStub, workflow_id: str, metadata: Metadata
) -> engine_pb2.Execution:
    execution = await _start(stub, workflow_id, metadata)
    watch = stub.WatchExecution(
        engine_pb2.WatchExecutionRequest(execution_id=execution.id), metadata=metadata
    )
    await bounded(_drain(watch))
    request = engine_pb2.GetExecutionRequest(execution_id=execution.id)
    return (await stub.GetExecution(request, metadata=metadata)).execution


async def _drain(call: Any) -> None:
    while await call.read() is not EOF:
        pass


async def _running(
    stub: engine_pb2_grpc.EngineServiceAsyncStub, execution_id: str, metadata: Metadata
) -> engine_pb2.Execution:
    """The execution once its step runs (no more events come until the test ends)."""
    request = engine_pb2.GetExecutionRequest(execution_id=execution_id)

    async def poll() -> engine_pb2.Execution:
        while True:
            found = (await stub.GetExecution(request, metadata=metadata)).execution
            if found.steps and found.steps[0].status == events_pb2.StepStatus.Value(
                "STEP_STATUS_RUNNING"
            ):
                return found
            await asyncio.sleep(0.02)

    return await bounded(poll())


async def _events_until_done(call: Any, execution_id: str) -> list[events_pb2.ExecutionEvent]:
    async def read() -> list[events_pb2.ExecutionEvent]:
        seen: list[events_pb2.ExecutionEvent] = []
        while True:
            message = await call.read()
            assert message is not EOF
            seen.extend(message.batch.events)
            last = seen[-1]
            if last.execution_id == execution_id and last.execution_status == execution_status(
                "COMPLETED"
            ):
                return seen

    return await bounded(read())


async def _command_own_execution(
    stub: engine_pb2_grpc.EngineServiceAsyncStub, execution_id: str, metadata: Metadata
) -> None:
    """The caller that may see the execution pauses, resumes and cancels it."""
    paused = await stub.PauseExecution(
        engine_pb2.PauseExecutionRequest(execution_id=execution_id), metadata=metadata
    )
    assert paused.execution.status == execution_status("PAUSED")
    resumed = await stub.ResumeExecution(
        engine_pb2.ResumeExecutionRequest(execution_id=execution_id), metadata=metadata
    )
    assert resumed.execution.status == execution_status("RUNNING")
    cancelled = await stub.CancelExecution(
        engine_pb2.CancelExecutionRequest(execution_id=execution_id), metadata=metadata
    )
    assert cancelled.execution.status == execution_status("CANCELLED")

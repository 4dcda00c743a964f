"""Bearer tokens scoped to tenants, through Create/List/Update/DeleteSchedule.

A caller never creates schedules in, lists, changes or deletes those of a tenant its token
does not cover; another tenant's schedule is NOT_FOUND byte for byte like an id that does
not exist, and stays as it was.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.rpc import error_details_pb2
from stepstream.v1 import engine_pb2

from tests.integration.engine.helpers import chain, details_of, masked, rpc_error, struct
from tests.integration.engine.servers import ALL, BC, A, B, Metadata, Secured

# Ids of equal length, so errors about either serialize to the same number of bytes.
WORKFLOW, NO_WORKFLOW = "wf-alpha", "wf-omega"


def _by_id(secured: Secured) -> dict[str, Callable[[str, Metadata], Any]]:
    """Every RPC that names a schedule by id, each with a change it would make."""
    stub = secured.stub
    return {
        "UpdateSchedule paused": lambda i, m: stub.UpdateSchedule(
            engine_pb2.UpdateScheduleRequest(schedule_id=i, paused=True), metadata=m
        ),
        "UpdateSchedule cron and zone": lambda i, m: stub.UpdateSchedule(
            engine_pb2.UpdateScheduleRequest(
                schedule_id=i, cron="*/5 * * * *", time_zone="Asia/Tokyo"
            ),
            metadata=m,
        ),
        "UpdateSchedule a bad cron": lambda i, m: stub.UpdateSchedule(
            engine_pb2.UpdateScheduleRequest(schedule_id=i, cron="not a cron"), metadata=m
        ),
        "UpdateSchedule inputs": lambda i, m: stub.UpdateSchedule(
            engine_pb2.UpdateScheduleRequest(schedule_id=i, inputs=struct({"n": 1})),
            metadata=m,
        ),
        "UpdateSchedule policies": lambda i, m: stub.UpdateSchedule(
            engine_pb2.UpdateScheduleRequest(
                schedule_id=i,
                overlap_policy=engine_pb2.OVERLAP_POLICY_ALLOW,
                missed_run_policy=engine_pb2.MISSED_RUN_POLICY_RUN_ONCE,
            ),
            metadata=m,
        ),
        "DeleteSchedule": lambda i, m: stub.DeleteSchedule(
            engine_pb2.DeleteScheduleRequest(schedule_id=i), metadata=m
        ),
    }


async def test_naming_a_foreign_tenant_is_permission_denied(secured: Secured) -> None:
    stub = secured.stub
    await _register(secured, WORKFLOW, A)
    calls: list[Awaitable[Any]] = [
        stub.CreateSchedule(_create(WORKFLOW, tenant="tenant-a"), metadata=B),
        stub.CreateSchedule(_create(WORKFLOW, tenant="tenant-a"), metadata=BC),
        stub.ListSchedules(engine_pb2.ListSchedulesRequest(tenant="tenant-a"), metadata=B),
        stub.ListSchedules(engine_pb2.ListSchedulesRequest(tenant="tenant-a"), metadata=BC),
        stub.CreateSchedule(_create(WORKFLOW, tenant="tenant-b"), metadata=A),
        # A token of several tenants falls back to "default", which it does not cover.
        stub.CreateSchedule(_create(WORKFLOW), metadata=BC),
        stub.ListSchedules(engine_pb2.ListSchedulesRequest(), metadata=BC),
    ]
    for call in calls:
        error = await rpc_error(call)
        assert error.code() is grpc.StatusCode.PERMISSION_DENIED, error
        (info,) = details_of(error, error_details_pb2.ErrorInfo)
        assert info.reason == "TENANT_NOT_ALLOWED"
        assert info.metadata["tenant"] in {"tenant-a", "tenant-b", "default"}
    assert await _listed(secured, A) == [], "nothing was created in A"
    assert await _listed(secured, BC, tenant="tenant-b") == [], "nor in B"


async def test_another_tenants_schedules_are_invisible(secured: Secured) -> None:
    stub = secured.stub
    await _register(secured, WORKFLOW, A)
    mine = await _schedule(secured, A)
    assert mine.tenant == "tenant-a", "an empty tenant is the token's only tenant"
    assert await _listed(secured, B) == []
    assert await _listed(secured, B, workflow_id=WORKFLOW) == []
    for tenant in ("tenant-b", "tenant-c"):
        assert await _listed(secured, BC, tenant=tenant) == []
    # Scheduling A's workflow from B is refused exactly as for a workflow that does not exist.
    hidden, absent = [
        await rpc_error(stub.CreateSchedule(_create(name), metadata=B))
        for name in (WORKFLOW, NO_WORKFLOW)
    ]
    assert hidden.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert masked(hidden, WORKFLOW) == masked(absent, NO_WORKFLOW)
    await _register(secured, WORKFLOW, B)
    theirs = await _schedule(secured, B)
    assert theirs.tenant == "tenant-b"
    assert await _listed(secured, A) == [mine]
    assert await _listed(secured, B) == [theirs]
    assert await _listed(secured, BC, tenant="tenant-b") == [theirs]


async def test_another_tenants_schedule_is_not_found_like_a_missing_id(
    secured: Secured,
) -> None:
    await _register(secured, WORKFLOW, A)
    mine = await _schedule(secured, A)
    missing = str(uuid.uuid4())
    assert len(missing) == len(mine.id)
    for caller in (B, BC):
        for name, call in _by_id(secured).items():
            hidden = await rpc_error(call(mine.id, caller))
            absent = await rpc_error(call(missing, caller))
            assert hidden.code() is grpc.StatusCode.NOT_FOUND, (name, hidden)
            assert masked(hidden, mine.id) == masked(absent, missing), name
    assert await _listed(secured, A) == [mine], "nothing B tried changed A's schedule"
    paused = await secured.stub.UpdateSchedule(
        engine_pb2.UpdateScheduleRequest(schedule_id=mine.id, paused=True), metadata=A
    )
    assert paused.schedule.paused
    assert await _listed(secured, A) == [paused.schedule]
    await secured.stub.DeleteSchedule(
        engine_pb2.DeleteScheduleRequest(schedule_id=mine.id), metadata=A
    )
    assert await _listed(secured, A) == []


async def test_a_token_for_every_tenant_reaches_schedules_of_each(secured: Secured) -> None:
    stub = secured.stub
    for caller in (A, B):
        await _register(secured, WORKFLOW, caller)
    in_a = await _schedule(secured, A)
    in_b = await _schedule(secured, B)
    assert await _listed(secured, ALL, tenant="tenant-a") == [in_a]
    assert await _listed(secured, ALL, tenant="tenant-b") == [in_b]
    assert await _listed(secured, ALL) == [], "an empty tenant is 'default' for a * token"
    made = await stub.CreateSchedule(_create(WORKFLOW, tenant="tenant-b"), metadata=ALL)
    assert made.schedule.tenant == "tenant-b"
    paused = await stub.UpdateSchedule(
        engine_pb2.UpdateScheduleRequest(schedule_id=in_a.id, paused=True), metadata=ALL
    )
    assert (paused.schedule.tenant, paused.schedule.paused) == ("tenant-a", True)
    await stub.DeleteSchedule(engine_pb2.DeleteScheduleRequest(schedule_id=in_b.id), metadata=ALL)
    assert await _listed(secured, A) == [paused.schedule]
    assert await _listed(secured, B) == [made.schedule]


# ---- helpers -------------------------------------------------------------------------


def _create(workflow_id: str, tenant: str = "") -> engine_pb2.CreateScheduleRequest:
    return engine_pb2.CreateScheduleRequest(
        schedule=engine_pb2.Schedule(workflow_id=workflow_id, tenant=tenant, cron="0 9 * * *")
    )


async def _register(secured: Secured, workflow_id: str, metadata: Metadata) -> None:
    request = engine_pb2.RegisterWorkflowRequest(definition=chain(workflow_id, "noop"))
    await secured.stub.RegisterWorkflow(request, metadata=metadata)


async def _schedule(secured: Secured, metadata: Metadata) -> engine_pb2.Schedule:
    """A schedule of WORKFLOW in the token's only tenant."""
    response = await secured.stub.CreateSchedule(_create(WORKFLOW), metadata=metadata)
    return response.schedule


async def _listed(secured: Secured, metadata: Metadata, **fields: Any) -> list[engine_pb2.Schedule]:
    request = engine_pb2.ListSchedulesRequest(**fields)
    return list((await secured.stub.ListSchedules(request, metadata=metadata)).schedules)

"""Create/List/Update/DeleteSchedule through a real server, on SQLite and Postgres."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import grpc
import pytest
from google.protobuf import json_format
from stepstream.v1 import engine_pb2

from engine_service.core.scheduler import Scheduler
from tests.integration.engine.conftest import Harness
from tests.integration.engine.helpers import bad_fields, chain, register, rpc_error, struct
from tests.unit.engine.schedule_helpers import FakeClock

SKIP = engine_pb2.OVERLAP_POLICY_SKIP
ALLOW = engine_pb2.OVERLAP_POLICY_ALLOW
CANCEL_PREVIOUS = engine_pb2.OVERLAP_POLICY_CANCEL_PREVIOUS
RUN_ONCE = engine_pb2.MISSED_RUN_POLICY_RUN_ONCE
ZONE_PARIS = ZoneInfo("Europe/Paris")
# Numbers the contract does not define (proto3 enums are open, so clients can send them).
UNDEFINED_OVERLAP = engine_pb2.OverlapPolicy.ValueType(42)
UNDEFINED_MISSED = engine_pb2.MissedRunPolicy.ValueType(42)


def schedule(**fields: Any) -> engine_pb2.Schedule:
    fields.setdefault("workflow_id", "w")
    fields.setdefault("cron", "0 9 * * *")
    return engine_pb2.Schedule(**fields)


async def create(harness: Harness, **fields: Any) -> engine_pb2.Schedule:
    request = engine_pb2.CreateScheduleRequest(schedule=schedule(**fields))
    return (await harness.stub.CreateSchedule(request)).schedule


async def update(harness: Harness, schedule_id: str, **fields: Any) -> engine_pb2.Schedule:
    request = engine_pb2.UpdateScheduleRequest(schedule_id=schedule_id, **fields)
    return (await harness.stub.UpdateSchedule(request)).schedule


@pytest.fixture
async def workflow(harness: Harness) -> None:
    await register(harness.stub, chain("w", "echo", echo={"n": "${inputs.n}"}))


@pytest.mark.usefixtures("workflow")
async def test_create_returns_the_schedule_with_its_id_and_next_run(harness: Harness) -> None:
    before = datetime.now(UTC)
    created = await create(
        harness,
        cron="30 8 * * 1-5",
        time_zone="Europe/Paris",
        inputs=struct({"n": 2}),
        overlap_policy=ALLOW,
        missed_run_policy=RUN_ONCE,
    )
    assert created.id
    assert (created.tenant, created.workflow_id, created.workflow_version) == ("default", "w", 0)
    assert (created.cron, created.time_zone) == ("30 8 * * 1-5", "Europe/Paris")
    assert json_format.MessageToDict(created.inputs) == {"n": 2}
    assert (created.overlap_policy, created.missed_run_policy) == (ALLOW, RUN_ONCE)
    assert not created.paused
    next_run = created.next_run_at.ToDatetime(tzinfo=UTC)
    assert before < next_run <= before + timedelta(days=4)
    assert next_run.astimezone(ZONE_PARIS).strftime("%H:%M") == "08:30"
    assert not created.HasField("last_run_at")
    assert created.created_at.ToDatetime(tzinfo=UTC) >= before - timedelta(seconds=1)


@pytest.mark.usefixtures("workflow")
async def test_unspecified_policies_default_to_skip(harness: Harness) -> None:
    created = await create(harness)
    assert created.overlap_policy == SKIP
    assert created.missed_run_policy == engine_pb2.MISSED_RUN_POLICY_SKIP


@pytest.mark.parametrize(
    ("request_fields", "fields"),
    [
        ({}, ["schedule"]),
        ({"schedule": schedule(id="mine")}, ["schedule.id"]),
        ({"schedule": schedule(workflow_id="")}, ["schedule.workflow_id"]),
        ({"schedule": schedule(workflow_id="nope")}, ["schedule.workflow_id"]),
        ({"schedule": schedule(workflow_version=9)}, ["schedule.workflow_version"]),
        ({"schedule": schedule(workflow_version=-1)}, ["schedule.workflow_version"]),
        ({"schedule": schedule(cron="0 9 * *")}, ["schedule.cron"]),
        ({"schedule": schedule(cron="0 25 * * *")}, ["schedule.cron"]),
        ({"schedule": schedule(time_zone="Europe/Atlantis")}, ["schedule.time_zone"]),
        ({"schedule": schedule(overlap_policy=99)}, ["schedule.overlap_policy"]),
        ({"schedule": schedule(missed_run_policy=7)}, ["schedule.missed_run_policy"]),
    ],
)
@pytest.mark.usefixtures("workflow")
async def test_create_bad_input(
    harness: Harness, request_fields: dict[str, Any], fields: list[str]
) -> None:
    request = engine_pb2.CreateScheduleRequest(**request_fields)
    assert bad_fields(await rpc_error(harness.stub.CreateSchedule(request))) == fields
    listed = await harness.stub.ListSchedules(engine_pb2.ListSchedulesRequest())
    assert list(listed.schedules) == []


async def test_create_checks_the_inputs_against_the_workflow(harness: Harness) -> None:
    typed: dict[str, Any] = {
        "type": "object",
        "properties": {"n": {"type": "integer"}},
        "required": ["n"],
    }
    message = chain("typed", "noop")
    message.input_schema.update(typed)
    await register(harness.stub, message)
    error = await rpc_error(
        harness.stub.CreateSchedule(
            engine_pb2.CreateScheduleRequest(
                schedule=schedule(workflow_id="typed", inputs=struct({"n": "x"}))
            )
        )
    )
    assert bad_fields(error) == ["schedule.inputs.n"]


@pytest.mark.usefixtures("workflow")
async def test_list_is_per_tenant_filtered_and_paged(harness: Harness) -> None:
    await register(harness.stub, chain("v", "noop"))
    ids = [(await create(harness)).id for _ in range(3)]
    other_workflow = await create(harness, workflow_id="v")
    first = await harness.stub.ListSchedules(
        engine_pb2.ListSchedulesRequest(workflow_id="w", page_size=2)
    )
    rest = await harness.stub.ListSchedules(
        engine_pb2.ListSchedulesRequest(workflow_id="w", page_token=first.next_page_token)
    )
    assert [s.id for s in [*first.schedules, *rest.schedules]] == ids
    assert rest.next_page_token == ""
    every = await harness.stub.ListSchedules(engine_pb2.ListSchedulesRequest())
    assert {s.id for s in every.schedules} == {*ids, other_workflow.id}
    elsewhere = await harness.stub.ListSchedules(engine_pb2.ListSchedulesRequest(tenant="t2"))
    assert list(elsewhere.schedules) == []


async def test_list_bad_input(harness: Harness) -> None:
    for request, field in (
        (engine_pb2.ListSchedulesRequest(page_size=-1), "page_size"),
        (engine_pb2.ListSchedulesRequest(page_token="forged"), "page_token"),
    ):
        assert bad_fields(await rpc_error(harness.stub.ListSchedules(request))) == [field]


@pytest.mark.usefixtures("workflow")
async def test_update_changes_only_the_fields_that_are_set(harness: Harness) -> None:
    created = await create(harness, inputs=struct({"n": 1}))
    policy = await update(harness, created.id, overlap_policy=CANCEL_PREVIOUS)
    assert policy.overlap_policy == CANCEL_PREVIOUS
    assert (policy.cron, policy.next_run_at) == (created.cron, created.next_run_at)
    assert json_format.MessageToDict(policy.inputs) == {"n": 1}
    moved = await update(
        harness, created.id, cron="0 10 * * *", time_zone="Asia/Tokyo", inputs=struct({"n": 5})
    )
    assert (moved.cron, moved.time_zone, moved.overlap_policy) == (
        "0 10 * * *",
        "Asia/Tokyo",
        CANCEL_PREVIOUS,
    )
    assert json_format.MessageToDict(moved.inputs) == {"n": 5}
    assert moved.next_run_at.ToDatetime(tzinfo=UTC).minute == 0
    assert moved.next_run_at.ToDatetime(tzinfo=UTC).hour == 1  # 10:00 in Tokyo
    missed = await update(harness, created.id, missed_run_policy=RUN_ONCE)
    assert missed.missed_run_policy == RUN_ONCE
    assert missed.overlap_policy == CANCEL_PREVIOUS


@pytest.mark.usefixtures("workflow")
async def test_pause_and_unpause(harness: Harness) -> None:
    created = await create(harness, cron="* * * * *")
    paused = await update(harness, created.id, paused=True)
    assert paused.paused
    assert not paused.HasField("next_run_at")
    still = await update(harness, created.id, overlap_policy=ALLOW)
    assert still.paused
    resumed = await update(harness, created.id, paused=False)
    assert not resumed.paused
    assert resumed.next_run_at.ToDatetime(tzinfo=UTC) > datetime.now(UTC) - timedelta(seconds=1)
    listed = await harness.stub.ListSchedules(engine_pb2.ListSchedulesRequest())
    assert [s.paused for s in listed.schedules] == [False]


@pytest.mark.usefixtures("workflow")
async def test_update_bad_input(harness: Harness) -> None:
    created = await create(harness)
    for request, fields in (
        (engine_pb2.UpdateScheduleRequest(paused=True), ["schedule_id"]),
        (engine_pb2.UpdateScheduleRequest(schedule_id=created.id, cron="x"), ["schedule.cron"]),
        (
            engine_pb2.UpdateScheduleRequest(schedule_id=created.id, time_zone="Nowhere/Land"),
            ["schedule.time_zone"],
        ),
        (
            engine_pb2.UpdateScheduleRequest(
                schedule_id=created.id, overlap_policy=UNDEFINED_OVERLAP
            ),
            ["overlap_policy"],
        ),
        (
            engine_pb2.UpdateScheduleRequest(
                schedule_id=created.id, missed_run_policy=UNDEFINED_MISSED
            ),
            ["missed_run_policy"],
        ),
    ):
        assert bad_fields(await rpc_error(harness.stub.UpdateSchedule(request))) == fields
    unknown = engine_pb2.UpdateScheduleRequest(schedule_id="no-such", paused=True)
    assert (await rpc_error(harness.stub.UpdateSchedule(unknown))).code() is (
        grpc.StatusCode.NOT_FOUND
    )
    listed = await harness.stub.ListSchedules(engine_pb2.ListSchedulesRequest())
    assert list(listed.schedules) == [created]


@pytest.mark.usefixtures("workflow")
async def test_delete(harness: Harness) -> None:
    created = await create(harness)
    await harness.stub.DeleteSchedule(engine_pb2.DeleteScheduleRequest(schedule_id=created.id))
    listed = await harness.stub.ListSchedules(engine_pb2.ListSchedulesRequest())
    assert list(listed.schedules) == []
    again = engine_pb2.DeleteScheduleRequest(schedule_id=created.id)
    assert (await rpc_error(harness.stub.DeleteSchedule(again))).code() is (
        grpc.StatusCode.NOT_FOUND
    )
    empty = engine_pb2.DeleteScheduleRequest()
    assert bad_fields(await rpc_error(harness.stub.DeleteSchedule(empty))) == ["schedule_id"]


@pytest.mark.usefixtures("workflow")
async def test_a_created_schedule_starts_its_run_when_due(harness: Harness) -> None:
    created = await create(harness, cron="*/5 * * * *", inputs=struct({"n": 4}))
    due = created.next_run_at.ToDatetime(tzinfo=UTC)
    scheduler = Scheduler(harness.engine, clock=FakeClock(due + timedelta(seconds=1)))
    (started,) = await scheduler.tick()
    final = await harness.engine.wait_for(started.id)
    response = await harness.stub.GetExecution(
        engine_pb2.GetExecutionRequest(execution_id=final.id)
    )
    assert response.execution.schedule_id == created.id
    assert json_format.MessageToDict(response.execution.outputs) == {"s0": {"n": 4}}
    listed = await harness.stub.ListSchedules(engine_pb2.ListSchedulesRequest())
    (after,) = listed.schedules
    assert after.last_execution_id == started.id
    assert after.last_run_at.ToDatetime(tzinfo=UTC) == due
    assert after.next_run_at.ToDatetime(tzinfo=UTC) == due + timedelta(minutes=5)

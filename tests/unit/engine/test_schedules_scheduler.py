"""The scheduler on the in-memory store, driven tick by tick with a fake clock."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from engine_service.core.engine import Engine
from engine_service.core.errors import InvalidArgument, NotFound
from engine_service.core.memory_store import InMemoryStore
from engine_service.core.scheduler import Scheduler, SchedulerConfig, ScheduleService
from engine_service.core.schedules import (
    MissedRunPolicy,
    OverlapPolicy,
    ScheduleChanges,
    ScheduleQuery,
    run_key,
)
from engine_service.core.state import ExecutionStatus
from tests.unit.engine.schedule_helpers import (
    GATED,
    QUICK,
    TENANT,
    FakeClock,
    Gate,
    engine_on,
    executions_of,
    settle,
    spec,
)

START = datetime(2026, 5, 4, 8, 58, tzinfo=UTC)  # a Monday
NINE = datetime(2026, 5, 4, 9, 0, tzinfo=UTC)


class Rig:
    def __init__(self, store: InMemoryStore, clock: FakeClock, gate: Gate) -> None:
        self.store = store
        self.clock = clock
        self.gate = gate
        self.engines: list[Engine] = []
        self.engine = self.new_engine()
        self.service = ScheduleService(self.engine)
        self.scheduler = self.new_scheduler(self.engine)

    def new_engine(self) -> Engine:
        engine = engine_on(self.store, self.clock, self.gate)
        self.engines.append(engine)
        return engine

    def new_scheduler(self, engine: Engine, **config: float) -> Scheduler:
        return Scheduler(engine, SchedulerConfig(cancel_wait_seconds=5, **config))  # type: ignore[arg-type]


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    made = Rig(InMemoryStore(), FakeClock(START), Gate())
    for definition in (GATED, QUICK):
        await made.engine.register_workflow(definition, TENANT)
    yield made
    made.gate.opened.set()
    for engine in made.engines:
        await engine.stop()


# -- creating ------------------------------------------------------------------------------


async def test_create_computes_the_first_run_and_lists_by_tenant(rig: Rig) -> None:
    created = await rig.service.create(spec("quick", "0 9 * * *", inputs={"n": 1}))
    assert created.id
    assert created.created_at == START
    assert created.next_run_at == NINE
    listed = await rig.service.list(ScheduleQuery(tenant=TENANT))
    assert listed.items == (created,)
    assert (await rig.service.list(ScheduleQuery(tenant="other"))).items == ()


@pytest.mark.parametrize(
    ("fields", "path"),
    [
        ({"workflow_id": "missing"}, "schedule.workflow_id"),
        ({"workflow_version": 7}, "schedule.workflow_version"),
        ({"cron": "every day"}, "schedule.cron"),
        ({"time_zone": "Moon/Tranquility"}, "schedule.time_zone"),
    ],
)
async def test_create_refuses_bad_input_naming_the_field(
    rig: Rig, fields: dict[str, object], path: str
) -> None:
    bad = replace(spec("quick", "0 9 * * *"), **fields)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument) as caught:
        await rig.service.create(bad)
    assert [p.path for p in caught.value.problems] == [path]
    assert (await rig.service.list(ScheduleQuery())).items == ()


async def test_create_checks_inputs_against_the_workflow_schema(rig: Rig) -> None:
    typed = {
        "id": "typed",
        "input_schema": {"type": "object", "required": ["n"]},
        "steps": [{"id": "a", "action": "noop"}],
    }
    await rig.engine.register_workflow(typed, TENANT)
    with pytest.raises(InvalidArgument) as caught:
        await rig.service.create(spec("typed", "0 9 * * *", inputs={"m": 1}))
    assert [p.path for p in caught.value.problems] == ["schedule.inputs"]


async def test_another_tenant_cannot_see_update_or_delete_a_schedule(rig: Rig) -> None:
    created = await rig.service.create(spec("quick", "0 9 * * *"))
    with pytest.raises(NotFound):
        await rig.service.update(created.id, ScheduleChanges(paused=True), tenant="other")
    with pytest.raises(NotFound):
        await rig.service.delete(created.id, tenant="other")
    await rig.service.delete(created.id, tenant=TENANT)
    with pytest.raises(NotFound):
        await rig.service.get(created.id)


# -- due runs ------------------------------------------------------------------------------


async def test_a_due_run_starts_once_with_the_fixed_inputs(rig: Rig) -> None:
    created = await rig.service.create(spec("quick", "0 9 * * *", inputs={"n": 1}))
    assert await rig.scheduler.tick() == []
    rig.clock.set(NINE + timedelta(seconds=1))
    (started,) = await rig.scheduler.tick()
    assert started.schedule_id == created.id
    assert started.idempotency_key == run_key(created.id, NINE)
    assert started.inputs == {"n": 1}
    assert await rig.scheduler.tick() == []
    stored = await rig.service.get(created.id)
    assert stored.last_run_at == NINE
    assert stored.last_execution_id == started.id
    assert stored.next_run_at == NINE + timedelta(days=1)
    assert (await rig.engine.wait_for(started.id)).status is ExecutionStatus.COMPLETED


async def test_the_run_follows_the_schedules_time_zone(rig: Rig) -> None:
    await rig.service.create(spec("quick", "0 11 * * *", time_zone="Europe/Paris"))
    rig.clock.set(NINE - timedelta(seconds=1))  # 10:59:59 in Paris (CEST, UTC+2)
    assert await rig.scheduler.tick() == []
    rig.clock.set(NINE)
    assert len(await rig.scheduler.tick()) == 1


# -- overlap -------------------------------------------------------------------------------


async def _two_runs(rig: Rig, policy: OverlapPolicy) -> tuple[list[str], str]:
    """Tick at 09:00 and 09:01 of a gated every-minute schedule; ids of the runs."""
    created = await rig.service.create(spec("gated", "* * * * *", overlap_policy=policy))
    started = []
    for moment in (NINE, NINE + timedelta(minutes=1)):
        rig.clock.set(moment)
        started += [s.id for s in await rig.scheduler.tick()]
        await settle()
    return started, created.id


async def test_overlap_skip_starts_nothing_while_the_last_run_is_going(rig: Rig) -> None:
    started, schedule_id = await _two_runs(rig, OverlapPolicy.SKIP)
    assert len(started) == 1
    stored = await rig.service.get(schedule_id)
    assert stored.next_run_at == NINE + timedelta(minutes=2)
    assert stored.last_run_at == NINE
    rig.gate.opened.set()
    await rig.engine.wait_for(started[0])
    rig.clock.set(NINE + timedelta(minutes=2))
    assert len(await rig.scheduler.tick()) == 1


async def test_overlap_allow_runs_side_by_side(rig: Rig) -> None:
    started, schedule_id = await _two_runs(rig, OverlapPolicy.ALLOW)
    assert len(started) == 2
    states = await executions_of(rig.engine, schedule_id)
    assert [s.status for s in states] == [ExecutionStatus.RUNNING] * 2


async def test_overlap_cancel_previous_cancels_then_starts(rig: Rig) -> None:
    started, schedule_id = await _two_runs(rig, OverlapPolicy.CANCEL_PREVIOUS)
    assert len(started) == 2
    first, second = await executions_of(rig.engine, schedule_id)
    assert first.id == started[0]
    assert first.status is ExecutionStatus.CANCELLED
    assert second.status is ExecutionStatus.RUNNING


# -- missed runs ---------------------------------------------------------------------------


async def test_missed_runs_are_dropped_under_skip(rig: Rig) -> None:
    created = await rig.service.create(spec("quick", "*/5 * * * *"))
    rig.clock.set(NINE + timedelta(hours=2, minutes=2))  # 24 runs came and went
    assert await rig.scheduler.tick() == []
    stored = await rig.service.get(created.id)
    assert stored.next_run_at == NINE + timedelta(hours=2, minutes=5)
    assert stored.last_run_at is None
    assert await executions_of(rig.engine, created.id) == []


async def test_missed_runs_run_once_under_run_once(rig: Rig) -> None:
    created = await rig.service.create(
        spec("quick", "*/5 * * * *", missed_run_policy=MissedRunPolicy.RUN_ONCE)
    )
    rig.clock.set(NINE + timedelta(hours=2, minutes=2))
    (started,) = await rig.scheduler.tick()
    latest = NINE + timedelta(hours=2)
    assert started.idempotency_key == run_key(created.id, latest)
    assert await rig.scheduler.tick() == []
    stored = await rig.service.get(created.id)
    assert (stored.last_run_at, stored.next_run_at) == (latest, latest + timedelta(minutes=5))
    await rig.engine.wait_for(started.id)  # or the next run would overlap it
    rig.clock.set(latest + timedelta(minutes=5))
    assert len(await rig.scheduler.tick()) == 1


async def test_a_run_late_within_the_grace_is_not_missed(rig: Rig) -> None:
    await rig.service.create(spec("quick", "0 9 * * *"))
    rig.clock.set(NINE + timedelta(seconds=59))
    assert len(await rig.scheduler.tick()) == 1


# -- pause ---------------------------------------------------------------------------------


async def test_paused_schedules_do_not_run_and_unpausing_counts_from_now(rig: Rig) -> None:
    created = await rig.service.create(spec("quick", "*/5 * * * *"))
    paused = await rig.service.update(created.id, ScheduleChanges(paused=True))
    assert (paused.paused, paused.next_run_at) == (True, None)
    rig.clock.set(NINE + timedelta(minutes=30))
    assert await rig.scheduler.tick() == []
    resumed = await rig.service.update(created.id, ScheduleChanges(paused=False))
    assert resumed.next_run_at == NINE + timedelta(minutes=35)
    assert await rig.scheduler.tick() == []
    rig.clock.set(NINE + timedelta(minutes=35))
    assert len(await rig.scheduler.tick()) == 1


async def test_created_paused_has_no_next_run(rig: Rig) -> None:
    created = await rig.service.create(spec("quick", "*/5 * * * *", paused=True))
    assert created.next_run_at is None
    rig.clock.set(NINE)
    assert await rig.scheduler.tick() == []


# -- exactly once --------------------------------------------------------------------------


async def test_two_schedulers_ticking_together_start_each_run_once(rig: Rig) -> None:
    other = rig.new_scheduler(rig.new_engine())
    every_minute = spec("gated", "* * * * *", overlap_policy=OverlapPolicy.ALLOW)
    schedules = [await rig.service.create(every_minute) for _ in range(5)]
    for minute in range(3):
        rig.clock.set(NINE + timedelta(minutes=minute))
        await asyncio.gather(rig.scheduler.tick(), other.tick())
    for schedule in schedules:
        keys = [s.idempotency_key for s in await executions_of(rig.engine, schedule.id)]
        assert keys == [run_key(schedule.id, NINE + timedelta(minutes=m)) for m in range(3)]


class EveryoneClaims(InMemoryStore):
    """A store whose claims never refuse: what a double claim would look like."""

    async def claim_schedule_run(self, *args: object, **kwargs: object) -> bool:
        return True


async def test_even_a_double_claim_starts_the_run_once() -> None:
    clock, gate = FakeClock(START), Gate()
    store = EveryoneClaims()
    first, second = engine_on(store, clock, gate), engine_on(store, clock, gate)
    await first.register_workflow(QUICK, TENANT)
    created = await ScheduleService(first).create(spec("quick", "0 9 * * *"))
    clock.set(NINE)
    both = await asyncio.gather(Scheduler(first).tick(), Scheduler(second).tick())
    executions = await executions_of(first, created.id)
    assert len(executions) == 1
    assert {s.id for started in both for s in started} == {executions[0].id}
    await first.stop()
    await second.stop()


async def test_a_run_whose_claimer_died_is_taken_over_after_the_claim_expires(rig: Rig) -> None:
    created = await rig.service.create(spec("quick", "0 9 * * *"))
    rig.clock.set(NINE)
    # A replica claimed the run, started it and died before recording it.
    until = NINE + timedelta(seconds=60)
    assert await rig.store.claim_schedule_run(created.id, NINE, owner="dead", now=NINE, until=until)
    orphan, _ = await rig.engine.start_execution(
        TENANT, "quick", idempotency_key=run_key(created.id, NINE), schedule_id=created.id
    )
    assert await rig.scheduler.tick() == []  # the claim is still live
    rig.clock.set(until)
    (taken,) = await rig.scheduler.tick()
    assert taken.id == orphan.id  # the same run, not a second one
    assert [s.id for s in await executions_of(rig.engine, created.id)] == [orphan.id]
    stored = await rig.service.get(created.id)
    assert (stored.last_execution_id, stored.next_run_at) == (orphan.id, NINE + timedelta(days=1))


async def test_a_workflow_that_no_longer_accepts_the_inputs_skips_the_run(rig: Rig) -> None:
    created = await rig.service.create(spec("quick", "0 9 * * *"))
    strict = {**QUICK, "input_schema": {"type": "object", "required": ["n"]}}
    await rig.engine.register_workflow(strict, TENANT)  # version 2, the latest
    rig.clock.set(NINE)
    assert await rig.scheduler.tick() == []
    assert (await rig.service.get(created.id)).next_run_at == NINE + timedelta(days=1)


async def test_the_loop_ticks_until_stopped(rig: Rig) -> None:
    created = await rig.service.create(spec("quick", "0 9 * * *"))
    rig.clock.set(NINE)
    scheduler = rig.new_scheduler(rig.engine, tick_seconds=0.01)
    scheduler.start()
    for _ in range(500):
        if await executions_of(rig.engine, created.id):
            break
        await asyncio.sleep(0.01)
    await scheduler.stop()
    assert len(await executions_of(rig.engine, created.id)) == 1

"""The schedule half of the store port on every store, and exactly-once claiming across
two SQL stores (two engine replicas) on one SQLite file or Postgres database."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from engine_service.core.errors import NotFound
from engine_service.core.scheduler import Scheduler, ScheduleService
from engine_service.core.schedules import (
    MissedRunPolicy,
    OverlapPolicy,
    Schedule,
    ScheduleQuery,
    run_key,
)
from engine_service.core.store import ExecutionStore
from engine_service.storage import SqlExecutionStore, create_database_engine, open_store
from tests.unit.engine.schedule_helpers import (
    GATED,
    TENANT,
    FakeClock,
    Gate,
    engine_on,
    executions_of,
    spec,
)

NINE = datetime(2026, 5, 4, 9, 0, tzinfo=UTC)
LATER = NINE + timedelta(minutes=10)


def schedule(schedule_id: str, **fields: object) -> Schedule:
    base = Schedule(
        id=schedule_id,
        tenant=TENANT,
        workflow_id="w",
        cron="*/5 * * * *",
        created_at=NINE,
        time_zone="Europe/Paris",
        inputs={"n": 1, "nested": {"list": [1, "two"]}},
        overlap_policy=OverlapPolicy.CANCEL_PREVIOUS,
        missed_run_policy=MissedRunPolicy.RUN_ONCE,
        next_run_at=NINE + timedelta(minutes=5),
    )
    return replace(base, **fields)  # type: ignore[arg-type]


async def test_a_schedule_reads_back_equal(store: ExecutionStore) -> None:
    stored = await store.add_schedule(schedule("a"))
    assert await store.get_schedule("a") == stored == schedule("a")
    with pytest.raises(NotFound):
        await store.get_schedule("nope")


async def test_list_filters_by_tenant_and_workflow_and_pages_oldest_first(
    store: ExecutionStore,
) -> None:
    for index in range(5):
        await store.add_schedule(schedule(f"s{index}", created_at=NINE + timedelta(seconds=index)))
    await store.add_schedule(schedule("other-workflow", workflow_id="v"))
    await store.add_schedule(schedule("other-tenant", tenant="t2"))
    first = await store.list_schedules(ScheduleQuery(tenant=TENANT, workflow_id="w", page_size=3))
    assert [s.id for s in first.items] == ["s0", "s1", "s2"]
    rest = await store.list_schedules(
        ScheduleQuery(tenant=TENANT, workflow_id="w", page_token=first.next_page_token)
    )
    assert [s.id for s in rest.items] == ["s3", "s4"]
    assert rest.next_page_token == ""
    assert len((await store.list_schedules(ScheduleQuery(tenant=TENANT))).items) == 6


async def test_update_keeps_the_next_run_unless_rescheduling(store: ExecutionStore) -> None:
    await store.add_schedule(schedule("a"))
    kept = await store.update_schedule(
        schedule("a", cron="0 * * * *", paused=True, next_run_at=None), reschedule=False
    )
    assert (kept.cron, kept.paused, kept.next_run_at) == (
        "0 * * * *",
        True,
        NINE + timedelta(minutes=5),
    )
    moved = await store.update_schedule(schedule("a", next_run_at=LATER), reschedule=True)
    assert moved.next_run_at == LATER
    with pytest.raises(NotFound):
        await store.update_schedule(schedule("gone"), reschedule=True)


async def test_delete(store: ExecutionStore) -> None:
    await store.add_schedule(schedule("a"))
    await store.delete_schedule("a")
    with pytest.raises(NotFound):
        await store.delete_schedule("a")
    assert (await store.list_schedules(ScheduleQuery())).items == ()


async def test_due_claim_and_finish(store: ExecutionStore) -> None:
    due = NINE + timedelta(minutes=5)
    await store.add_schedule(schedule("a"))
    await store.add_schedule(schedule("paused", paused=True))
    await store.add_schedule(schedule("later", next_run_at=LATER + timedelta(minutes=5)))
    assert [s.id for s in await store.due_schedules(LATER, 10)] == ["a"]
    until = LATER + timedelta(minutes=1)
    assert await store.claim_schedule_run("a", due, owner="x", now=LATER, until=until)
    assert not await store.claim_schedule_run("a", due, owner="y", now=LATER, until=until)
    assert await store.due_schedules(LATER, 10) == []  # held by a live claim
    assert not await store.claim_schedule_run("paused", due, owner="y", now=LATER, until=until)
    assert not await store.finish_schedule_run(
        "a", due, owner="y", next_run_at=LATER, ran_at=due, execution_id="e"
    )
    assert await store.finish_schedule_run(
        "a", due, owner="x", next_run_at=LATER + timedelta(minutes=5), ran_at=due, execution_id="e"
    )
    finished = await store.get_schedule("a")
    assert (finished.next_run_at, finished.last_run_at, finished.last_execution_id) == (
        LATER + timedelta(minutes=5),
        due,
        "e",
    )
    # The run moved on: a late claimer of the old run gets nothing.
    assert not await store.claim_schedule_run("a", due, owner="y", now=LATER, until=until)


async def test_an_expired_claim_can_be_taken_over(store: ExecutionStore) -> None:
    due = NINE + timedelta(minutes=5)
    await store.add_schedule(schedule("a"))
    assert await store.claim_schedule_run("a", due, owner="x", now=due, until=LATER)
    assert [s.id for s in await store.due_schedules(LATER, 10)] == ["a"]
    assert await store.claim_schedule_run(
        "a", due, owner="y", now=LATER, until=LATER + timedelta(minutes=1)
    )
    assert not await store.finish_schedule_run("a", due, owner="x", next_run_at=LATER, ran_at=None)


async def test_finish_does_not_undo_a_reschedule_made_meanwhile(store: ExecutionStore) -> None:
    due = NINE + timedelta(minutes=5)
    await store.add_schedule(schedule("a"))
    assert await store.claim_schedule_run("a", due, owner="x", now=due, until=LATER)
    await store.update_schedule(
        schedule("a", next_run_at=LATER + timedelta(hours=1)), reschedule=True
    )
    assert await store.finish_schedule_run("a", due, owner="x", next_run_at=LATER, ran_at=None)
    assert (await store.get_schedule("a")).next_run_at == LATER + timedelta(hours=1)


# -- two replicas --------------------------------------------------------------------------


@pytest.mark.parametrize("rounds", [4])
async def test_two_replicas_start_each_scheduled_run_exactly_once(
    database_url: str, rounds: int
) -> None:
    """Two SQL stores on one database, each with its engine and scheduler, ticking at the
    same moments: every run of every schedule is one execution."""
    clock, gate = FakeClock(NINE - timedelta(seconds=30)), Gate()
    # The second store bypasses open_store, whose file lock keeps a second engine *process*
    # off a SQLite file; what is under test here is the claim in the database.
    stores = [
        await open_store(database_url),
        SqlExecutionStore(create_database_engine(database_url)),
    ]
    engines = [engine_on(s, clock, gate) for s in stores]
    try:
        await engines[0].register_workflow(GATED, TENANT)
        service = ScheduleService(engines[0])
        every_minute = spec("gated", "* * * * *", overlap_policy=OverlapPolicy.ALLOW)
        created = [await service.create(every_minute) for _ in range(6)]
        schedulers = [Scheduler(e) for e in engines]
        started = 0
        for minute in range(rounds):
            clock.set(NINE + timedelta(minutes=minute, seconds=1))
            results = await asyncio.gather(*(s.tick() for s in schedulers))
            started += sum(len(r) for r in results)
        assert started == len(created) * rounds
        for each in created:
            keys = [s.idempotency_key for s in await executions_of(engines[0], each.id)]
            assert sorted(keys) == [
                run_key(each.id, NINE + timedelta(minutes=m)) for m in range(rounds)
            ]
    finally:
        gate.opened.set()
        for engine in engines:
            await engine.stop()
        for store in stores:
            await store.close()

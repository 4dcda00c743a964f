"""Leases: claiming executions whose lease expired, renewing ours, abandoning lost ones."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from engine_service.core.engine import Engine
from engine_service.core.leases import LeaseKeeper, LeaseSettings
from engine_service.core.memory_store import InMemoryStore
from engine_service.core.state import ExecutionStatus, StepStatus
from engine_service.core.store import Lease
from tests.unit.engine.scheduler_harness import TENANT, FailingStore, new_engine

pytestmark = pytest.mark.looptime

SLOW = {
    "id": "slow",
    "steps": [
        {"id": "a", "action": "delay", "parameters": {"seconds": 10}},
        {"id": "b", "action": "noop", "depends_on": ["a"]},
    ],
}


async def start_leased(engine: Engine, owner: str, seconds: float = 5.0) -> str:
    """Starts `slow` on `engine` as if `owner` had created it (leased to it)."""
    engine.lease_owner, engine.lease_seconds = owner, seconds
    await engine.register_workflow(SLOW, TENANT)
    state, _ = await engine.start_execution(TENANT, "slow")
    return state.id


async def test_an_expired_lease_is_claimed_and_the_execution_continues() -> None:
    store = InMemoryStore()
    dead = new_engine(store)
    execution_id = await start_leased(dead, "dead", seconds=5)
    await asyncio.sleep(1)
    await dead.stop()  # its process "dies": the lease is left to expire

    survivor = new_engine(store)
    claims: list[int] = []
    claimed = asyncio.Event()

    def on_claim(count: int) -> None:
        claims.append(count)
        claimed.set()

    keeper = LeaseKeeper(survivor, LeaseSettings(owner="survivor", interval=1.0), on_claim=on_claim)
    try:
        assert await keeper.start() == 0  # the lease still holds
        await asyncio.wait_for(claimed.wait(), 60)
        final = await survivor.wait_for(execution_id)
    finally:
        await keeper.stop()
        await survivor.stop()
    assert final.status is ExecutionStatus.COMPLETED
    assert claims == [1]
    assert final.steps["a"].attempt == 2  # the interrupted attempt ran again


async def test_take_over_on_start_claims_even_unexpired_leases() -> None:
    store = InMemoryStore()
    old = new_engine(store)
    execution_id = await start_leased(old, "previous-incarnation", seconds=3600)
    await old.stop()
    restarted = new_engine(store)
    keeper = LeaseKeeper(restarted, LeaseSettings(owner="now", take_over_on_start=True))
    try:
        assert await keeper.start() == 1
        final = await restarted.wait_for(execution_id)
    finally:
        await keeper.stop()
        await restarted.stop()
    assert final.status is ExecutionStatus.COMPLETED


async def test_an_execution_whose_lease_was_taken_is_abandoned_without_writing() -> None:
    store = InMemoryStore()
    engine = new_engine(store)
    keeper = LeaseKeeper(engine, LeaseSettings(owner="me", duration=5, interval=1))
    await keeper.start()
    try:
        execution_id = await start_leased(engine, "me")
        assert engine.lease_owner == "me"
        await asyncio.sleep(1)
        before = len(await store.read_events(execution_id))
        # Another replica took it over (as after a long pause of this process).
        other = Lease("other", engine.clock.now() + timedelta(hours=1))
        taken = await store.claim_executions(
            other, now=engine.clock.now(), limit=10, take_over=True
        )
        assert [s.id for s in taken] == [execution_id]
        assert await keeper.renew() == 1
        assert execution_id not in engine.driven_executions
        await asyncio.sleep(30)  # long past when step `a` would have finished
        events = await store.read_events(execution_id)
    finally:
        await keeper.stop()
        await engine.stop()
    assert len(events) == before
    assert events[-1].step_status is StepStatus.RUNNING


async def test_renewal_keeps_leases_and_claims_skip_our_own() -> None:
    store = InMemoryStore()
    engine = new_engine(store)
    keeper = LeaseKeeper(engine, LeaseSettings(owner="me", duration=5, interval=1))
    await keeper.start()
    try:
        execution_id = await start_leased(engine, "me", seconds=5)
        await asyncio.sleep(8)  # past the first lease: only renewal keeps it ours
        assert execution_id in engine.driven_executions
        assert await keeper.renew() == 0
        assert await keeper.claim() == 0  # ours already: not claimed again
        final = await engine.wait_for(execution_id)
    finally:
        await keeper.stop()
        await engine.stop()
    assert final.status is ExecutionStatus.COMPLETED
    assert final.steps["a"].attempt == 1


async def test_a_run_a_failed_write_stopped_is_driven_again_at_the_next_lease_round() -> None:
    store = FailingStore("a", StepStatus.COMPLETED)  # the first write of a's COMPLETED fails
    engine = new_engine(store)
    keeper = LeaseKeeper(engine, LeaseSettings(owner="me", duration=30, interval=1))
    await keeper.start()
    try:
        execution_id = await start_leased(engine, "me", seconds=30)
        for _ in range(60):
            state = await store.get_execution(execution_id)
            if state.status.is_terminal:
                break
            await asyncio.sleep(1)
    finally:
        await keeper.stop()
        await engine.stop()
    assert state.status is ExecutionStatus.COMPLETED
    assert store.failed
    # a ran 10 s, its COMPLETED was lost, the next round (1 s) took the run up again and a
    # ran once more: well before the 30 s lease would have expired.
    assert state.steps["a"].attempt == 2
    assert asyncio.get_running_loop().time() <= 22.0

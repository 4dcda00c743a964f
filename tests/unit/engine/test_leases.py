"""Leases: claiming executions whose lease expired, renewing ours, abandoning lost ones."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any, cast

import pytest

from engine_service.core.engine import Engine
from engine_service.core.errors import StorageError
from engine_service.core.leases import LeaseKeeper, LeaseSettings
from engine_service.core.memory_store import InMemoryStore
from engine_service.core.state import ExecutionState, ExecutionStatus, StepStatus
from engine_service.core.store import ExecutionStore, Lease
from tests.unit.engine.scheduler_harness import (
    TENANT,
    FailingStore,
    Probe,
    new_engine,
    registry_with,
    start,
    statuses,
)

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
        assert [c.state.id for c in taken] == [execution_id]
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


class Partitioned:
    """One process's view of a shared store: every call fails while `down`, as when the
    database cannot be reached from that process alone."""

    def __init__(self, store: ExecutionStore) -> None:
        self._store = store
        self.down = False

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._store, name)
        if not callable(target):
            return target

        def call(*args: Any, **kwargs: Any) -> Any:
            if self.down:
                return _failing()
            return target(*args, **kwargs)

        return call


async def _failing() -> None:
    raise StorageError("the database is unreachable from this process")


class RenewalsFail(InMemoryStore):
    """A shared store whose lease renewals fail for the owners in `cut_off` (appends and
    everything else still work)."""

    def __init__(self) -> None:
        super().__init__()
        self.cut_off: set[str] = set()

    async def renew_leases(self, lease: Lease, held: Mapping[str, int]) -> set[str]:
        if lease.owner in self.cut_off:
            raise StorageError("renewal timed out")
        return await super().renew_leases(lease, held)


async def _keepers(*pairs: tuple[Engine, str]) -> list[LeaseKeeper]:
    keepers = [LeaseKeeper(e, LeaseSettings(owner=o, duration=30, interval=5)) for e, o in pairs]
    for keeper in keepers:
        await keeper.start()
    return keepers


async def _stop(keepers: list[LeaseKeeper], *engines: Engine) -> None:
    for keeper in keepers:
        await keeper.stop()
    for engine in engines:
        await engine.stop()


async def test_a_process_cut_off_from_the_store_gives_up_its_runs_before_another_claims_them() -> (
    None
):
    shared = InMemoryStore()
    probe = Probe()
    view = Partitioned(shared)
    a = new_engine(cast(ExecutionStore, view), actions=registry_with(probe))
    b = new_engine(shared, actions=registry_with(probe))
    keepers = await _keepers((a, "A"), (b, "B"))
    try:
        long = {
            "id": "wf",
            "steps": [{"id": "long", "action": "probe", "parameters": {"seconds": 120}}],
        }
        state = await start(a, long)
        await asyncio.sleep(12)
        view.down = True  # A's last renewal was at t=10: its lease expires at t=40
        await asyncio.sleep(60 - 12)
        assert a.driven_executions == []
        assert b.driven_executions == [state.id]
        view.down = False
        final = await b.wait_for(state.id)
    finally:
        await _stop(keepers, a, b)
    assert probe.peak == 1  # never two attempts of `long` at once
    assert final.status is ExecutionStatus.COMPLETED
    assert probe.calls == [("long", 1), ("long", 2)]


async def test_no_attempt_starts_once_the_lease_is_within_the_margin_of_expiring() -> None:
    store = RenewalsFail()
    probe_a, probe_b = Probe(), Probe()
    a = new_engine(store, actions=registry_with(probe_a))
    b = new_engine(store, actions=registry_with(probe_b))
    keepers = await _keepers((a, "A"), (b, "B"))
    chain = {
        "id": "chain",
        "steps": [
            {"id": "first", "action": "probe", "parameters": {"seconds": 37}},
            {"id": "second", "action": "probe", "depends_on": ["first"]},
        ],
    }
    try:
        state = await start(a, chain)
        await asyncio.sleep(11)
        store.cut_off.add("A")  # renewed last at t=10: expires at 40, no start from 35 on
        final = await _ended(store, state.id)
    finally:
        await _stop(keepers, a, b)
    assert final.status is ExecutionStatus.COMPLETED
    # `first` ended at t=37, inside the margin: A committed it but started nothing more,
    # so `second` ran once, on B, and the run never had a lost attempt.
    assert probe_a.calls == [("first", 1)]
    assert probe_b.calls == [("second", 1)]
    events = await store.read_events(state.id)
    assert statuses(events, "second") == [StepStatus.RUNNING, StepStatus.COMPLETED]


async def _ended(store: ExecutionStore, execution_id: str) -> ExecutionState:
    for _ in range(120):
        state = await store.get_execution(execution_id)
        if state.status.is_terminal:
            return state
        await asyncio.sleep(1)
    raise AssertionError(f"execution {execution_id} never ended")


async def test_a_stale_holder_commits_nothing_once_the_same_owner_claimed_again() -> None:
    """A paused runner of owner `me`, and `me` restarted meanwhile (same name, new
    process) claims the run: the old runner's write, though at the right sequence, is
    refused, and it stops driving."""
    store = InMemoryStore()
    probe = Probe()
    gate = probe.gate("a")
    old = new_engine(store, actions=registry_with(probe))
    old.lease_owner, old.lease_seconds = "me", 30
    state = await start(old, {"id": "wf", "steps": [{"id": "a", "action": "probe"}]})
    await _wait(lambda: probe.running == 1)
    before = await store.read_events(state.id)
    restarted = Lease("me", old.clock.now() + timedelta(seconds=30))
    claims = await store.claim_executions(restarted, now=old.clock.now(), limit=5, take_over=True)
    assert [c.epoch for c in claims] == [2]
    gate.set()  # the old runner's attempt ends: its COMPLETED must not land
    await _wait(lambda: state.id not in old.driven_executions)
    await old.stop()
    assert await store.read_events(state.id) == before


async def _wait(condition: Callable[[], bool]) -> None:
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the condition never held")

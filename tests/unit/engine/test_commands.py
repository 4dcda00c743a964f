"""Cancel, pause and resume sent to an engine that does not drive the execution: it
stores a command, and the engine that drives the run applies it (here on its lease
rounds; on Postgres a notice wakes it at once)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import pytest

from engine_service.core.commands import CommandNotTaken
from engine_service.core.engine import EngineConfig
from engine_service.core.errors import IllegalTransition
from engine_service.core.leases import LeaseKeeper, LeaseSettings
from engine_service.core.memory_store import InMemoryStore
from engine_service.core.state import ExecutionStatus, StepStatus
from tests.unit.engine.scheduler_harness import TENANT, new_engine

pytestmark = pytest.mark.looptime

ES = ExecutionStatus
SS = StepStatus
SHARED = EngineConfig(commands_across_processes=True, command_timeout=30.0)
SLOW = {
    "id": "slow",
    "steps": [
        {"id": "a", "action": "delay", "parameters": {"seconds": 100}},
        {"id": "b", "action": "noop", "depends_on": ["a"]},
    ],
}


class Replicas:
    """Two engines on one store: `driver` holds the leases, `other` only takes requests."""

    def __init__(self) -> None:
        self.store = InMemoryStore()
        self.driver = new_engine(self.store, config=SHARED)
        self.other = new_engine(self.store, config=SHARED)
        self.keeper = LeaseKeeper(self.driver, LeaseSettings(owner="driver", interval=1.0))

    async def start(self, definition: Mapping[str, Any] = SLOW) -> str:
        await self.driver.register_workflow(definition, TENANT)
        state, _ = await self.driver.start_execution(TENANT, str(definition["id"]))
        return state.id


@contextlib.asynccontextmanager
async def running() -> AsyncIterator[Replicas]:
    # Not an async fixture: the keeper's task must run on the test's (virtual-time) loop.
    made = Replicas()
    await made.keeper.start()
    try:
        yield made
    finally:
        await made.keeper.stop()
        await made.driver.stop()
        await made.other.stop()


async def test_a_cancel_sent_to_another_engine_ends_the_run() -> None:
    async with running() as replicas:
        execution_id = await replicas.start()
        await asyncio.sleep(5)
        final = await replicas.other.cancel_execution(execution_id, reason="not needed")
        assert final.status is ES.CANCELLED
        assert final.steps["a"].status is SS.CANCELLED
        # Applied on the driver's next lease round (1 s), not after the 100 s step.
        assert asyncio.get_running_loop().time() <= 7.0
        assert await replicas.store.pending_commands() == []


async def test_pause_and_resume_through_another_engine() -> None:
    async with running() as replicas:
        execution_id = await replicas.start()
        await asyncio.sleep(1)
        paused = await replicas.other.pause_execution(execution_id)
        assert paused.status is ES.PAUSED
        resumed = await replicas.other.resume_execution(execution_id)
        assert resumed.status is ES.RUNNING
        final = await replicas.driver.wait_for(execution_id)
        assert final.status is ES.COMPLETED


async def test_a_command_the_run_cannot_take_is_refused_with_its_status() -> None:
    async with running() as replicas:
        execution_id = await replicas.start()
        await asyncio.sleep(1)
        with pytest.raises(IllegalTransition) as refused:
            await replicas.other.resume_execution(execution_id)
        assert refused.value.current == ES.RUNNING
        assert refused.value.requested == ES.RUNNING
        assert await replicas.store.pending_commands() == []


async def test_a_command_for_an_ended_run_is_refused_at_once() -> None:
    async with running() as replicas:
        execution_id = await replicas.start(
            {"id": "quick", "steps": [{"id": "a", "action": "noop"}]}
        )
        await replicas.driver.wait_for(execution_id)
        with pytest.raises(IllegalTransition):
            await replicas.other.cancel_execution(execution_id)
        assert await replicas.store.pending_commands() == []


class StoreThatTellsNoOne(InMemoryStore):
    """Like a store whose processes cannot be told of commands (no LISTEN/NOTIFY)."""

    def on_command(self, callback: Callable[[str], None]) -> None:
        pass


async def test_a_command_no_engine_takes_times_out_and_stays_pending() -> None:
    store = StoreThatTellsNoOne()
    driver = new_engine(store, config=SHARED)
    other = new_engine(
        store, config=EngineConfig(commands_across_processes=True, command_timeout=3)
    )
    await driver.register_workflow(SLOW, TENANT)
    state, _ = await driver.start_execution(TENANT, "slow")
    # No lease rounds and no notices: the driver never looks at its commands.
    with pytest.raises(CommandNotTaken, match="no engine process applied it within 3s"):
        await other.cancel_execution(state.id)
    assert [c.execution_id for c in await store.pending_commands()] == [state.id]
    # The next look applies it.
    assert await driver.apply_commands() == 1
    assert (await driver.wait_for(state.id)).status is ES.CANCELLED
    await driver.stop()


async def test_without_other_processes_a_run_not_driven_here_is_refused() -> None:
    store = InMemoryStore()
    driver = new_engine(store)
    other = new_engine(store)
    await driver.register_workflow(SLOW, TENANT)
    state, _ = await driver.start_execution(TENANT, "slow")
    with pytest.raises(IllegalTransition):
        await other.cancel_execution(state.id)
    assert await store.pending_commands() == []
    await driver.stop()

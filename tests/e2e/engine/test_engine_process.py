"""The engine as a process: `python -m engine_service`, SIGTERM mid-run, restart.

Nothing may be half-written: after the restart every execution's stored events replay to
its stored state, with gap-free sequences, and what watchers saw before the stop is a
prefix of what is stored.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from grpc import aio
from stepstream.v1 import engine_pb2, engine_pb2_grpc, workflow_pb2

from engine_service.core.state import ExecutionStatus, blank, replay
from engine_service.storage import open_store
from tests.e2e.engine.processes import GRACE_SECONDS, EngineProcess, launch
from tests.integration.engine.helpers import (
    bounded,
    chain,
    definition,
    execution_status,
    register,
    run_to_end,
    start,
    step_status,
)

pytestmark = pytest.mark.e2e


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[tuple[EngineProcess, Path]]:
    database = tmp_path / "engine.db"
    engine = await launch(f"sqlite+aiosqlite:///{database}", tmp_path / "engine.log")
    try:
        yield engine, database
    finally:
        if engine.process.returncode is None:
            engine.process.kill()
            await engine.process.wait()


async def test_sigterm_mid_run_then_restart_keeps_committed_state(
    running: tuple[EngineProcess, Path], tmp_path: Path
) -> None:
    first, database = running
    async with aio.insecure_channel(f"127.0.0.1:{first.port}") as channel:
        stub = engine_pb2_grpc.EngineServiceStub(channel)
        await register(stub, chain("quick", "noop", "echo"))
        await register(stub, _slow_fan_out())
        finished = await run_to_end(stub, "quick")
        slow = [await start(stub, "slow") for _ in range(3)]
        seen = {e.id: await _events_until_delays_run(stub, e.id) for e in slow}

    code, took = await first.stop()
    assert code == 0, first.log.read_text()
    assert took < GRACE_SECONDS + 5

    second = await launch(f"sqlite+aiosqlite:///{database}", tmp_path / "engine.log")
    try:
        async with aio.insecure_channel(f"127.0.0.1:{second.port}") as channel:
            stub = engine_pb2_grpc.EngineServiceStub(channel)
            done = await stub.GetExecution(engine_pb2.GetExecutionRequest(execution_id=finished.id))
            assert done.execution.status == execution_status("COMPLETED")
            assert done.execution.last_sequence == finished.last_sequence
            for execution in slow:
                state = (
                    await stub.GetExecution(
                        engine_pb2.GetExecutionRequest(execution_id=execution.id)
                    )
                ).execution
                assert state.status == execution_status("RUNNING")
                assert state.last_sequence >= len(seen[execution.id])
                history = await _replayed_ids(stub, execution.id, state.last_sequence)
                assert history[: len(seen[execution.id])] == seen[execution.id]
    finally:
        code, _ = await second.stop()
    assert code == 0, second.log.read_text()
    await _assert_nothing_half_written(database, {e.id for e in slow} | {finished.id})


def _slow_fan_out() -> workflow_pb2.WorkflowDefinition:
    steps: list[dict[str, Any]] = [{"id": "first", "action": "noop"}]
    steps += [
        {
            "id": f"wait{i}",
            "action": "delay",
            "parameters": {"seconds": 60},
            "depends_on": ["first"],
            # An attempt cut short by the stop counts as failed: a second one continues.
            "retry": {"max_attempts": 2, "initial_interval": "0.01s"},
        }
        for i in range(3)
    ]
    return definition({"id": "slow", "steps": steps})


async def _events_until_delays_run(
    stub: engine_pb2_grpc.EngineServiceAsyncStub, execution_id: str
) -> list[str]:
    """Event ids watched until all three delay steps are RUNNING."""
    seen: list[str] = []
    running: set[str] = set()
    call = stub.WatchExecution(engine_pb2.WatchExecutionRequest(execution_id=execution_id))

    async def read() -> None:
        async for response in call:
            for event in response.batch.events:
                seen.append(event.event_id)
                if event.step_status == step_status("RUNNING") and event.step_id.startswith("wait"):
                    running.add(event.step_id)
            if len(running) == 3:
                return

    await bounded(read())
    call.cancel()
    return seen


async def _replayed_ids(
    stub: engine_pb2_grpc.EngineServiceAsyncStub, execution_id: str, last_sequence: int
) -> list[str]:
    ids: list[str] = []
    sequences: list[int] = []
    call = stub.WatchExecution(engine_pb2.WatchExecutionRequest(execution_id=execution_id))

    async def read() -> None:
        async for response in call:
            for event in response.batch.events:
                ids.append(event.event_id)
                sequences.append(event.sequence)
            if sequences and sequences[-1] >= last_sequence:
                return

    await bounded(read())
    call.cancel()
    assert sequences == list(range(1, len(sequences) + 1))
    return ids


async def _assert_nothing_half_written(database: Path, execution_ids: set[str]) -> None:
    store = await open_store(f"sqlite+aiosqlite:///{database}", migrate=False)
    try:
        for execution_id in execution_ids:
            state = await store.get_execution(execution_id)
            events = await store.read_events(execution_id)
            assert [e.sequence for e in events] == list(range(1, state.last_sequence + 1))
            assert replay(blank(state), events) == state
            assert state.status in (ExecutionStatus.COMPLETED, ExecutionStatus.RUNNING)
    finally:
        await store.close()

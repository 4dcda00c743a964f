"""`serve()` stopping: it stops driving executions before it closes the store."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest
from pydantic import SecretStr

from engine_service.core.engine import Engine
from engine_service.core.state import StepStatus
from engine_service.main import serve
from engine_service.settings import EngineSettings
from engine_service.storage import SqlExecutionStore, create_database_engine, open_store

pytestmark = pytest.mark.timeout(60)

SLOW = {"id": "slow", "steps": [{"id": "wait", "action": "delay", "parameters": {"seconds": 600}}]}


async def _unfinished_run(database_url: str) -> str:
    """A run left RUNNING mid-step by an engine that stopped, for `serve` to take up."""
    store = await open_store(database_url)
    engine = Engine(store)
    try:
        await engine.register_workflow(SLOW, "default")
        state, _ = await engine.start_execution("default", "slow")
        for _ in range(500):
            if (await store.get_execution(state.id)).steps["wait"].status is StepStatus.RUNNING:
                break
            await asyncio.sleep(0.01)
    finally:
        await engine.stop()
        await store.close()
    return state.id


async def _reattempted(database_url: str, execution_id: str) -> bool:
    # Not `open_store`: the SQLite file is locked to the serving process.
    store = SqlExecutionStore(create_database_engine(database_url))
    try:
        step = (await store.get_execution(execution_id)).steps["wait"]
    finally:
        await store.close()
    return step.status is StepStatus.RUNNING and step.attempt == 2


def _runners(execution_id: str) -> list[asyncio.Task[object]]:
    name = f"execution:{execution_id}"
    return [t for t in asyncio.all_tasks() if t.get_name() == name and not t.done()]


async def test_serve_stops_its_runners_before_it_returns(tmp_path: Path) -> None:
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'engine.db'}"
    execution_id = await _unfinished_run(database_url)
    settings = EngineSettings(
        database_url=SecretStr(database_url),
        address="127.0.0.1:0",
        metrics_port=0,
        grace_period_seconds=0.1,
        instance_id="serve-test",
    )
    stop = asyncio.Event()
    serving = asyncio.create_task(serve(settings, stop=stop))
    for _ in range(1000):  # until the run is taken up and its step re-attempted
        if serving.done() or await _reattempted(database_url, execution_id):
            break
        await asyncio.sleep(0.01)
    assert _runners(execution_id), "serve never took the run up"
    stop.set()
    await serving
    assert _runners(execution_id) == []  # none left writing to a closed store
    store = await open_store(database_url)
    try:
        state = await store.get_execution(execution_id)
    finally:
        await store.close()
    assert not state.status.is_terminal  # stopped, not ended


async def test_a_start_that_fails_half_way_leaves_nothing_driving_executions(
    tmp_path: Path,
) -> None:
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'engine.db'}"
    execution_id = await _unfinished_run(database_url)
    with socket.socket() as taken:  # the metrics port is in use: serve fails after the claim
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        settings = EngineSettings(
            database_url=SecretStr(database_url),
            address="127.0.0.1:0",
            metrics_port=taken.getsockname()[1],
            instance_id="serve-test",
        )
        with pytest.raises(OSError, match="in use"):
            await serve(settings)
    assert _runners(execution_id) == []
    leftover = {t.get_name() for t in asyncio.all_tasks() if not t.done()}
    assert not leftover & {"lease-keeper", "lease-expiry", "scheduler"}

"""The database goes away mid-run and comes back: the engine loses nothing and finishes.

The test starts its own Postgres (never the shared one), runs an engine on it, stops the
server while executions are running, answers calls meanwhile, and starts it again.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from grpc import StatusCode, aio
from stepstream.v1 import engine_pb2, engine_pb2_grpc

from tests.e2e.engine.processes import EngineProcess, launch
from tests.e2e.engine.test_crash_recovery import (
    check_history,
    diamond,
    start_many,
    wait_until_all_ended,
    wait_until_some_steps_completed,
)
from tests.integration.engine.helpers import definition, register
from tests.private_postgres import PrivatePostgres

pytestmark = pytest.mark.e2e


async def test_a_database_restart_mid_run_loses_nothing(
    private_postgres: PrivatePostgres, tmp_path: Path
) -> None:
    log = tmp_path / "engine.log"
    engine: EngineProcess = await launch(
        private_postgres.url, log, {"lease_seconds": "2", "lease_interval_seconds": "0.3"}
    )
    try:
        async with aio.insecure_channel(engine.target) as channel:
            await register(engine_pb2_grpc.EngineServiceStub(channel), definition(diamond()))
        ids = await start_many(engine.target, 20)
        await wait_until_some_steps_completed(engine.target, ids)

        await asyncio.to_thread(private_postgres.stop)
        async with aio.insecure_channel(engine.target) as channel:
            stub = engine_pb2_grpc.EngineServiceStub(channel)
            with pytest.raises(aio.AioRpcError) as refused:
                await stub.StartExecution(engine_pb2.StartExecutionRequest(workflow_id="diamond"))
        # The database is down: a condition to retry, not an error of the engine.
        assert refused.value.code() is StatusCode.UNAVAILABLE
        await asyncio.sleep(1.0)
        await asyncio.to_thread(private_postgres.start)

        await wait_until_all_ended(engine.target, ids, seconds=90)
        await check_history(private_postgres.url, ids)
        assert engine.process.returncode is None
        # An outage is a condition, not a crash: said in one line per run, no traceback.
        text = log.read_text()
        assert "until the database answers: the database is unreachable" in text
        assert "stopped unexpectedly" not in text
    finally:
        await engine.ensure_stopped()

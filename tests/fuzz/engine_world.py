"""An engine server for the fuzz tier, with things for plausible requests to name.

The server is the integration tier's (`servers.serving`, built as in production), over a
fresh SQLite file or Postgres database. Before the burst it holds a workflow that
completes, one that runs for an hour (a target for cancel, pause and resume), a finished
and a running execution and a schedule; the pools point requests at them.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from grpc import aio
from stepstream.v1 import engine_pb2, engine_pb2_grpc

from engine_service.core.store import encode_page_token
from engine_service.transport.server import EngineServer
from tests.fuzz.generator import Strings
from tests.integration.engine.helpers import chain, register, run_to_end, start, struct
from tests.integration.engine.servers import serving


@dataclass
class EngineWorld:
    server: EngineServer
    stub: engine_pb2_grpc.EngineServiceAsyncStub
    strings: Strings

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.port}"


@contextlib.asynccontextmanager
async def engine_world(database_url: str) -> AsyncIterator[EngineWorld]:
    """A started engine (`servers.serving`) with its plausible things; stopped on exit."""
    async with (
        serving(database_url) as server,
        aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        stub = engine_pb2_grpc.EngineServiceStub(channel)
        yield EngineWorld(server, stub, await _plausible_things(stub))


async def _plausible_things(stub: engine_pb2_grpc.EngineServiceAsyncStub) -> Strings:
    await register(stub, chain("fz", "noop", "echo", echo={"n": "${inputs.n}"}))
    await register(stub, chain("slow", "delay", delay={"seconds": 3600}))
    done = await run_to_end(stub, "fz", inputs=struct({"n": 1}))
    running = await start(stub, "slow")
    schedule = await stub.CreateSchedule(
        engine_pb2.CreateScheduleRequest(
            schedule=engine_pb2.Schedule(workflow_id="fz", cron="0 0 1 1 *", inputs=struct({}))
        )
    )
    return {
        "workflow_id": ["fz", "slow", "missing"],
        "execution_id": [done.id, running.id, "missing", str(uuid.uuid4())],
        "parent_execution_id": ["", done.id],
        "schedule_id": [schedule.schedule.id, "missing"],
        "tenant": ["", "default"],
        "idempotency_key": ["", "fz-key"],
        "cron": ["* * * * *", "*/5 * * * *", "0 0 1 1 *"],
        "time_zone": ["", "UTC", "Europe/Paris"],
        "reason": ["", "fuzz"],
        "page_token": ["", encode_page_token(1)],
        "id": [""],
    }

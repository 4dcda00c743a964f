"""An engine server for the fuzz tier, with things for plausible requests to name.

The server is built as in production (`build_server`), over a fresh SQLite file or
Postgres database. Before the burst it holds a workflow that completes, one that runs for
an hour (a target for cancel, pause and resume), a finished and a running execution and a
schedule; the pools point requests at them.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from grpc import aio
from stepstream.v1 import engine_pb2, engine_pb2_grpc

from engine_service.core.bus import EventBus
from engine_service.core.engine import Engine
from engine_service.core.store import encode_page_token
from engine_service.metrics import EngineMetrics
from engine_service.settings import EngineSettings
from engine_service.storage import open_store
from engine_service.storage.sql_store import SqlExecutionStore
from engine_service.transport.server import EngineServer, build_server
from tests.fuzz.generator import Strings
from tests.integration.engine.helpers import chain, register, run_to_end, start, struct

ACTIONS = ("noop", "echo", "fail", "transform", "delay", "missing")


@dataclass
class EngineWorld:
    server: EngineServer
    store: SqlExecutionStore
    stub: engine_pb2_grpc.EngineServiceAsyncStub
    strings: Strings
    stopped: bool = False

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    async def stop(self) -> None:
        """Stop the server and the engine; the store stays open to be inspected."""
        if not self.stopped:
            self.stopped = True
            await self.server.stop(grace=1)


@contextlib.asynccontextmanager
async def engine_world(database_url: str) -> AsyncIterator[EngineWorld]:
    """A started engine with its plausible things; stopped and closed on exit."""
    settings = EngineSettings(address="127.0.0.1:0", metrics_port=0)
    store = await open_store(database_url)
    engine = Engine(store, config=settings.engine_config(), bus=EventBus(queue_size=1000))
    metrics = EngineMetrics()
    metrics.bind(engine)
    server = build_server(engine, metrics, settings)
    await server.start()
    world: EngineWorld | None = None
    try:
        async with aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = engine_pb2_grpc.EngineServiceStub(channel)
            world = EngineWorld(server, store, stub, await _plausible_things(stub))
            yield world
    finally:
        if world is None or not world.stopped:
            await server.stop(grace=1)
        await store.close()


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

"""A real engine gRPC server on 127.0.0.1, port 0, in this process, and a client for it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from grpc import aio
from stepstream.v1 import engine_pb2_grpc

from engine_service.core.bus import EventBus
from engine_service.core.engine import Engine
from engine_service.core.store import ExecutionStore
from engine_service.metrics import EngineMetrics, MetricsEndpoint
from engine_service.settings import EngineSettings
from engine_service.storage import open_store
from engine_service.transport.server import EngineServer, build_server
from tests.integration.engine.servers import Secured, secured_server

WATCH_BUFFER_EVENTS = 50


@dataclass
class Harness:
    engine: Engine
    store: ExecutionStore
    server: EngineServer
    channel: aio.Channel
    stub: engine_pb2_grpc.EngineServiceAsyncStub
    metrics: EngineMetrics
    metrics_port: int


@pytest.fixture
async def harness(database_url: str) -> AsyncIterator[Harness]:
    """The server over a fresh SQLite file, then over a fresh Postgres database."""
    settings = EngineSettings(address="127.0.0.1:0", metrics_port=0, watch_batch_events=100)
    store = await open_store(database_url)
    engine = Engine(
        store,
        config=settings.engine_config(),
        bus=EventBus(queue_size=WATCH_BUFFER_EVENTS),
    )
    metrics = EngineMetrics()
    metrics.bind(engine)
    endpoint = MetricsEndpoint(metrics.registry)
    metrics_port = endpoint.start("127.0.0.1", 0)
    server = build_server(engine, metrics, settings)
    await server.start()
    channel = aio.insecure_channel(f"127.0.0.1:{server.port}")
    stub = engine_pb2_grpc.EngineServiceStub(channel)
    try:
        yield Harness(engine, store, server, channel, stub, metrics, metrics_port)
    finally:
        await channel.close(grace=None)
        await server.stop(grace=1)
        endpoint.stop()
        await store.close()


@pytest.fixture
async def secured(database_url: str) -> AsyncIterator[Secured]:
    """A server that takes bearer tokens (see `servers.TOKENS`), on SQLite then Postgres."""
    async with secured_server(database_url) as server:
        yield server

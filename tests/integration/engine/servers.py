"""An engine gRPC server with settings of the test's choosing (tokens, TLS) on port 0.

`secured_server` configures bearer tokens for tenants A, for B, for B and C, and for every
tenant; A, B, BC and ALL are the metadata that carries each.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from grpc import aio
from stepstream.v1 import engine_pb2_grpc

from engine_service.core.bus import EventBus
from engine_service.core.engine import Engine
from engine_service.metrics import EngineMetrics
from engine_service.settings import EngineSettings
from engine_service.storage import open_store
from engine_service.transport.server import EngineServer, build_server

Metadata = tuple[tuple[str, str], ...]
TOKENS = (
    '{"token-a": ["tenant-a"], "token-b": ["tenant-b"], '
    '"token-bc": ["tenant-b", "tenant-c"], "token-all": ["*"]}'
)


def bearer(token: str) -> Metadata:
    return (("authorization", f"Bearer {token}"),)


A, B, BC, ALL = bearer("token-a"), bearer("token-b"), bearer("token-bc"), bearer("token-all")


@dataclass
class Secured:
    stub: engine_pb2_grpc.EngineServiceAsyncStub
    channel: aio.Channel


@contextlib.asynccontextmanager
async def serving(database_url: str, **settings: Any) -> AsyncIterator[EngineServer]:
    """A started server over `database_url`; `settings` are EngineSettings fields."""
    config = EngineSettings(address="127.0.0.1:0", metrics_port=0, **settings)
    store = await open_store(database_url)
    engine = Engine(store, config=config.engine_config(), bus=EventBus(queue_size=1000))
    metrics = EngineMetrics()
    metrics.bind(engine)
    server = build_server(engine, metrics, config)
    await server.start()
    try:
        yield server
    finally:
        await server.stop(grace=1)
        await store.close()


@contextlib.asynccontextmanager
async def secured_server(database_url: str) -> AsyncIterator[Secured]:
    """A server over `database_url` that takes the TOKENS, and a client without any."""
    async with serving(database_url, auth_tokens=TOKENS) as server:
        channel = aio.insecure_channel(f"127.0.0.1:{server.port}")
        try:
            yield Secured(engine_pb2_grpc.EngineServiceStub(channel), channel)
        finally:
            await channel.close(grace=None)

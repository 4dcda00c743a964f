"""An engine gRPC server with settings of the test's choosing (tokens, TLS) on port 0."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from engine_service.core.bus import EventBus
from engine_service.core.engine import Engine
from engine_service.metrics import EngineMetrics
from engine_service.settings import EngineSettings
from engine_service.storage import open_store
from engine_service.transport.server import EngineServer, build_server


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

"""`python -m engine_service`: settings, store, engine, gRPC server, metrics, signals."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Coroutine
from dataclasses import replace
from typing import Any

from engine_service.core.bus import EventBus
from engine_service.core.engine import Engine
from engine_service.core.leases import LeaseKeeper, LeaseSettings
from engine_service.core.scheduler import Scheduler
from engine_service.metrics import EngineMetrics, MetricsEndpoint
from engine_service.relay import OutboxRelay, RelayMetrics, RelaySettings
from engine_service.settings import EngineSettings
from engine_service.storage import is_single_process, open_store
from engine_service.storage.notify import EventListener
from engine_service.storage.outbox import Outbox
from engine_service.transport.server import build_server

log = logging.getLogger("engine_service")


def main() -> None:
    settings = EngineSettings()
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    run(serve(settings))


def run(main: Coroutine[Any, Any, None]) -> None:
    """Runs the service on uvloop (a fifth of the engine's CPU went to asyncio's own loop
    in a profile of the benchmark); on asyncio's loop where uvloop is not built."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        asyncio.run(main)
    else:
        uvloop.run(main)


async def serve(settings: EngineSettings, *, stop: asyncio.Event | None = None) -> None:
    """Serve until SIGTERM or SIGINT (or `stop` is set), then stop gracefully."""
    database_url = settings.database_url.get_secret_value()
    store = await open_store(
        database_url, migrate=settings.migrate_on_start, owner=settings.instance_id
    )
    metrics = EngineMetrics()
    endpoint = MetricsEndpoint(metrics.registry)
    engine: Engine | None = None
    keeper: LeaseKeeper | None = None
    scheduler: Scheduler | None = None
    try:
        engine = Engine(
            store,
            config=replace(
                settings.engine_config(),
                commands_across_processes=not is_single_process(database_url),
            ),
            bus=EventBus(queue_size=settings.watch_buffer_events),
        )
        metrics.bind(engine)
        server = build_server(engine, metrics, settings)
        keeper = LeaseKeeper(
            engine,
            LeaseSettings(
                owner=settings.instance_id,
                duration=settings.lease_seconds,
                interval=settings.lease_interval_seconds,
                take_over_on_start=is_single_process(database_url),
            ),
            on_claim=metrics.lease_claims.inc,
        )
        listener = (
            None
            if is_single_process(database_url)
            else EventListener(
                database_url,
                engine.publish_remote,
                origin=settings.instance_id,
                on_command=engine.apply_commands,
            )
        )
        if listener is not None:
            await listener.start()
        relay = (
            OutboxRelay(
                Outbox(store.engine),
                RelaySettings(
                    target=settings.analytics_target,
                    batch_size=settings.relay_batch_events,
                    max_batch_bytes=settings.relay_batch_bytes,
                ),
                on_backlog=metrics.outbox_backlog.set,
                on_set_aside=RelayMetrics(metrics.registry).count_set_aside,
            )
            if settings.analytics_target
            else None
        )
        if relay is not None:
            await relay.start()
            log.info("relaying events to analytics at %s", settings.analytics_target)
        continued = await keeper.start()
        scheduler = Scheduler(engine, settings.scheduler_config(), owner=settings.instance_id)
        scheduler.start()
        await server.start()
        host = settings.address.rsplit(":", 1)[0]
        log.info("engine listening on %s:%d", host, server.port)
        log.info("continued %d unfinished executions", continued)
        if settings.metrics_port:
            port = endpoint.start(settings.metrics_host, settings.metrics_port)
            log.info("metrics on http://%s:%d/metrics", settings.metrics_host, port)
        await _until_stopped(stop or asyncio.Event())
        log.info("stopping (grace period %.1fs)", settings.grace_period_seconds)
        await keeper.stop()  # claim nothing more while stopping
        await scheduler.stop()
        await server.stop(settings.grace_period_seconds)  # stops the engine last
        if listener is not None:
            await listener.stop()
        if relay is not None:
            await relay.stop()
    finally:
        # However serving ended (a start that failed half-way too), nothing goes on
        # claiming or driving executions against the store about to close; no-ops when
        # the graceful stop above ran.
        if keeper is not None:
            await keeper.stop()
        if scheduler is not None:
            await scheduler.stop()
        if engine is not None:
            await engine.stop()
        endpoint.stop()
        await store.close()
    log.info("stopped")


async def _until_stopped(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)

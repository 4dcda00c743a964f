"""Wiring: settings -> database, use cases, gRPC server, metrics endpoint; and shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from wsgiref.simple_server import WSGIServer

import grpc
import httpx
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

# health.aio re-exports this; the type stubs only know the synchronous servicer.
from grpc_health.v1._async import HealthServicer as AsyncHealthServicer
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, start_http_server
from stepstream.v1 import analytics_pb2, analytics_pb2_grpc

from analytics_service.core.alerting import AlertEvaluator, AlertLoop, AlertRules, AlertSink
from analytics_service.core.auth import TokenTable
from analytics_service.core.broadcast import AlertBroadcaster
from analytics_service.core.ingest import Ingestor
from analytics_service.core.ports import Clock
from analytics_service.core.queries import AnalyticsQueries, QueryLimits
from analytics_service.metrics import AnalyticsMetrics, MetricsAlertSink
from analytics_service.settings import AnalyticsSettings
from analytics_service.storage.alert_notices import AlertListener
from analytics_service.storage.database import SqlDatabase, create_engine
from analytics_service.storage.migrate import upgrade
from analytics_service.transport.boundary import BoundaryInterceptor, RequestLimits
from analytics_service.transport.interceptors import (
    AuthInterceptor,
    ErrorInterceptor,
    LatencyInterceptor,
)
from analytics_service.transport.servicer import AnalyticsServicer, AnalyticsUseCases
from analytics_service.transport.webhook import WebhookNotifier, WebhookPolicy

logger = logging.getLogger("analytics_service")

SERVICE_NAME = analytics_pb2.DESCRIPTOR.services_by_name["AnalyticsService"].full_name


def utc_now() -> datetime:
    return datetime.now(UTC)


def ensure_sqlite_directory(url: str) -> None:
    prefix = "sqlite+aiosqlite:///"
    if url.startswith(prefix) and ":memory:" not in url:
        Path(url.removeprefix(prefix)).parent.mkdir(parents=True, exist_ok=True)


def _read(path: Path | None) -> bytes | None:
    return None if path is None else path.read_bytes()


def bind(server: grpc.aio.Server, settings: AnalyticsSettings) -> int:
    """Listen on the configured address, with TLS (and client certificates) when configured."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return server.add_insecure_port(settings.address)
    key, certificate = settings.tls_key_file.read_bytes(), settings.tls_cert_file.read_bytes()
    client_ca = _read(settings.tls_client_ca_file)
    credentials = grpc.ssl_server_credentials(
        [(key, certificate)],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )
    return server.add_secure_port(settings.address, credentials)


async def _every(seconds: float, work: Callable[[], Awaitable[object]], name: str) -> None:
    while True:
        await asyncio.sleep(seconds)
        try:
            await work()
        except Exception:
            logger.exception("%s failed; retrying in %ss", name, seconds)


@dataclass
class RunningService:
    """A started analytics service; `stop()` takes it down in order."""

    server: grpc.aio.Server
    port: int
    metrics_port: int
    health: AsyncHealthServicer
    database: SqlDatabase
    use_cases: AnalyticsUseCases
    webhooks: WebhookNotifier
    http: httpx.AsyncClient
    metrics_server: WSGIServer
    background: list[asyncio.Task[None]]
    alert_listener: AlertListener | None = None
    stopped: bool = False

    async def stop(self, grace_seconds: float) -> None:
        if self.stopped:
            return
        self.stopped = True
        # Health first, so load balancers stop sending before the server stops accepting.
        await self.health.enter_graceful_shutdown()
        self.use_cases.broadcaster.close()
        await self.server.stop(grace_seconds)
        await self.use_cases.alert_loop.stop()
        if self.alert_listener is not None:
            await self.alert_listener.stop()
        for task in self.background:
            task.cancel()
        await asyncio.gather(*self.background, return_exceptions=True)
        await self.webhooks.close(grace_seconds)
        await self.http.aclose()
        self.metrics_server.shutdown()
        self.metrics_server.server_close()
        await self.database.close()


def build_server(
    use_cases: AnalyticsUseCases,
    tokens: TokenTable,
    metrics: AnalyticsMetrics,
    limits: RequestLimits,
) -> tuple[grpc.aio.Server, AsyncHealthServicer]:
    server = grpc.aio.server(
        interceptors=[
            ErrorInterceptor(),
            AuthInterceptor(tokens),
            BoundaryInterceptor(limits),
            LatencyInterceptor(metrics),
        ]
    )
    analytics_pb2_grpc.add_AnalyticsServiceServicer_to_server(AnalyticsServicer(use_cases), server)
    health_servicer = AsyncHealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    return server, health_servicer


async def start(
    settings: AnalyticsSettings,
    *,
    clock: Clock = utc_now,
    registry: CollectorRegistry | None = None,
) -> RunningService:
    """Migrate the database, then serve; returns once the server accepts calls."""
    url = settings.database_url.get_secret_value()
    ensure_sqlite_directory(url)
    engine = create_engine(url, pool_size=settings.database_pool_size)
    await upgrade(engine)
    database = SqlDatabase(engine)
    metrics = AnalyticsMetrics(registry if registry is not None else CollectorRegistry())
    tokens = TokenTable(settings.token_scopes())
    http = httpx.AsyncClient()
    policy = WebhookPolicy(
        attempts=settings.webhook_attempts,
        backoff_seconds=settings.webhook_backoff_seconds,
        timeout_seconds=settings.webhook_timeout_seconds,
    )
    webhooks = WebhookNotifier(http, policy, metrics)
    broadcaster = AlertBroadcaster()
    # On Postgres every replica's subscribers hear transitions from the database, this
    # replica's included (`storage.alert_notices`); SQLite has one process.
    on_postgres = engine.dialect.name == "postgresql"
    listener = AlertListener(url, broadcaster.deliver) if on_postgres else None
    counted = MetricsAlertSink(metrics)
    sinks: list[AlertSink] = [counted, webhooks]
    if listener is None:
        sinks.append(broadcaster)
    else:
        await listener.start()
    evaluator = AlertEvaluator(database, clock, sinks, on_rule_failed=counted.rule_failed)
    ingestor = Ingestor(database, clock, settings.fact_retention)
    use_cases = AnalyticsUseCases(
        ingestor=ingestor,
        queries=AnalyticsQueries(
            database, QueryLimits(critical_path_executions=settings.critical_path_executions)
        ),
        alert_rules=AlertRules(database, clock),
        alert_loop=AlertLoop(evaluator, settings.alert_interval_seconds),
        broadcaster=broadcaster,
        tokens=tokens,
        metrics=metrics,
    )
    server, health_servicer = build_server(use_cases, tokens, metrics, settings.request_limits())
    port = bind(server, settings)
    await server.start()
    for service in ("", SERVICE_NAME):
        await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    metrics_server, _ = start_http_server(
        settings.metrics_port, addr=settings.metrics_host, registry=metrics.registry
    )
    use_cases.alert_loop.start()
    retention = asyncio.create_task(
        _every(settings.retention_interval_seconds, ingestor.prune, "fact retention")
    )
    logger.info(
        "analytics service listening on port %d (metrics on %d)", port, metrics_server.server_port
    )
    return RunningService(
        server=server,
        port=port,
        metrics_port=metrics_server.server_port,
        health=health_servicer,
        database=database,
        use_cases=use_cases,
        webhooks=webhooks,
        http=http,
        metrics_server=metrics_server,
        background=[retention],
        alert_listener=listener,
    )


async def serve(settings: AnalyticsSettings) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    service = await start(settings)
    try:
        await stopping.wait()
        logger.info(
            "stopping: health NOT_SERVING, then up to %ss grace", settings.shutdown_grace_seconds
        )
    finally:
        with contextlib.suppress(Exception):
            await service.stop(settings.shutdown_grace_seconds)
    logger.info("analytics service stopped")


def main() -> None:
    settings = AnalyticsSettings()
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        asyncio.run(serve(settings))
    else:
        uvloop.run(serve(settings))

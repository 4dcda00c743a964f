"""The gRPC server: EngineService, health, reflection, interceptors and graceful stop."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import grpc
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from stepstream.v1 import engine_pb2, engine_pb2_grpc

from engine_service.core.engine import Engine
from engine_service.metrics import EngineMetrics
from engine_service.settings import EngineSettings
from engine_service.transport.admission import AdmissionInterceptor
from engine_service.transport.auth import AuthInterceptor, TokenTable
from engine_service.transport.interceptors import ErrorInterceptor, MetricsInterceptor
from engine_service.transport.offload import CpuLane
from engine_service.transport.servicer import EngineServicer
from engine_service.transport.streams import EventStreams
from engine_service.transport.tenancy import Tenancy

log = logging.getLogger(__name__)

ENGINE_SERVICE = engine_pb2.DESCRIPTOR.services_by_name["EngineService"].full_name


@dataclass
class EngineServer:
    server: aio.Server
    port: int
    health: HealthServicer
    streams: EventStreams
    engine: Engine
    lane: CpuLane

    async def start(self) -> None:
        await self.server.start()
        await self.health.set(ENGINE_SERVICE, health_pb2.HealthCheckResponse.SERVING)
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace: float) -> None:
        """Stop taking calls, end watch streams, let other calls finish, stop the engine.

        The engine stops last: steps in flight are cancelled without committing anything
        more, so a restart continues each execution from its last committed state.
        """
        await self.health.enter_graceful_shutdown()
        self.streams.close_all()
        await self.server.stop(grace)
        self.lane.close()
        await self.engine.stop()


def build_server(engine: Engine, metrics: EngineMetrics, settings: EngineSettings) -> EngineServer:
    tokens = TokenTable.parse(settings.auth_tokens_json())
    interceptors: list[aio.ServerInterceptor[Any, Any]] = [
        MetricsInterceptor(metrics),
        ErrorInterceptor(),
    ]
    if tokens:
        # Innermost: a rejected call is still counted and mapped to UNAUTHENTICATED.
        interceptors.append(AuthInterceptor(tokens))
        log.info("bearer-token auth on: %d tokens configured", len(tokens))
    else:
        log.warning("auth is off: no tokens configured, every caller may use every tenant")
    # Innermost of all: a request is decoded and checked only once its caller is known.
    checked = (f"/{ENGINE_SERVICE}/",)
    lane = CpuLane()
    interceptors.append(AdmissionInterceptor(settings.request_limits(), checked, lane))
    server = aio.server(interceptors=interceptors, options=settings.grpc_options())
    streams = EventStreams(engine, max_batch_events=settings.watch_batch_events)
    servicer = EngineServicer(engine, streams, Tenancy(authenticated=bool(tokens)), lane)
    engine_pb2_grpc.add_EngineServiceServicer_to_server(servicer, server)
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    services = (ENGINE_SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name)
    reflection.enable_server_reflection((*services, reflection.SERVICE_NAME), server)
    port = _listen(server, settings)
    if port == 0:
        raise OSError(f"cannot listen on {settings.address}")
    return EngineServer(server, port, health, streams, engine, lane)


def _listen(server: aio.Server, settings: EngineSettings) -> int:
    """Open the gRPC port: TLS when a certificate is configured, mTLS with a client CA."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        log.info("TLS is off: the gRPC port is plaintext")
        return server.add_insecure_port(settings.address)
    key = settings.tls_key_file.read_bytes()
    chain = settings.tls_cert_file.read_bytes()
    client_ca = settings.tls_client_ca_file
    credentials = grpc.ssl_server_credentials(
        [(key, chain)],
        root_certificates=client_ca.read_bytes() if client_ca else None,
        require_client_auth=client_ca is not None,
    )
    log.info("TLS on%s", " with client certificates required (mTLS)" if client_ca else "")
    return server.add_secure_port(settings.address, credentials)

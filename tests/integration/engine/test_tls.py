"""TLS and mTLS on the engine's gRPC port, with certificates made for each test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from stepstream.v1 import engine_pb2, engine_pb2_grpc

from engine_service.transport.server import EngineServer
from tests.integration.engine.certs import Authority
from tests.integration.engine.helpers import bounded, rpc_error
from tests.integration.engine.servers import serving

CALL_SECONDS = 10.0


@pytest.fixture
def trusted(tmp_path: Path) -> Authority:
    return Authority(tmp_path, "trusted")


@pytest.fixture
def stranger(tmp_path: Path) -> Authority:
    """A CA the server knows nothing about."""
    return Authority(tmp_path, "stranger")


@pytest.fixture
async def tls_server(sqlite_url: str, trusted: Authority) -> AsyncIterator[EngineServer]:
    issued = trusted.server()
    async with serving(
        sqlite_url, tls_cert_file=issued.cert_file, tls_key_file=issued.key_file
    ) as server:
        yield server


@pytest.fixture
async def mtls_server(sqlite_url: str, trusted: Authority) -> AsyncIterator[EngineServer]:
    issued = trusted.server()
    async with serving(
        sqlite_url,
        tls_cert_file=issued.cert_file,
        tls_key_file=issued.key_file,
        tls_client_ca_file=trusted.cert_file,
    ) as server:
        yield server


async def list_workflows(server: EngineServer, credentials: grpc.ChannelCredentials | None) -> int:
    """How many workflows the server lists over a channel with these credentials."""
    target = f"127.0.0.1:{server.port}"
    channel = (
        aio.insecure_channel(target)
        if credentials is None
        else aio.secure_channel(target, credentials)
    )
    try:
        stub = engine_pb2_grpc.EngineServiceStub(channel)
        request = engine_pb2.ListWorkflowsRequest()
        response = await bounded(stub.ListWorkflows(request, timeout=CALL_SECONDS))
        return len(response.workflows)
    finally:
        await channel.close(grace=None)


async def test_tls_serves_clients_that_trust_its_ca(
    tls_server: EngineServer, trusted: Authority
) -> None:
    assert await list_workflows(tls_server, grpc.ssl_channel_credentials(trusted.cert)) == 0


@pytest.mark.parametrize("client", ["plaintext", "public roots", "another CA"])
async def test_tls_refuses_clients_that_do_not_trust_its_ca(
    tls_server: EngineServer, stranger: Authority, client: str
) -> None:
    credentials = {
        "plaintext": None,
        "public roots": grpc.ssl_channel_credentials(),
        "another CA": grpc.ssl_channel_credentials(stranger.cert),
    }[client]
    error = await rpc_error(list_workflows(tls_server, credentials))
    assert error.code() is grpc.StatusCode.UNAVAILABLE


async def test_mtls_serves_clients_with_a_certificate_from_its_client_ca(
    mtls_server: EngineServer, trusted: Authority
) -> None:
    client = trusted.client()
    credentials = grpc.ssl_channel_credentials(trusted.cert, client.key, client.cert)
    assert await list_workflows(mtls_server, credentials) == 0


@pytest.mark.parametrize("client", ["no certificate", "another CA's certificate"])
async def test_mtls_refuses_clients_without_a_trusted_certificate(
    mtls_server: EngineServer, trusted: Authority, stranger: Authority, client: str
) -> None:
    if client == "no certificate":
        credentials = grpc.ssl_channel_credentials(trusted.cert)
    else:
        foreign = stranger.client()
        credentials = grpc.ssl_channel_credentials(trusted.cert, foreign.key, foreign.cert)
    error = await rpc_error(list_workflows(mtls_server, credentials))
    assert error.code() is grpc.StatusCode.UNAVAILABLE


async def test_tls_carries_bearer_tokens_and_health_needs_none(
    sqlite_url: str, trusted: Authority
) -> None:
    issued = trusted.server()
    async with serving(
        sqlite_url,
        tls_cert_file=issued.cert_file,
        tls_key_file=issued.key_file,
        auth_tokens='{"token-a": ["tenant-a"]}',
    ) as server:
        tls = grpc.ssl_channel_credentials(trusted.cert)
        # The stock gRPC call credentials send `authorization: Bearer <token>`.
        with_token = grpc.composite_channel_credentials(
            tls, grpc.access_token_call_credentials("token-a")
        )
        assert await list_workflows(server, with_token) == 0
        error = await rpc_error(list_workflows(server, tls))
        assert error.code() is grpc.StatusCode.UNAUTHENTICATED
        async with aio.secure_channel(f"127.0.0.1:{server.port}", tls) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            response = await health.Check(health_pb2.HealthCheckRequest(), timeout=CALL_SECONDS)
            assert response.status == health_pb2.HealthCheckResponse.SERVING

"""The service around the servicer: health, reflection, errors, auth, TLS, shutdown."""

from __future__ import annotations

import asyncio
import json
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from stepstream.v1 import analytics_pb2, analytics_pb2_grpc

from analytics_service.core.events import ExecutionStatus
from analytics_service.main import SERVICE_NAME
from tests.integration.analytics.conftest import (
    ManualClock,
    connected,
    running_service,
    wait_for_watchers,
)
from tests.integration.analytics.wire import ingest
from tests.private_postgres import PrivatePostgres
from tests.unit.analytics.builders import execution_event

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def check_health(channel: grpc.aio.Channel, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    response = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    return response.status  # type: ignore[no-any-return]


async def test_health_and_reflection(sqlite_url: str, clock: ManualClock) -> None:
    async with running_service(sqlite_url, clock) as service:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
            assert await check_health(channel) == SERVING
            assert await check_health(channel, SERVICE_NAME) == SERVING
            reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
            request = reflection_pb2.ServerReflectionRequest(list_services="")
            responses = [r async for r in reflection.ServerReflectionInfo(iter([request]))]
        names = {s.name for s in responses[0].list_services_response.service}
        assert SERVICE_NAME in names


async def test_unexpected_errors_are_internal_with_a_trace_id_and_no_detail(
    sqlite_url: str, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def explode(*_: Any) -> None:
        raise RuntimeError("password=hunter2")

    async with running_service(sqlite_url, clock) as service, connected(service) as stub:
        monkeypatch.setattr(service.use_cases.queries, "workflow_metrics", explode)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetWorkflowMetrics(
                analytics_pb2.GetWorkflowMetricsRequest(workflow_id="orders")
            )
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert "trace id" in (caught.value.details() or "")
    assert "hunter2" not in (caught.value.details() or "")


async def test_bad_ranges_and_missing_fields_are_invalid_arguments(
    sqlite_url: str, clock: ManualClock
) -> None:
    backwards = analytics_pb2.TimeRange()
    backwards.start.FromSeconds(2000)
    backwards.end.FromSeconds(1000)
    async with running_service(sqlite_url, clock) as service, connected(service) as stub:
        for request in (
            analytics_pb2.GetWorkflowMetricsRequest(workflow_id="orders", range=backwards),
            analytics_pb2.GetWorkflowMetricsRequest(workflow_id=""),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.GetWorkflowMetrics(request)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


TOKENS = json.dumps({"acme-token": ["acme"], "relay-token": ["*"]})


async def test_tokens_are_required_and_scoped_to_tenants(
    sqlite_url: str, clock: ManualClock
) -> None:
    def metadata(token: str) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {token}"),)

    async def code_of(stub: Any, tenant: str, token: str | None) -> grpc.StatusCode:
        request = analytics_pb2.GetSystemOverviewRequest(tenant=tenant)
        try:
            await stub.GetSystemOverview(request, metadata=metadata(token) if token else ())
        except grpc.aio.AioRpcError as error:
            return error.code()
        return grpc.StatusCode.OK

    async with (
        running_service(sqlite_url, clock, auth_tokens=TOKENS) as service,
        grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel,
    ):
        assert await check_health(channel) == SERVING  # exempt
        stub = analytics_pb2_grpc.AnalyticsServiceStub(channel)
        assert await code_of(stub, "acme", None) == grpc.StatusCode.UNAUTHENTICATED
        assert await code_of(stub, "acme", "acme-tokenX") == grpc.StatusCode.UNAUTHENTICATED
        assert await code_of(stub, "acme", "acme-token") == grpc.StatusCode.OK
        assert await code_of(stub, "", "acme-token") == grpc.StatusCode.PERMISSION_DENIED
        assert await code_of(stub, "globex", "relay-token") == grpc.StatusCode.OK

        event = execution_event("e1", tenant="globex")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await ingest(stub, [[event]], metadata=metadata("acme-token"))
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        accepted = await ingest(stub, [[event]], metadata=metadata("relay-token"))
        assert accepted.accepted == 1


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def make_certificates(directory: Path) -> None:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by it."""
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
            "/CN=test-ca", "-keyout", "ca.key", "-out", "ca.pem", cwd=directory)  # fmt: skip
    for name, extension in (("server", "subjectAltName=IP:127.0.0.1"), ("client", "")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=directory)  # fmt: skip
        (directory / f"{name}.ext").write_text(extension + "\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-days", "1", "-extfile", f"{name}.ext",
                "-out", f"{name}.pem", cwd=directory)  # fmt: skip


async def test_mutual_tls_admits_only_clients_with_a_certificate(
    sqlite_url: str, clock: ManualClock, tmp_path: Path
) -> None:
    make_certificates(tmp_path)
    ca = (tmp_path / "ca.pem").read_bytes()
    settings = {
        "tls_cert_file": tmp_path / "server.pem",
        "tls_key_file": tmp_path / "server.key",
        "tls_client_ca_file": tmp_path / "ca.pem",
    }
    async with running_service(sqlite_url, clock, **settings) as service:
        address = f"127.0.0.1:{service.port}"
        with_certificate = grpc.ssl_channel_credentials(
            root_certificates=ca,
            private_key=(tmp_path / "client.key").read_bytes(),
            certificate_chain=(tmp_path / "client.pem").read_bytes(),
        )
        async with grpc.aio.secure_channel(address, with_certificate) as channel:
            assert await check_health(channel) == SERVING
        without = grpc.ssl_channel_credentials(root_certificates=ca)
        async with grpc.aio.secure_channel(address, without) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await check_health(channel)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_stopping_reports_not_serving_then_ends_streams(
    sqlite_url: str, clock: ManualClock
) -> None:
    async with (
        running_service(sqlite_url, clock) as service,
        grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel,
    ):
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
        first = await asyncio.wait_for(watch.read(), timeout=5)
        assert isinstance(first, health_pb2.HealthCheckResponse)
        assert first.status == SERVING
        alerts = analytics_pb2_grpc.AnalyticsServiceStub(channel).WatchAlerts(
            analytics_pb2.WatchAlertsRequest()
        )
        await wait_for_watchers(service, 1)
        stopping = asyncio.create_task(service.stop(2.0))
        second = await asyncio.wait_for(watch.read(), timeout=5)
        assert isinstance(second, health_pb2.HealthCheckResponse)
        assert second.status == NOT_SERVING
        # The alert stream ends cleanly rather than being cut off at the end of the grace.
        assert await asyncio.wait_for(alerts.read(), timeout=5) is grpc.aio.EOF  # type: ignore[attr-defined]
        await asyncio.wait_for(stopping, timeout=10)


async def test_the_alert_loop_goes_on_past_a_rule_that_cannot_be_evaluated(
    database_url: str, clock: ManualClock
) -> None:
    # Issue 11: a 10,000-year window stopped every evaluation round, and the rules sorting
    # after it never fired again. Stored directly, as it was before the boundary refused it.
    async with running_service(database_url, clock) as service, connected(service) as stub:
        good = await stub.CreateAlertRule(
            analytics_pb2.CreateAlertRuleRequest(
                rule=analytics_pb2.AlertRule(
                    name="failing",
                    workflow_id="orders",
                    metric=analytics_pb2.ALERT_METRIC_FAILURE_RATE,
                    comparator=analytics_pb2.COMPARATOR_GREATER_THAN,
                    threshold=0.5,
                    window=duration_pb2.Duration(seconds=3600),
                    enabled=True,
                )
            )
        )
        async with service.database.transaction() as uow:
            rule = await uow.alerts.get_rule(good.rule.id)
            assert rule is not None
            await uow.alerts.add_rule(replace(rule, id="0-broken", window_seconds=315576000000.0))
        failed = [execution_event(f"e{i}", status=ExecutionStatus.FAILED) for i in range(3)]
        await ingest(stub, [failed])  # wakes the alert loop for ("default", "orders")
        registry = service.use_cases.metrics.registry
        for _ in range(500):
            listed = await stub.ListAlertRules(analytics_pb2.ListAlertRulesRequest())
            states = {r.id: r.state for r in listed.rules}
            if states[good.rule.id] == analytics_pb2.ALERT_STATE_FIRING:
                break
            await asyncio.sleep(0.01)
        assert states == {
            "0-broken": analytics_pb2.ALERT_STATE_OK,
            good.rule.id: analytics_pb2.ALERT_STATE_FIRING,
        }
        assert registry.get_sample_value("stepstream_analytics_alert_rule_failures_total") == 1


@pytest.mark.timeout(60)
async def test_a_database_that_cannot_be_reached_is_unavailable_not_internal(
    private_postgres: PrivatePostgres, clock: ManualClock
) -> None:
    # The engine's relay keeps events for UNAVAILABLE and backs off; for INTERNAL it could
    # not tell an outage from a broken event.
    async with (
        running_service(private_postgres.url, clock) as service,
        connected(service) as stub,
    ):
        batch = [execution_event("e1")]
        await ingest(stub, [batch])
        private_postgres.stop()
        for request in ([execution_event("e2")], [execution_event("e3")]):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await ingest(stub, [request])
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, caught.value.details()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetWorkflowMetrics(
                analytics_pb2.GetWorkflowMetricsRequest(workflow_id="orders")
            )
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        private_postgres.start()
        response = await ingest(stub, [[execution_event("e4")]])
        assert response.accepted == 1

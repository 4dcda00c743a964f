"""`python -m analytics_service` as a process: serves, ingests, answers, stops on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from stepstream.v1 import analytics_pb2, analytics_pb2_grpc

from tests.integration.analytics import scenario
from tests.integration.analytics.wire import ingest, time_range
from tests.unit.analytics.builders import T0

pytestmark = pytest.mark.e2e
REPOSITORY = Path(__file__).resolve().parents[3]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int, int, Path]]:
    port, metrics_port = free_port(), free_port()
    environment = {
        **os.environ,
        "STEPSTREAM_ANALYTICS_ADDRESS": f"127.0.0.1:{port}",
        "STEPSTREAM_ANALYTICS_METRICS_PORT": str(metrics_port),
        "PYTHONPATH": str(REPOSITORY),
        # The scenario's events are dated in early 2026: keep them whatever today's date.
        "STEPSTREAM_ANALYTICS_FACT_RETENTION_DAYS": "0",
    }
    # No database URL: the embedded SQLite default under ./.stepstream/ of the working directory.
    environment.pop("STEPSTREAM_ANALYTICS_DATABASE_URL", None)
    log = tmp_path / "analytics.log"
    with log.open("wb") as output:
        child = subprocess.Popen(
            [sys.executable, "-m", "analytics_service"],
            cwd=tmp_path,
            env=environment,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        yield child, port, metrics_port, log
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)


async def wait_until_serving(channel: grpc.aio.Channel, child: subprocess.Popen[bytes]) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for _ in range(150):
        assert child.poll() is None, "the service exited during start-up"
        try:
            response = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
        except grpc.aio.AioRpcError:
            await asyncio.sleep(0.1)
            continue
        if response.status == health_pb2.HealthCheckResponse.SERVING:
            return
    raise AssertionError("the service never reported SERVING")


async def test_the_process_serves_and_stops_gracefully_on_sigterm(
    process: tuple[subprocess.Popen[bytes], int, int, Path], tmp_path: Path
) -> None:
    child, port, metrics_port, log = process
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        await wait_until_serving(channel, child)
        stub = analytics_pb2_grpc.AnalyticsServiceStub(channel)
        response = await ingest(stub, [scenario.orders_events()])
        assert response.accepted == len(scenario.orders_events())
        metrics = await stub.GetWorkflowMetrics(
            analytics_pb2.GetWorkflowMetricsRequest(
                workflow_id="orders", range=time_range(T0, T0 + timedelta(hours=1))
            )
        )
        assert metrics.metrics.executions == scenario.EXECUTIONS
    async with httpx.AsyncClient() as client:
        exposition = (await client.get(f"http://127.0.0.1:{metrics_port}/metrics")).text
    accepted = len(scenario.orders_events())
    assert f"stepstream_analytics_events_ingested_total {accepted}.0" in exposition
    assert (tmp_path / ".stepstream" / "analytics.db").exists()

    child.send_signal(signal.SIGTERM)
    assert child.wait(timeout=20) == 0
    output = log.read_text()
    assert "stopping: health NOT_SERVING" in output
    assert "analytics service stopped" in output

"""Health, reflection, metrics, unknown errors and settings of the engine server."""

from __future__ import annotations

import asyncio
import logging
import re
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from stepstream.v1 import engine_pb2

from engine_service.core.state import ExecutionState
from engine_service.settings import EngineSettings
from engine_service.transport.server import ENGINE_SERVICE
from tests.integration.engine.conftest import Harness
from tests.integration.engine.helpers import (
    bounded,
    chain,
    definition,
    register,
    rpc_error,
    run_to_end,
)
from tests.readme_settings import settings_missing_from_readme


async def test_health_reports_the_engine_serving_until_shutdown(harness: Harness) -> None:
    health = health_pb2_grpc.HealthStub(harness.channel)
    for service in ("", ENGINE_SERVICE):
        response = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert response.status == health_pb2.HealthCheckResponse.SERVING
    await harness.server.health.enter_graceful_shutdown()
    response = await health.Check(health_pb2.HealthCheckRequest(service=ENGINE_SERVICE))
    assert response.status == health_pb2.HealthCheckResponse.NOT_SERVING


async def test_reflection_lists_the_services(harness: Harness) -> None:
    reflection = reflection_pb2_grpc.ServerReflectionStub(harness.channel)

    async def list_services() -> list[str]:
        call = reflection.ServerReflectionInfo()
        await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        response = await call.read()
        await call.done_writing()
        return [s.name for s in response.list_services_response.service]

    names = await bounded(list_services())
    assert ENGINE_SERVICE == "stepstream.v1.EngineService"
    assert {ENGINE_SERVICE, "grpc.health.v1.Health"} <= set(names)


async def test_metrics_count_executions_steps_and_requests(harness: Harness) -> None:
    await register(harness.stub, chain("w", "noop", "echo"))
    await register(
        harness.stub,
        definition(
            {
                "id": "flaky",
                "steps": [
                    {
                        "id": "f",
                        "action": "fail",
                        "parameters": {"times": 1},
                        "retry": {"max_attempts": 2, "initial_interval": "0.01s"},
                    }
                ],
            }
        ),
    )
    for _ in range(2):
        await run_to_end(harness.stub, "w")
    await run_to_end(harness.stub, "flaky")
    await rpc_error(harness.stub.GetExecution(engine_pb2.GetExecutionRequest()))

    text = await asyncio.to_thread(_scrape, harness.metrics_port)
    assert _sample(text, "stepstream_engine_executions_started_total") == 3
    assert _sample(text, 'stepstream_engine_executions_finished_total{status="COMPLETED"}') == 3
    assert (
        _sample(text, 'stepstream_engine_step_attempts_total{action="noop",status="COMPLETED"}')
        == 2
    )
    assert (
        _sample(text, 'stepstream_engine_step_attempts_total{action="fail",status="FAILED"}') == 1
    )
    assert _sample(text, 'stepstream_engine_step_retries_total{action="fail"}') == 1
    assert (
        _sample(
            text, 'stepstream_engine_step_duration_seconds_count{action="echo",status="COMPLETED"}'
        )
        == 2
    )
    assert (
        _sample(text, 'stepstream_engine_execution_duration_seconds_count{status="COMPLETED"}') == 3
    )
    assert _sample(text, "stepstream_engine_active_executions") == 0
    assert _sample(text, "stepstream_engine_scheduler_queue_depth") == 0
    assert _sample(text, "stepstream_engine_lease_claims_total") == 0
    assert _sample(text, "stepstream_engine_outbox_backlog_events") == 0
    method = "/stepstream.v1.EngineService/GetExecution"
    assert (
        _sample(text, f'stepstream_engine_grpc_requests_total{{code="OK",method="{method}"}}') == 3
    )
    invalid = f'stepstream_engine_grpc_requests_total{{code="INVALID_ARGUMENT",method="{method}"}}'
    assert _sample(text, invalid) == 1
    latency = f'stepstream_engine_grpc_request_duration_seconds_count{{method="{method}"}}'
    assert _sample(text, latency) == 4


async def test_unknown_errors_are_internal_with_a_trace_id_and_no_text(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(*args: object, **kwargs: object) -> ExecutionState:
        raise RuntimeError("password=hunter2 in the driver's message")

    monkeypatch.setattr(harness.engine, "get_execution", broken)
    with caplog.at_level(logging.ERROR):
        error = await rpc_error(
            harness.stub.GetExecution(engine_pb2.GetExecutionRequest(execution_id="x"))
        )
    assert error.code() is grpc.StatusCode.INTERNAL
    details = error.details() or ""
    assert "hunter2" not in details
    match = re.search(r"trace id ([0-9a-f]{32})", details)
    assert match is not None, details
    assert any(match.group(1) in r.getMessage() and r.exc_info for r in caplog.records)


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEPSTREAM_ENGINE_ADDRESS", "0.0.0.0:6000")
    monkeypatch.setenv("STEPSTREAM_ENGINE_METRICS_PORT", "0")
    monkeypatch.setenv("STEPSTREAM_ENGINE_DATABASE_URL", "postgresql+asyncpg://u:secret@h/db")
    monkeypatch.setenv("STEPSTREAM_ANALYTICS_TARGET", "analytics:50052")
    settings = EngineSettings()
    assert settings.address == "0.0.0.0:6000"
    assert settings.metrics_port == 0
    assert settings.analytics_target == "analytics:50052"
    assert settings.database_url.get_secret_value().endswith("@h/db")
    assert "secret" not in repr(settings)
    monkeypatch.setenv("STEPSTREAM_ENGINE_MAX_CONCURRENT_STEPS", "0")
    with pytest.raises(ValueError, match="max_concurrent_steps"):
        EngineSettings()


def test_every_setting_is_documented_in_the_readme() -> None:
    assert settings_missing_from_readme(EngineSettings, "### Engine") == []


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        body: bytes = response.read()
    return body.decode()


def _sample(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {name}")

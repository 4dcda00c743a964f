"""Engine and analytics as processes: every committed step event reaches the aggregates.

200 executions with retries and failures run while the analytics service is stopped
midway and started again; the outbox relay must ship everything exactly once in effect,
so the analytics figures equal what the engine's own tables say.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from grpc import aio
from sqlalchemy import func, select
from stepstream.v1 import analytics_pb2, analytics_pb2_grpc, engine_pb2, engine_pb2_grpc

from engine_service.storage import create_database_engine
from engine_service.storage.models import execution_events, executions
from tests.e2e.engine.processes import EngineProcess, free_port, launch
from tests.integration.engine.helpers import (
    WAIT_SECONDS,
    bounded,
    definition,
    register,
    struct,
)
from tests.private_postgres import PrivatePostgres

pytestmark = pytest.mark.e2e
EXECUTIONS = 200
STEP_OUTCOMES = {"COMPLETED", "FAILED", "TIMED_OUT", "SKIPPED", "CANCELLED"}


def flaky_workflow() -> dict[str, object]:
    """b fails `inputs.times` times with two attempts allowed; c always fails but continues."""
    return {
        "id": "flaky",
        "steps": [
            {"id": "a", "action": "noop"},
            {
                "id": "b",
                "action": "fail",
                "depends_on": ["a"],
                "parameters": {"times": "${inputs.times}", "error_type": "Flaky"},
                "retry": {"max_attempts": 2, "initial_interval": "0.02s"},
            },
            {
                "id": "c",
                "action": "fail",
                "depends_on": ["a"],
                "parameters": {"error_type": "AlwaysBroken"},
                "continue_on_error": True,
            },
            {"id": "d", "action": "noop", "depends_on": ["b", "c"]},
        ],
    }


class AnalyticsProcess:
    def __init__(self, database_url: str, log: Path) -> None:
        self.port = free_port()
        self.database_url = database_url
        self.log = log
        self.process: asyncio.subprocess.Process | None = None

    async def start(self, *, start_within: float = WAIT_SECONDS) -> None:
        env = {
            **os.environ,
            "STEPSTREAM_ANALYTICS_ADDRESS": f"127.0.0.1:{self.port}",
            "STEPSTREAM_ANALYTICS_METRICS_PORT": str(free_port()),
            "STEPSTREAM_ANALYTICS_DATABASE_URL": self.database_url,
        }
        with self.log.open("ab") as sink:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "analytics_service", env=env, stdout=sink, stderr=sink
            )
        await bounded(self._until_serving(), start_within)

    async def _until_serving(self) -> None:
        async with aio.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            await channel.channel_ready()

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            await bounded(self.process.wait(), 30)


@pytest.fixture
def databases(make_postgres_database: Callable[[], str]) -> tuple[str, str]:
    """Each service owns its database: one for the engine, one for analytics."""
    engine, analytics = make_postgres_database(), make_postgres_database()
    return _async_url(engine), _async_url(analytics)


def _async_url(url: str) -> str:
    return url.replace("postgresql://", "postgresql+asyncpg://", 1)


@pytest.fixture
async def services(
    databases: tuple[str, str], tmp_path: Path
) -> AsyncIterator[tuple[EngineProcess, AnalyticsProcess, str]]:
    engine_url, analytics_url = databases
    analytics = AnalyticsProcess(analytics_url, tmp_path / "analytics.log")
    await analytics.start()
    engine = await launch(
        engine_url,
        tmp_path / "engine.log",
        env={"STEPSTREAM_ANALYTICS_TARGET": f"127.0.0.1:{analytics.port}"},
    )
    try:
        yield engine, analytics, engine_url
    finally:
        await engine.ensure_stopped()
        await analytics.stop()


async def start_executions(stub: engine_pb2_grpc.EngineServiceAsyncStub, count: int) -> list[str]:
    replies = await asyncio.gather(
        *(
            stub.StartExecution(
                engine_pb2.StartExecutionRequest(
                    workflow_id="flaky", inputs=struct({"times": number % 3})
                )
            )
            for number in range(count)
        )
    )
    return [reply.execution.id for reply in replies]


async def wait_for_terminal(stub: engine_pb2_grpc.EngineServiceAsyncStub, ids: list[str]) -> None:
    async def poll() -> None:
        for execution_id in ids:
            while True:
                reply = await stub.GetExecution(
                    engine_pb2.GetExecutionRequest(execution_id=execution_id)
                )
                if reply.execution.status in (4, 5, 6, 7, 8):
                    break
                await asyncio.sleep(0.05)

    await bounded(poll(), 120)


async def wait_for_empty_outbox(database_url: str) -> None:
    database = create_database_engine(database_url)
    try:
        for _ in range(600):
            async with database.connect() as connection:
                left = await connection.scalar(
                    select(func.count()).where(execution_events.c.delivered_at.is_(None))
                )
            if left == 0:
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"{left} events never left the outbox")
    finally:
        await database.dispose()


async def engine_truth(
    database_url: str,
) -> tuple[Counter[str], Counter[tuple[str, str]], Counter[str]]:
    """From the engine's own tables: executions by status, finished step outcomes by
    (step, status) from the event log, and retries (attempts after the first) by step."""
    database = create_database_engine(database_url)
    try:
        async with database.connect() as connection:
            by_status = select(executions.c.status, func.count()).group_by(executions.c.status)
            runs: Counter[str] = Counter(dict((await connection.execute(by_status)).all()))
            payloads = list(await connection.scalars(select(execution_events.c.payload)))
    finally:
        await database.dispose()
    outcomes: Counter[tuple[str, str]] = Counter()
    retries: Counter[str] = Counter()
    for payload in payloads:
        if payload["kind"] != "STEP_STATUS_CHANGED":
            continue
        if payload["step_status"] in STEP_OUTCOMES:
            outcomes[(payload["step_id"], payload["step_status"])] += 1
        if payload["step_status"] == "RUNNING" and payload["attempt"] > 1:
            retries[payload["step_id"]] += 1
    return runs, outcomes, retries


async def test_every_event_reaches_the_aggregates_across_an_analytics_restart(
    services: tuple[EngineProcess, AnalyticsProcess, str],
) -> None:
    engine, analytics, engine_url = services
    async with aio.insecure_channel(engine.target) as channel:
        stub = engine_pb2_grpc.EngineServiceStub(channel)
        await register(stub, definition(flaky_workflow()))
        first = await start_executions(stub, EXECUTIONS // 2)
        await analytics.stop()  # the relay must hold the events and retry
        second = await start_executions(stub, EXECUTIONS - EXECUTIONS // 2)
        await wait_for_terminal(stub, first + second)
    await analytics.start()
    await wait_for_empty_outbox(engine_url)

    await assert_aggregates_match(engine_url, analytics.port)


async def assert_aggregates_match(engine_url: str, analytics_port: int) -> None:
    """The analytics figures equal, exactly, what the engine's own tables say."""
    runs, attempts, retries = await engine_truth(engine_url)
    assert sum(runs.values()) == EXECUTIONS
    assert runs["FAILED"] > 0
    assert runs["COMPLETED_WITH_ERRORS"] > 0
    now = datetime.now(UTC)
    window = analytics_pb2.TimeRange()
    window.start.FromDatetime(now - timedelta(hours=1))
    window.end.FromDatetime(now + timedelta(hours=1))
    async with aio.insecure_channel(f"127.0.0.1:{analytics_port}") as channel:
        stub_a = analytics_pb2_grpc.AnalyticsServiceStub(channel)
        metrics = (
            await stub_a.GetWorkflowMetrics(
                analytics_pb2.GetWorkflowMetricsRequest(workflow_id="flaky", range=window)
            )
        ).metrics
        steps = (
            await stub_a.GetStepMetrics(
                analytics_pb2.GetStepMetricsRequest(workflow_id="flaky", range=window)
            )
        ).steps
    assert metrics.executions == EXECUTIONS
    assert metrics.completed == runs["COMPLETED"]
    assert metrics.completed_with_errors == runs["COMPLETED_WITH_ERRORS"]
    assert metrics.failed == runs["FAILED"]
    by_step = {s.step_id: s for s in steps}
    for step_id in ("a", "b", "c", "d"):
        expected = {status: n for (step, status), n in attempts.items() if step == step_id}
        measured = by_step[step_id]
        assert measured.completed == expected.get("COMPLETED", 0), step_id
        assert measured.failed == expected.get("FAILED", 0), step_id
        assert measured.cancelled == expected.get("CANCELLED", 0), step_id
        assert measured.skipped == expected.get("SKIPPED", 0), step_id
        assert measured.retries == retries[step_id], step_id
    assert retries["b"] > 0


@pytest.fixture
def engine_database(make_postgres_database: Callable[[], str]) -> str:
    return _async_url(make_postgres_database())


async def test_every_event_reaches_the_aggregates_across_an_analytics_database_restart(
    engine_database: str, private_postgres: PrivatePostgres, tmp_path: Path
) -> None:
    engine_url = engine_database
    # Analytics on a database server of the test's own, which is stopped midway.
    analytics = AnalyticsProcess(private_postgres.url, tmp_path / "analytics.log")
    await analytics.start()
    engine = await launch(
        engine_url,
        tmp_path / "engine.log",
        env={"STEPSTREAM_ANALYTICS_TARGET": f"127.0.0.1:{analytics.port}"},
    )
    try:
        async with aio.insecure_channel(engine.target) as channel:
            stub = engine_pb2_grpc.EngineServiceStub(channel)
            await register(stub, definition(flaky_workflow()))
            first = await start_executions(stub, EXECUTIONS // 2)
            await asyncio.to_thread(private_postgres.stop)
            second = await start_executions(stub, EXECUTIONS - EXECUTIONS // 2)
            await wait_for_terminal(stub, first + second)
            await asyncio.sleep(1.0)  # the relay meets UNAVAILABLE and backs off
            await asyncio.to_thread(private_postgres.start)
        await wait_for_empty_outbox(engine_url)
        await assert_aggregates_match(engine_url, analytics.port)
        assert analytics.process is not None
        assert analytics.process.returncode is None  # it rode the outage out
    finally:
        await engine.ensure_stopped()
        await analytics.stop()

"""An in-process analytics service on 127.0.0.1 port 0, over SQLite or Postgres."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any

import grpc
import pytest
from pydantic import SecretStr
from stepstream.v1 import analytics_pb2_grpc

from analytics_service.main import RunningService, start
from analytics_service.settings import AnalyticsSettings
from tests.unit.analytics.builders import T0


class ManualClock:
    """A clock the test moves by hand."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def service_settings(database_url: str, **overrides: Any) -> AnalyticsSettings:
    values: dict[str, Any] = {
        "address": "127.0.0.1:0",
        "metrics_port": 0,
        "database_url": SecretStr(database_url),
        "alert_interval_seconds": 3600.0,
        "fact_retention_days": 0,
        "webhook_backoff_seconds": 0.01,
        "shutdown_grace_seconds": 0.5,
    }
    values.update(overrides)
    return AnalyticsSettings(**values)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0 + timedelta(hours=1))


@asynccontextmanager
async def running_service(
    database_url: str, clock: ManualClock, **overrides: Any
) -> AsyncIterator[RunningService]:
    running = await start(service_settings(database_url, **overrides), clock=clock)
    try:
        yield running
    finally:
        await running.stop(0.5)


@asynccontextmanager
async def connected(
    running: RunningService,
) -> AsyncIterator[analytics_pb2_grpc.AnalyticsServiceAsyncStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        yield analytics_pb2_grpc.AnalyticsServiceStub(channel)


@pytest.fixture
async def service(database_url: str, clock: ManualClock) -> AsyncIterator[RunningService]:
    async with running_service(database_url, clock) as running:
        yield running


@pytest.fixture
async def stub(
    service: RunningService,
) -> AsyncIterator[analytics_pb2_grpc.AnalyticsServiceAsyncStub]:
    async with connected(service) as connection:
        yield connection


async def wait_for_watchers(service: RunningService, count: int) -> None:
    for _ in range(200):
        if service.use_cases.broadcaster.subscriber_count >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the WatchAlerts stream never subscribed")

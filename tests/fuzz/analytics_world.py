"""An analytics service for the fuzz tier, holding facts and an alert rule to aim at.

Started as in production (`analytics_service.main.start`) over a fresh SQLite file or
Postgres database, on the manual clock of the analytics tests.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta

import grpc
from stepstream.v1 import analytics_pb2, analytics_pb2_grpc, events_pb2

from analytics_service.main import RunningService
from tests.fuzz.generator import Strings
from tests.fuzz.pools import a_batch, a_rule
from tests.integration.analytics.conftest import ManualClock, running_service
from tests.unit.analytics.builders import T0


@dataclass
class AnalyticsWorld:
    running: RunningService
    clock: ManualClock
    stub: analytics_pb2_grpc.AnalyticsServiceAsyncStub
    strings: Strings

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.running.port}"


@contextlib.asynccontextmanager
async def analytics_world(database_url: str) -> AsyncIterator[AnalyticsWorld]:
    clock = ManualClock(T0 + timedelta(hours=1))
    async with (
        running_service(database_url, clock) as running,
        grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel,
    ):
        stub = analytics_pb2_grpc.AnalyticsServiceStub(channel)
        yield AnalyticsWorld(running, clock, stub, await _plausible_things(stub))


async def ingest(
    stub: analytics_pb2_grpc.AnalyticsServiceAsyncStub, batch: events_pb2.EventBatch
) -> analytics_pb2.IngestEventsResponse:
    async def requests() -> AsyncIterator[analytics_pb2.IngestEventsRequest]:
        yield analytics_pb2.IngestEventsRequest(batch=batch)

    response: analytics_pb2.IngestEventsResponse = await stub.IngestEvents(requests())
    return response


async def _plausible_things(stub: analytics_pb2_grpc.AnalyticsServiceAsyncStub) -> Strings:
    rng = random.Random(0)
    for _ in range(5):
        await ingest(stub, a_batch(rng))
    created = await stub.CreateAlertRule(analytics_pb2.CreateAlertRuleRequest(rule=a_rule(rng)))
    return {
        "tenant": ["", "default"],
        "workflow_id": ["orders", ""],
        "step_id": ["", "charge"],
        "rule_id": [created.rule.id, "missing"],
        "id": [created.rule.id, ""],
        "page_token": [""],
        "statuses": ["FAILED", "COMPLETED"],
    }

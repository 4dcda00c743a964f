"""Generated requests against the analytics service, on SQLite and on Postgres.

Never INTERNAL or UNKNOWN; no unary call frozen; health answered within its 1 s deadline
all along; afterwards the service still ingests and answers, its alert loop still fires
rules, and the database holds no partial rows. The counts by status code are printed.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from datetime import timedelta

import pytest
from google.protobuf import duration_pb2
from stepstream.v1 import analytics_pb2, events_pb2

from tests.fuzz.analytics_world import AnalyticsWorld, analytics_world, ingest
from tests.fuzz.burst import BurstResult, burst_from_another_process, probing
from tests.fuzz.conftest import burst_timeout, requests_per_run
from tests.fuzz.invariants import ANALYTICS_RULES, broken_rules
from tests.fuzz.pools import a_range
from tests.integration.analytics.conftest import wait_for_watchers
from tests.integration.analytics.wire import to_proto
from tests.unit.analytics.builders import execution_event

ANALYTICS_SERVICE = analytics_pb2.DESCRIPTOR.services_by_name["AnalyticsService"]
WAIT_SECONDS = 20.0


def _report(result: BurstResult, title: str, capsys: pytest.CaptureFixture[str]) -> None:
    with capsys.disabled():
        print(f"\n{result.summary(title)}")
        for method, counts in sorted(result.by_method.items()):
            print(f"  {method}: {dict(counts.most_common())}")


@pytest.mark.timeout(burst_timeout())
async def test_generated_requests_never_break_analytics(
    database_url: str,
    fuzz_seed: str,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="analytics_service")
    async with analytics_world(database_url) as world:
        async with probing(world.target, ANALYTICS_SERVICE.full_name) as probe:
            started = time.perf_counter()
            result = await burst_from_another_process(
                {
                    "service": "analytics",
                    "target": world.target,
                    "seed": fuzz_seed,
                    "count": requests_per_run(),
                    "strings": world.strings,
                }
            )
        elapsed = time.perf_counter() - started
        _report(result, f"analytics on {database_url.split('+')[0]} in {elapsed:.1f}s", capsys)
        replay = f"replay with STEPSTREAM_FUZZ_SEED={fuzz_seed}"
        assert result.findings == [], f"{replay}:\n" + "\n".join(map(str, result.findings))
        assert probe.missed == [], f"{replay}: health missed {probe.missed[:5]}"
        assert probe.answered > 0
        await _still_ingests_and_alerts(world)
        problems = await broken_rules(world.running.database.engine, ANALYTICS_RULES)
        assert problems == [], f"{replay}: partial rows: {problems}"
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], f"{replay}: analytics logged errors: {errors[:5]}"


async def _still_ingests_and_alerts(world: AnalyticsWorld) -> None:
    """A rule on a fresh workflow fires once its first execution is ingested."""
    rule = analytics_pb2.AlertRule(
        name="after the burst",
        workflow_id="after-the-burst",
        metric=analytics_pb2.ALERT_METRIC_EXECUTION_COUNT,
        comparator=analytics_pb2.COMPARATOR_GREATER_THAN,
        threshold=0,
        window=duration_pb2.Duration(seconds=3600),
        enabled=True,
    )
    created = await world.stub.CreateAlertRule(analytics_pb2.CreateAlertRuleRequest(rule=rule))
    watch = world.stub.WatchAlerts(analytics_pb2.WatchAlertsRequest(rule_id=created.rule.id))
    finished = world.clock.now - timedelta(minutes=1)
    event = execution_event("after", workflow_id="after-the-burst", finished_at=finished)
    batch = events_pb2.EventBatch(events=[to_proto(event)], batch_id="after")
    await wait_for_watchers(world.running, 1)
    accepted = await ingest(world.stub, batch)
    assert accepted.accepted == 1
    fired = await asyncio.wait_for(watch.read(), WAIT_SECONDS)
    assert isinstance(fired, analytics_pb2.WatchAlertsResponse), "the watch ended"
    assert fired.event.state == analytics_pb2.ALERT_STATE_FIRING
    watch.cancel()
    metrics = await world.stub.GetWorkflowMetrics(
        analytics_pb2.GetWorkflowMetricsRequest(
            workflow_id="after-the-burst", range=a_range(random.Random(0))
        )
    )
    assert metrics.metrics.executions == 1

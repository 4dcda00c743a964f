"""Alert transitions leave the service: WatchAlerts streams, webhooks, Prometheus counters."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import httpx
from google.protobuf import duration_pb2
from stepstream.v1 import analytics_pb2

from analytics_service.core.events import ExecutionEvent
from tests.integration.analytics.conftest import (
    ManualClock,
    connected,
    running_service,
    wait_for_watchers,
)
from tests.integration.analytics.webhook_server import webhook_server
from tests.integration.analytics.wire import ingest
from tests.unit.analytics.builders import execution_event


async def next_alert(watch: Any) -> analytics_pb2.AlertEvent:
    response = await asyncio.wait_for(watch.read(), timeout=10)
    assert isinstance(response, analytics_pb2.WatchAlertsResponse)
    return response.event


def execution_count_rule(webhook_url: str = "") -> analytics_pb2.AlertRule:
    return analytics_pb2.AlertRule(
        name="orders running",
        workflow_id="orders",
        metric=analytics_pb2.ALERT_METRIC_EXECUTION_COUNT,
        comparator=analytics_pb2.COMPARATOR_GREATER_OR_EQUAL,
        threshold=2,
        window=duration_pb2.Duration(seconds=300),
        webhook_url=webhook_url,
        enabled=True,
    )


def recent_executions(clock: ManualClock, count: int) -> list[ExecutionEvent]:
    finished = clock.now - timedelta(minutes=1)
    return [execution_event(f"e{i}", finished_at=finished) for i in range(count)]


async def test_ingest_fires_a_rule_streamed_posted_and_counted(
    database_url: str, clock: ManualClock
) -> None:
    async with (
        webhook_server([500, 200]) as hook,
        running_service(database_url, clock) as service,
        connected(service) as stub,
    ):
        created = await stub.CreateAlertRule(
            analytics_pb2.CreateAlertRuleRequest(rule=execution_count_rule(hook.url))
        )
        watch = stub.WatchAlerts(analytics_pb2.WatchAlertsRequest())
        await wait_for_watchers(service, 1)

        await ingest(stub, [recent_executions(clock, 1)])
        await ingest(stub, [recent_executions(clock, 2)])

        event = await next_alert(watch)
        assert (event.rule_id, event.state) == (created.rule.id, analytics_pb2.ALERT_STATE_FIRING)
        assert event.value == 2.0
        await asyncio.wait_for(hook.received.wait(), timeout=10)
        assert hook.requests == 2  # the first answer was a 500: retried
        assert hook.bodies[0]["state"] == "firing"
        assert hook.bodies[0]["rule_id"] == created.rule.id

        async with httpx.AsyncClient() as client:
            exposition = (await client.get(f"http://127.0.0.1:{service.metrics_port}/metrics")).text
        assert 'stepstream_analytics_alert_transitions_total{state="firing"} 1.0' in exposition
        assert "stepstream_analytics_events_ingested_total 2.0" in exposition
        assert (
            'stepstream_analytics_webhook_deliveries_total{outcome="delivered"} 1.0' in exposition
        )
        listed = await stub.ListAlertRules(analytics_pb2.ListAlertRulesRequest())
        assert listed.rules[0].state == analytics_pb2.ALERT_STATE_FIRING
        watch.cancel()


async def test_the_timer_resolves_a_rule_once_its_window_passes(
    database_url: str, clock: ManualClock
) -> None:
    async with (
        running_service(database_url, clock, alert_interval_seconds=0.1) as service,
        connected(service) as stub,
    ):
        await stub.CreateAlertRule(
            analytics_pb2.CreateAlertRuleRequest(rule=execution_count_rule())
        )
        watch = stub.WatchAlerts(analytics_pb2.WatchAlertsRequest())
        await wait_for_watchers(service, 1)
        await ingest(stub, [recent_executions(clock, 3)])
        firing = await next_alert(watch)
        assert firing.state == analytics_pb2.ALERT_STATE_FIRING

        clock.advance(hours=1)  # no new events: only the timer can notice
        resolved = await next_alert(watch)
        assert resolved.state == analytics_pb2.ALERT_STATE_RESOLVED
        assert resolved.value == 0.0
        watch.cancel()


async def test_a_watcher_on_one_replica_sees_what_another_replica_fired(
    postgres_url: str, clock: ManualClock
) -> None:
    async with (
        running_service(postgres_url, clock) as first,
        running_service(postgres_url, clock) as second,
        connected(first) as to_first,
        connected(second) as to_second,
    ):
        created = await to_first.CreateAlertRule(
            analytics_pb2.CreateAlertRuleRequest(rule=execution_count_rule())
        )
        on_first = to_first.WatchAlerts(analytics_pb2.WatchAlertsRequest())
        on_second = to_second.WatchAlerts(analytics_pb2.WatchAlertsRequest())
        await wait_for_watchers(first, 1)
        await wait_for_watchers(second, 1)
        # Only the first replica ingests, so only it evaluates and records the transition.
        await ingest(to_first, [recent_executions(clock, 2)])
        for watch in (on_first, on_second):
            event = await next_alert(watch)
            assert (event.rule_id, event.state) == (
                created.rule.id,
                analytics_pb2.ALERT_STATE_FIRING,
            )
            assert event.value == 2.0
            watch.cancel()

"""Protobuf requests into domain values: defaults, enums and named field violations."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from google.protobuf import duration_pb2
from stepstream.v1 import analytics_pb2, events_pb2

from analytics_service.core.alerts import AlertMetric, Comparator
from analytics_service.core.errors import InvalidArgumentError
from analytics_service.core.events import EventKind, StepStatus
from analytics_service.core.reports import Granularity, TimeRange
from analytics_service.transport import requests


def test_an_unset_range_is_unbounded_and_an_empty_tenant_is_default() -> None:
    selection = requests.selection("", "orders", analytics_pb2.TimeRange())
    assert selection.tenant == "default"
    assert selection.time_range == TimeRange(requests.EARLIEST, requests.LATEST)


def test_ranges_resolve_to_the_minutes_that_start_inside_them() -> None:
    window = TimeRange(
        datetime(2026, 1, 1, 0, 0, 30, tzinfo=UTC), datetime(2026, 1, 1, 0, 3, tzinfo=UTC)
    )
    start, end = window.minute_range()
    assert end - start == 2  # 00:01 and 00:02; 00:00 started before the range


def test_unspecified_enums_take_the_documented_defaults() -> None:
    assert requests.granularity(analytics_pb2.GRANULARITY_UNSPECIFIED) is Granularity.HOUR
    assert requests.granularity(analytics_pb2.GRANULARITY_DAY) is Granularity.DAY
    with pytest.raises(InvalidArgumentError):
        requests.comparator(analytics_pb2.COMPARATOR_UNSPECIFIED, "rule.comparator")


def test_a_step_event_maps_every_field() -> None:
    message = events_pb2.ExecutionEvent(
        event_id="ev1",
        execution_id="e1",
        workflow_id="orders",
        kind=events_pb2.EVENT_KIND_STEP_STATUS_CHANGED,
        step_id="charge",
        attempt=2,
        step_status=events_pb2.STEP_STATUS_TIMED_OUT,
        duration=duration_pb2.Duration(seconds=1, nanos=500_000_000),
        error=events_pb2.Failure(type="Timeout", message="too slow"),
        depends_on=["fetch"],
    )
    message.timestamp.FromSeconds(1_700_000_000)
    [event] = requests.event_batch(events_pb2.EventBatch(events=[message]), "batch")
    assert event.kind is EventKind.STEP_STATUS_CHANGED
    assert event.step_status is StepStatus.TIMED_OUT
    assert (event.tenant, event.attempt, event.duration_seconds) == ("default", 2, 1.5)
    assert (event.error_type, event.depends_on) == ("Timeout", ("fetch",))
    assert event.started_at is None


def test_a_rule_maps_metric_comparator_and_window() -> None:
    rule = requests.new_alert_rule(
        analytics_pb2.AlertRule(
            name="slow",
            workflow_id="orders",
            metric=analytics_pb2.ALERT_METRIC_P95_DURATION_SECONDS,
            comparator=analytics_pb2.COMPARATOR_LESS_OR_EQUAL,
            window=duration_pb2.Duration(seconds=300),
        )
    )
    assert rule.metric is AlertMetric.P95_DURATION_SECONDS
    assert rule.comparator is Comparator.LESS_OR_EQUAL
    assert rule.window_seconds == 300.0

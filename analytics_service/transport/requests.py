"""Protobuf requests into domain values, with every invalid field named."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import TypeVar

from google.protobuf import duration_pb2, timestamp_pb2
from stepstream.v1 import analytics_pb2, events_pb2

from analytics_service.core import events as domain
from analytics_service.core.alerting import NewAlertRule
from analytics_service.core.alerts import AlertMetric, AlertRuleChanges, Comparator
from analytics_service.core.errors import FieldViolation, InvalidArgumentError
from analytics_service.core.events import DEFAULT_TENANT
from analytics_service.core.queries import FailureRanking, Selection
from analytics_service.core.reports import Granularity, TimeRange, TrendMetric

# Unset range bounds mean "from the beginning" and "without end".
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9999, 1, 1, tzinfo=UTC)

E = TypeVar("E", bound=enum.Enum)


def tenant_of(tenant: str) -> str:
    return tenant or DEFAULT_TENANT


def timestamp(value: timestamp_pb2.Timestamp) -> datetime:
    return value.ToDatetime(tzinfo=UTC)


def seconds(value: duration_pb2.Duration) -> float:
    return value.seconds + value.nanos / 1e9


def enum_value(domain_enum: type[E], prefix: str, name: str) -> E | None:
    """The domain member named like the protobuf value minus its prefix; None if unset."""
    member = name.removeprefix(prefix)
    if member == "UNSPECIFIED" or member not in domain_enum.__members__:
        return None
    return domain_enum[member]


def time_range(message: analytics_pb2.TimeRange, field: str = "range") -> TimeRange:
    start = timestamp(message.start) if message.HasField("start") else EARLIEST
    end = timestamp(message.end) if message.HasField("end") else LATEST
    if end <= start:
        raise InvalidArgumentError.single(f"{field}.end", "must be after range.start")
    return TimeRange(start, end)


def require(value: str, field: str) -> str:
    if not value:
        raise InvalidArgumentError.single(field, "must not be empty")
    return value


def selection(
    tenant: str,
    workflow_id: str,
    message: analytics_pb2.TimeRange,
    *,
    step_id: str = "",
    field: str = "range",
) -> Selection:
    return Selection(
        tenant=tenant_of(tenant),
        workflow_id=workflow_id,
        time_range=time_range(message, field),
        step_id=step_id,
    )


def granularity(value: int) -> Granularity:
    name = analytics_pb2.Granularity.Name(value)  # type: ignore[arg-type]
    return enum_value(Granularity, "GRANULARITY_", name) or Granularity.HOUR


def trend_metric(value: int) -> TrendMetric:
    name = analytics_pb2.TrendMetric.Name(value)  # type: ignore[arg-type]
    return enum_value(TrendMetric, "TREND_METRIC_", name) or TrendMetric.DURATION


def failure_ranking(value: int) -> FailureRanking:
    name = analytics_pb2.FailureRanking.Name(value)  # type: ignore[arg-type]
    return enum_value(FailureRanking, "FAILURE_RANKING_", name) or FailureRanking.FAILURES


def non_negative(value: int, field: str) -> int:
    if value < 0:
        raise InvalidArgumentError.single(field, "must not be negative")
    return value


_EVENT_KINDS = {
    events_pb2.EVENT_KIND_EXECUTION_STATUS_CHANGED: domain.EventKind.EXECUTION_STATUS_CHANGED,
    events_pb2.EVENT_KIND_STEP_STATUS_CHANGED: domain.EventKind.STEP_STATUS_CHANGED,
    events_pb2.EVENT_KIND_STEP_FALLBACK_FINISHED: domain.EventKind.STEP_FALLBACK_FINISHED,
    events_pb2.EVENT_KIND_STEP_COMPENSATION_FINISHED: domain.EventKind.STEP_COMPENSATION_FINISHED,
}


def _event_violations(event: events_pb2.ExecutionEvent, path: str) -> list[FieldViolation]:
    violations = [
        FieldViolation(f"{path}.{name}", "must not be empty")
        for name in ("event_id", "execution_id", "workflow_id")
        if not getattr(event, name)
    ]
    if not event.HasField("timestamp"):
        violations.append(FieldViolation(f"{path}.timestamp", "must be set"))
    if event.kind == events_pb2.EVENT_KIND_STEP_STATUS_CHANGED and not event.step_id:
        violations.append(FieldViolation(f"{path}.step_id", "must be set on step events"))
    return violations


def execution_event(event: events_pb2.ExecutionEvent) -> domain.ExecutionEvent:
    execution_status = events_pb2.ExecutionStatus.Name(event.execution_status)
    step_status = events_pb2.StepStatus.Name(event.step_status)
    return domain.ExecutionEvent(
        event_id=event.event_id,
        tenant=tenant_of(event.tenant),
        execution_id=event.execution_id,
        workflow_id=event.workflow_id,
        workflow_version=event.workflow_version,
        sequence=event.sequence,
        occurred_at=timestamp(event.timestamp),
        kind=_EVENT_KINDS.get(event.kind, domain.EventKind.OTHER),
        step_id=event.step_id,
        attempt=event.attempt,
        execution_status=enum_value(domain.ExecutionStatus, "EXECUTION_STATUS_", execution_status)
        or domain.ExecutionStatus.UNSPECIFIED,
        step_status=enum_value(domain.StepStatus, "STEP_STATUS_", step_status)
        or domain.StepStatus.UNSPECIFIED,
        duration_seconds=seconds(event.duration),
        error_type=event.error.type,
        error_message=event.error.message,
        action=event.action,
        started_at=timestamp(event.started_at) if event.HasField("started_at") else None,
        parent_execution_id=event.parent_execution_id,
        estimated_time_saved_seconds=seconds(event.estimated_time_saved),
        business_value=event.business_value,
        depends_on=tuple(event.depends_on),
    )


def event_batch(batch: events_pb2.EventBatch, path: str) -> list[domain.ExecutionEvent]:
    violations = [
        violation
        for index, event in enumerate(batch.events)
        for violation in _event_violations(event, f"{path}.events[{index}]")
    ]
    if violations:
        raise InvalidArgumentError(violations=tuple(violations))
    return [execution_event(event) for event in batch.events]


def alert_metric(value: int, field: str) -> AlertMetric:
    name = analytics_pb2.AlertMetric.Name(value)  # type: ignore[arg-type]
    metric = enum_value(AlertMetric, "ALERT_METRIC_", name)
    if metric is None:
        raise InvalidArgumentError.single(field, "must be set")
    return metric


def comparator(value: int, field: str) -> Comparator:
    name = analytics_pb2.Comparator.Name(value)  # type: ignore[arg-type]
    chosen = enum_value(Comparator, "COMPARATOR_", name)
    if chosen is None:
        raise InvalidArgumentError.single(field, "must be set")
    return chosen


def new_alert_rule(rule: analytics_pb2.AlertRule) -> NewAlertRule:
    return NewAlertRule(
        tenant=tenant_of(rule.tenant),
        name=rule.name,
        workflow_id=rule.workflow_id,
        step_id=rule.step_id,
        metric=alert_metric(rule.metric, "rule.metric"),
        comparator=comparator(rule.comparator, "rule.comparator"),
        threshold=rule.threshold,
        window_seconds=seconds(rule.window),
        webhook_url=rule.webhook_url,
        enabled=rule.enabled,
    )


def alert_rule_changes(request: analytics_pb2.UpdateAlertRuleRequest) -> AlertRuleChanges:
    unspecified = 0
    return AlertRuleChanges(
        name=request.name if request.HasField("name") else None,
        metric=None if request.metric == unspecified else alert_metric(request.metric, "metric"),
        comparator=None
        if request.comparator == unspecified
        else comparator(request.comparator, "comparator"),
        threshold=request.threshold if request.HasField("threshold") else None,
        window_seconds=seconds(request.window) if request.HasField("window") else None,
        webhook_url=request.webhook_url if request.HasField("webhook_url") else None,
        enabled=request.enabled if request.HasField("enabled") else None,
    )


_STEP_STATUSES = frozenset(status.value for status in domain.TERMINAL_STEP_STATUSES)
_EXECUTION_STATUSES = frozenset(status.value for status in domain.TERMINAL_EXECUTION_STATUSES)


def export_statuses(statuses: list[str], *, executions: bool) -> tuple[str, ...]:
    known = _EXECUTION_STATUSES if executions else _STEP_STATUSES
    unknown = [status for status in statuses if status not in known]
    if unknown:
        raise InvalidArgumentError.single(
            "statuses", f"unknown {unknown}; expected some of {sorted(known)}"
        )
    return tuple(statuses)

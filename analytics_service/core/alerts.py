"""Alert rules: a condition on a metric of a workflow or step, and its state machine."""

from __future__ import annotations

import enum
import operator
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime


class AlertMetric(enum.Enum):
    FAILURE_RATE = "failure_rate"
    P95_DURATION_SECONDS = "p95_duration_seconds"
    EXECUTION_COUNT = "execution_count"
    INGEST_LAG_SECONDS = "ingest_lag_seconds"


class Comparator(enum.Enum):
    GREATER_THAN = ">"
    GREATER_OR_EQUAL = ">="
    LESS_THAN = "<"
    LESS_OR_EQUAL = "<="
    EQUAL = "=="
    NOT_EQUAL = "!="

    def holds(self, value: float, threshold: float) -> bool:
        return _COMPARISONS[self](value, threshold)


_COMPARISONS: dict[Comparator, Callable[[float, float], bool]] = {
    Comparator.GREATER_THAN: operator.gt,
    Comparator.GREATER_OR_EQUAL: operator.ge,
    Comparator.LESS_THAN: operator.lt,
    Comparator.LESS_OR_EQUAL: operator.le,
    Comparator.EQUAL: operator.eq,
    Comparator.NOT_EQUAL: operator.ne,
}


class AlertState(enum.Enum):
    OK = "ok"
    FIRING = "firing"
    RESOLVED = "resolved"


@dataclass(frozen=True)
class AlertRule:
    id: str
    tenant: str
    name: str
    workflow_id: str
    step_id: str
    metric: AlertMetric
    comparator: Comparator
    threshold: float
    window_seconds: float
    webhook_url: str
    enabled: bool
    state: AlertState
    created_at: datetime


@dataclass(frozen=True)
class AlertRuleChanges:
    """A partial update: None leaves a field as it is."""

    name: str | None = None
    metric: AlertMetric | None = None
    comparator: Comparator | None = None
    threshold: float | None = None
    window_seconds: float | None = None
    webhook_url: str | None = None
    enabled: bool | None = None


@dataclass(frozen=True)
class AlertEvent:
    """A rule's transition to FIRING or RESOLVED."""

    id: str
    rule_id: str
    tenant: str
    state: AlertState
    value: float
    threshold: float
    occurred_at: datetime
    message: str


def next_state(current: AlertState, condition_holds: bool) -> AlertState | None:
    """The state a rule moves to, or None when it stays where it is."""
    if condition_holds and current is not AlertState.FIRING:
        return AlertState.FIRING
    if not condition_holds and current is AlertState.FIRING:
        return AlertState.RESOLVED
    return None


def describe(rule: AlertRule, state: AlertState, value: float) -> str:
    subject = f"{rule.workflow_id}/{rule.step_id}" if rule.step_id else rule.workflow_id
    verb = "firing" if state is AlertState.FIRING else "resolved"
    return (
        f"{rule.name} {verb}: {rule.metric.value} of {subject} is {value:g} "
        f"({rule.comparator.value} {rule.threshold:g} over {rule.window_seconds:g}s)"
    )

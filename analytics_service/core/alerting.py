"""Alert rules as use cases: CRUD, and evaluation that moves rules between states."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import uuid
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from analytics_service.core.alerts import (
    AlertEvent,
    AlertMetric,
    AlertRule,
    AlertRuleChanges,
    AlertState,
    Comparator,
    describe,
    next_state,
)
from analytics_service.core.auth import TenantScope
from analytics_service.core.errors import (
    FieldViolation,
    InvalidArgumentError,
    NotFoundError,
    StorageError,
)
from analytics_service.core.histogram import Histogram
from analytics_service.core.ports import (
    Clock,
    Database,
    GroupKey,
    Level,
    MinuteRange,
    RollupQuery,
    UnitOfWork,
)
from analytics_service.core.reports import duration_stats
from analytics_service.core.rollups import SECONDS_PER_MINUTE, RollupCounts, minute_of

logger = logging.getLogger(__name__)

MAX_PAGE_SIZE = 500
DEFAULT_PAGE_SIZE = 100


class AlertSink(Protocol):
    async def publish(self, event: AlertEvent, rule: AlertRule) -> None: ...


@dataclass(frozen=True)
class NewAlertRule:
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


def rule_violations(
    *, name: str, threshold: float, window_seconds: float, webhook_url: str
) -> list[FieldViolation]:
    violations = []
    if not name.strip():
        violations.append(FieldViolation("rule.name", "must not be empty"))
    if not math.isfinite(threshold):
        violations.append(FieldViolation("rule.threshold", "must be a finite number"))
    if window_seconds < 60:
        violations.append(FieldViolation("rule.window", "must be at least one minute"))
    if webhook_url and not webhook_url.startswith(("http://", "https://")):
        violations.append(FieldViolation("rule.webhook_url", "must be an http(s) URL"))
    return violations


class AlertRules:
    """Create, read, update and delete rules, each within the caller's tenants."""

    def __init__(self, database: Database, clock: Clock) -> None:
        self._database = database
        self._clock = clock

    async def create(self, new: NewAlertRule) -> AlertRule:
        violations = rule_violations(
            name=new.name,
            threshold=new.threshold,
            window_seconds=new.window_seconds,
            webhook_url=new.webhook_url,
        )
        if not new.workflow_id:
            violations.append(FieldViolation("rule.workflow_id", "must not be empty"))
        if violations:
            raise InvalidArgumentError(violations=tuple(violations))
        rule = AlertRule(
            id=str(uuid.uuid4()),
            state=AlertState.OK,
            created_at=self._clock(),
            **vars(new),
        )
        async with self._database.transaction() as uow:
            await uow.alerts.add_rule(rule)
        return rule

    async def list(
        self, tenant: str, workflow_id: str, page_size: int, page_token: str
    ) -> tuple[list[AlertRule], str]:
        """One page of rules ordered by id, and the token of the next page ("" at the end)."""
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        async with self._database.transaction() as uow:
            rules = await uow.alerts.list_rules(tenant, workflow_id, page_token, size + 1)
        if len(rules) > size:
            return rules[:size], rules[size - 1].id
        return rules, ""

    async def update(
        self, rule_id: str, changes: AlertRuleChanges, scope: TenantScope
    ) -> AlertRule:
        async with self._database.transaction() as uow:
            current = await _visible_rule(uow, rule_id, scope)
            _check_changes(current, changes)
            updated = await uow.alerts.update_rule(rule_id, changes)
        if updated is None:
            raise NotFoundError(kind="alert rule", key=rule_id)
        return updated

    async def delete(self, rule_id: str, scope: TenantScope) -> None:
        async with self._database.transaction() as uow:
            await _visible_rule(uow, rule_id, scope)
            await uow.alerts.delete_rule(rule_id)


async def _visible_rule(uow: UnitOfWork, rule_id: str, scope: TenantScope) -> AlertRule:
    rule = await uow.alerts.get_rule(rule_id)
    # Another tenant's rule is reported as missing: its existence is not the caller's business.
    if rule is None or not scope.allows(rule.tenant):
        raise NotFoundError(kind="alert rule", key=rule_id)
    return rule


def _check_changes(current: AlertRule, changes: AlertRuleChanges) -> None:
    violations = rule_violations(
        name=current.name if changes.name is None else changes.name,
        threshold=current.threshold if changes.threshold is None else changes.threshold,
        window_seconds=(
            current.window_seconds if changes.window_seconds is None else changes.window_seconds
        ),
        webhook_url=current.webhook_url if changes.webhook_url is None else changes.webhook_url,
    )
    if violations:
        raise InvalidArgumentError(violations=tuple(violations))


def window_start_minute(now: datetime, window_seconds: float) -> int:
    """The first rollup minute of a window ending now: the first that starts at or after
    `now - window`. Rollups have minute resolution, so a window covers at least its length
    less a minute, and never data older than its length (README "Alert rules")."""
    start = now - timedelta(seconds=window_seconds)
    floor = minute_of(start)
    return floor if floor * SECONDS_PER_MINUTE == start.timestamp() else floor + 1


async def measure(uow: UnitOfWork, rule: AlertRule, clock: Clock) -> float | None:
    """The rule's metric over its window ending now; None when there is nothing to measure."""
    now = clock()
    minutes = MinuteRange(window_start_minute(now, rule.window_seconds), minute_of(now) + 1)
    if rule.metric is AlertMetric.INGEST_LAG_SECONDS:
        return await uow.rollups.max_ingest_lag(rule.tenant, rule.workflow_id, minutes)
    query = RollupQuery(
        tenant=rule.tenant,
        minutes=minutes,
        level=Level.STEP if rule.step_id else Level.EXECUTION,
        workflow_id=rule.workflow_id,
        step_id=rule.step_id or None,
    )
    counts = (await uow.rollups.counts(query)).get(GroupKey(), RollupCounts())
    if rule.metric is AlertMetric.EXECUTION_COUNT:
        return float(counts.total)
    if counts.total == 0:
        return None
    if rule.metric is AlertMetric.FAILURE_RATE:
        return counts.failures / counts.total
    histogram = (await uow.rollups.histograms(query)).get(GroupKey(), Histogram())
    return duration_stats(counts, histogram).p95


class AlertEvaluator:
    """Applies each enabled rule's condition and records the transitions it causes."""

    def __init__(
        self,
        database: Database,
        clock: Clock,
        sinks: Sequence[AlertSink],
        *,
        on_rule_failed: Callable[[AlertRule], None] = lambda _rule: None,
    ) -> None:
        self._database = database
        self._clock = clock
        self._sinks = sinks
        self._on_rule_failed = on_rule_failed
        self._lock = asyncio.Lock()

    async def evaluate(self, scopes: Collection[tuple[str, str]] | None = None) -> list[AlertEvent]:
        """Evaluate the rules of `scopes` ((tenant, workflow) pairs), or all of them."""
        async with self._lock:
            async with self._database.transaction() as uow:
                rules = await uow.alerts.enabled_rules(None if scopes is None else list(scopes))
            events = []
            for rule in rules:
                event = await self._evaluate_alone(rule)
                if event is not None:
                    events.append(event)
                    await self._publish(event, rule)
        return events

    async def _evaluate_alone(self, rule: AlertRule) -> AlertEvent | None:
        """One rule's evaluation, whose failure is that rule's alone: the rules after it
        are still evaluated, this round and every later one."""
        try:
            return await self._evaluate(rule)
        except StorageError:
            raise  # the database is down: no rule can be evaluated, the round ends
        except Exception:
            logger.exception(
                "alert rule %s (%s) could not be evaluated; skipped this round", rule.id, rule.name
            )
            self._on_rule_failed(rule)
            return None

    async def _evaluate(self, rule: AlertRule) -> AlertEvent | None:
        async with self._database.transaction() as uow:
            value = await measure(uow, rule, self._clock)
            if value is None:
                return None
            new_state = next_state(rule.state, rule.comparator.holds(value, rule.threshold))
            # The conditional transition keeps replicas from reporting the same change twice.
            if new_state is None or not await uow.alerts.transition(rule.id, rule.state, new_state):
                return None
            event = AlertEvent(
                id=str(uuid.uuid4()),
                rule_id=rule.id,
                tenant=rule.tenant,
                state=new_state,
                value=value,
                threshold=rule.threshold,
                occurred_at=self._clock(),
                message=describe(rule, new_state, value),
            )
            await uow.alerts.add_event(event)
        return event

    async def _publish(self, event: AlertEvent, rule: AlertRule) -> None:
        for sink in self._sinks:
            try:
                await sink.publish(event, rule)
            except Exception:
                # The transition is stored; one failing sink must not starve the others.
                logger.exception("alert sink %s failed for rule %s", type(sink).__name__, rule.id)


class AlertLoop:
    """Evaluates rules when batches arrive (their workflows) and on a timer (all rules).

    One task does all the work, so evaluations never overlap and requests that arrive while
    one runs are merged into the next.
    """

    def __init__(self, evaluator: AlertEvaluator, interval_seconds: float) -> None:
        self._evaluator = evaluator
        self._interval = interval_seconds
        self._pending: set[tuple[str, str]] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def request(self, scopes: Collection[tuple[str, str]]) -> None:
        self._pending.update(scopes)
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="alert-loop")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval)
            self._wake.clear()
            scopes, self._pending = self._pending, set()
            try:
                await self._evaluator.evaluate(scopes or None)
            except Exception:
                logger.exception("alert evaluation failed; retrying on the next round")

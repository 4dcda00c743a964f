"""Alert evaluation against stored rollups: every comparator, every metric, transitions."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from datetime import timedelta

import pytest

from analytics_service.core.alerting import AlertEvaluator, AlertRules, NewAlertRule
from analytics_service.core.alerts import (
    AlertEvent,
    AlertMetric,
    AlertRule,
    AlertState,
    Comparator,
)
from analytics_service.core.events import ExecutionEvent, ExecutionStatus, StepStatus
from analytics_service.core.ingest import Ingestor
from analytics_service.storage.database import SqlDatabase, create_engine
from analytics_service.storage.migrate import upgrade
from tests.integration.analytics.conftest import ManualClock
from tests.unit.analytics.builders import execution_event, step_event


@dataclass
class RecordingSink:
    events: list[AlertEvent] = field(default_factory=list)

    async def publish(self, event: AlertEvent, rule: AlertRule) -> None:
        self.events.append(event)


@dataclass
class Harness:
    database: SqlDatabase
    clock: ManualClock
    ingestor: Ingestor
    rules: AlertRules
    evaluator: AlertEvaluator
    sink: RecordingSink

    async def add_rule(
        self, metric: AlertMetric, comparator: Comparator, threshold: float, step_id: str = ""
    ) -> AlertRule:
        return await self.rules.create(
            NewAlertRule(
                tenant="default",
                name=f"{metric.value} {comparator.value} {threshold}",
                workflow_id="orders",
                step_id=step_id,
                metric=metric,
                comparator=comparator,
                threshold=threshold,
                window_seconds=600,
                webhook_url="",
                enabled=True,
            )
        )


@pytest.fixture
async def harness(database_url: str, clock: ManualClock) -> AsyncIterator[Harness]:
    engine = create_engine(database_url)
    await upgrade(engine)
    database = SqlDatabase(engine)
    sink = RecordingSink()
    yield Harness(
        database=database,
        clock=clock,
        ingestor=Ingestor(database, clock, None),
        rules=AlertRules(database, clock),
        evaluator=AlertEvaluator(database, clock, [sink]),
        sink=sink,
    )
    await database.close()


def charge_attempts(
    harness: Harness, failures: int, successes: int, prefix: str
) -> list[ExecutionEvent]:
    finished = harness.clock.now - timedelta(minutes=2)
    failed = [
        step_event(f"{prefix}{i}", "charge", status=StepStatus.FAILED, finished_at=finished)
        for i in range(failures)
    ]
    completed = [
        step_event(f"{prefix}ok{i}", "charge", seconds=2.0, finished_at=finished)
        for i in range(successes)
    ]
    return failed + completed


async def test_every_comparator_is_applied_to_the_measured_value(harness: Harness) -> None:
    await harness.ingestor.ingest(charge_attempts(harness, failures=1, successes=3, prefix="a"))
    holds_at_quarter = {
        Comparator.GREATER_THAN: False,
        Comparator.GREATER_OR_EQUAL: True,
        Comparator.LESS_THAN: False,
        Comparator.LESS_OR_EQUAL: True,
        Comparator.EQUAL: True,
        Comparator.NOT_EQUAL: False,
    }
    rules = {
        (await harness.add_rule(AlertMetric.FAILURE_RATE, c, 0.25, step_id="charge")).id: holds
        for c, holds in holds_at_quarter.items()
    }
    events = await harness.evaluator.evaluate()
    assert {e.rule_id for e in events} == {rule for rule, holds in rules.items() if holds}
    assert all(e.state is AlertState.FIRING and e.value == 0.25 for e in events)
    assert await harness.evaluator.evaluate() == []


async def test_firing_then_resolved_when_the_value_moves(harness: Harness) -> None:
    await harness.ingestor.ingest(charge_attempts(harness, failures=1, successes=1, prefix="a"))
    rule = await harness.add_rule(
        AlertMetric.FAILURE_RATE, Comparator.GREATER_THAN, 0.2, step_id="charge"
    )
    [firing] = await harness.evaluator.evaluate()
    assert (firing.rule_id, firing.state, firing.value) == (rule.id, AlertState.FIRING, 0.5)

    await harness.ingestor.ingest(charge_attempts(harness, failures=0, successes=8, prefix="b"))
    [resolved] = await harness.evaluator.evaluate({("default", "orders")})
    assert (resolved.state, resolved.value) == (AlertState.RESOLVED, 0.1)
    assert harness.sink.events == [firing, resolved]

    # The window slides past the data: nothing to measure, the rule keeps its state.
    harness.clock.advance(hours=1)
    assert await harness.evaluator.evaluate() == []


async def test_p95_execution_count_and_ingest_lag_metrics(harness: Harness) -> None:
    now = harness.clock.now
    late = [
        execution_event(
            f"e{i}",
            status=ExecutionStatus.COMPLETED,
            seconds=10.0 * (i + 1),
            finished_at=now - timedelta(minutes=3),
        )
        for i in range(20)
    ]
    await harness.ingestor.ingest(late)
    p95 = await harness.add_rule(AlertMetric.P95_DURATION_SECONDS, Comparator.GREATER_THAN, 180)
    count = await harness.add_rule(AlertMetric.EXECUTION_COUNT, Comparator.EQUAL, 20)
    lag = await harness.add_rule(AlertMetric.INGEST_LAG_SECONDS, Comparator.GREATER_OR_EQUAL, 180)
    quiet = await harness.add_rule(AlertMetric.EXECUTION_COUNT, Comparator.LESS_THAN, 20)
    events = {e.rule_id: e for e in await harness.evaluator.evaluate()}
    assert set(events) == {p95.id, count.id, lag.id}
    assert quiet.id not in events
    # Exact p95 of 10..200 by 10 is 190.5; the histogram is within 1%.
    assert events[p95.id].value == pytest.approx(190.5, rel=0.01)
    assert events[count.id].value == 20
    assert events[lag.id].value == pytest.approx(180.0)


async def test_a_rule_that_cannot_be_evaluated_does_not_stop_the_others(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    await harness.ingestor.ingest(charge_attempts(harness, failures=1, successes=1, prefix="a"))
    good = await harness.add_rule(
        AlertMetric.FAILURE_RATE, Comparator.GREATER_THAN, 0.2, step_id="charge"
    )
    # A 10,000-year window, as stored before the boundary refused one; its id sorts first,
    # so it is evaluated before the good rule. Its start is out of datetime's range.
    broken = replace(good, id="0-broken", name="broken", window_seconds=315576000000.0)
    async with harness.database.transaction() as uow:
        await uow.alerts.add_rule(broken)
    failed: list[str] = []
    evaluator = AlertEvaluator(
        harness.database,
        harness.clock,
        [harness.sink],
        on_rule_failed=lambda rule: failed.append(rule.id),
    )
    first_round = await evaluator.evaluate()
    harness.clock.advance(minutes=1)
    second_round = await evaluator.evaluate()
    assert [(e.rule_id, e.state) for e in first_round] == [(good.id, AlertState.FIRING)]
    assert second_round == []
    assert failed == ["0-broken", "0-broken"]
    assert "alert rule 0-broken (broken) could not be evaluated" in caplog.text


async def test_a_window_never_reaches_data_older_than_its_length(harness: Harness) -> None:
    # ../shared/repros/analytics/alert_window.py: the start was floored to the minute, so a
    # 60 s window at 12:00:59 read data from 11:59:00.5, 118.5 s old.
    now = harness.clock.now + timedelta(seconds=59)
    harness.clock.now = now
    old = now - timedelta(seconds=118.5)
    recent = now - timedelta(seconds=30)
    await harness.ingestor.ingest(
        [
            execution_event(f"old{i}", status=ExecutionStatus.FAILED, finished_at=old)
            for i in range(3)
        ]
    )
    rule = await harness.rules.create(
        NewAlertRule(
            tenant="default",
            name="any failure",
            workflow_id="orders",
            step_id="",
            metric=AlertMetric.FAILURE_RATE,
            comparator=Comparator.GREATER_THAN,
            threshold=0.5,
            window_seconds=60,
            webhook_url="",
            enabled=True,
        )
    )
    assert await harness.evaluator.evaluate() == []
    await harness.ingestor.ingest(
        [execution_event("recent", status=ExecutionStatus.FAILED, finished_at=recent)]
    )
    [firing] = await harness.evaluator.evaluate()
    assert (firing.rule_id, firing.value) == (rule.id, 1.0)

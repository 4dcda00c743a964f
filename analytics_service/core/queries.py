"""The read side: each query opens one transaction and reads rollups, or bounded facts."""

from __future__ import annotations

import enum
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

from analytics_service.core.comparison import compare
from analytics_service.core.critical_path import critical_path
from analytics_service.core.events import ExecutionFact, StepAttemptFact
from analytics_service.core.histogram import Histogram
from analytics_service.core.ports import (
    Database,
    FactFilter,
    GroupKey,
    Level,
    MinuteRange,
    RollupQuery,
    UnitOfWork,
)
from analytics_service.core.reports import (
    Comparison,
    ErrorBreakdown,
    ErrorGroup,
    Granularity,
    PerformanceReport,
    RecentError,
    ReturnOnInvestment,
    StepMetrics,
    SystemOverview,
    TimeRange,
    TimeSeriesPoint,
    Trend,
    TrendMetric,
    WorkflowMetrics,
    WorkflowSummary,
    ratio,
    step_metrics,
    time_series_point,
    workflow_metrics,
)
from analytics_service.core.rollups import RollupCounts
from analytics_service.core.trend import fit_trend


class FailureRanking(enum.Enum):
    FAILURES = "failures"
    FAILURE_RATE = "failure_rate"


@dataclass(frozen=True)
class QueryLimits:
    """Bounds on the queries that read facts, and defaults for unset request sizes."""

    critical_path_executions: int = 1000
    default_recent_errors: int = 20
    max_recent_errors: int = 1000
    default_top: int = 5
    max_top: int = 1000
    export_page_size: int = 1000


@dataclass(frozen=True)
class Selection:
    """One workflow (or step) over one time range, as most queries take it."""

    tenant: str
    workflow_id: str
    time_range: TimeRange
    step_id: str = ""

    def minutes(self) -> MinuteRange:
        return MinuteRange(*self.time_range.minute_range())

    def facts(self, statuses: tuple[str, ...] = ()) -> FactFilter:
        return FactFilter(
            tenant=self.tenant,
            start=self.time_range.start,
            end=self.time_range.end,
            workflow_id=self.workflow_id,
            step_id=self.step_id,
            statuses=statuses,
        )


class AnalyticsQueries:
    def __init__(self, database: Database, limits: QueryLimits) -> None:
        self._database = database
        self._limits = limits

    async def workflow_metrics(self, selection: Selection) -> WorkflowMetrics:
        async with self._database.transaction() as uow:
            return await _workflow_metrics(uow, selection)

    async def step_metrics(self, selection: Selection) -> tuple[StepMetrics, ...]:
        query = RollupQuery(
            tenant=selection.tenant,
            minutes=selection.minutes(),
            level=Level.STEP,
            workflow_id=selection.workflow_id,
            step_id=selection.step_id or None,
            by_workflow=True,
            by_step=True,
        )
        async with self._database.transaction() as uow:
            return await _step_metrics(uow, query)

    async def most_failed_steps(
        self, selection: Selection, limit: int, ranking: FailureRanking
    ) -> tuple[StepMetrics, ...]:
        query = RollupQuery(
            tenant=selection.tenant,
            minutes=selection.minutes(),
            level=Level.STEP,
            workflow_id=selection.workflow_id or None,
            by_workflow=True,
            by_step=True,
        )
        async with self._database.transaction() as uow:
            steps = await _step_metrics(uow, query)
        return _rank_failures(steps, ranking)[: self._top(limit)]

    async def time_series(
        self, selection: Selection, granularity: Granularity
    ) -> tuple[TimeSeriesPoint, ...]:
        async with self._database.transaction() as uow:
            return await _time_series(uow, selection, granularity)

    async def trend(
        self, selection: Selection, granularity: Granularity, metric: TrendMetric
    ) -> Trend:
        points = await self.time_series(selection, granularity)
        return _trend(points, granularity, metric)

    async def performance_report(self, selection: Selection, top_n: int) -> PerformanceReport:
        top = self._top(top_n)
        steps_query = RollupQuery(
            tenant=selection.tenant,
            minutes=selection.minutes(),
            level=Level.STEP,
            workflow_id=selection.workflow_id,
            by_workflow=True,
            by_step=True,
        )
        async with self._database.transaction() as uow:
            summary = await _workflow_metrics(uow, selection)
            steps = await _step_metrics(uow, steps_query)
            points = await _time_series(uow, selection, Granularity.HOUR)
            facts = await uow.facts.steps_of_latest_executions(
                selection.facts(), self._limits.critical_path_executions
            )
        slowest = sorted(steps, key=lambda s: (-s.duration.average, s.step_id))
        return PerformanceReport(
            summary=summary,
            slowest_steps=tuple(slowest[:top]),
            most_failed_steps=_rank_failures(steps, FailureRanking.FAILURES)[:top],
            duration_trend=_trend(points, Granularity.HOUR, TrendMetric.DURATION),
            failure_rate_trend=_trend(points, Granularity.HOUR, TrendMetric.FAILURE_RATE),
            critical_path=critical_path(facts),
        )

    async def compare(
        self, baseline: Selection, candidate: Selection, regression_threshold: float
    ) -> Comparison:
        async with self._database.transaction() as uow:
            before = await _workflow_metrics(uow, baseline)
            after = await _workflow_metrics(uow, candidate)
        return compare(before, after, regression_threshold)

    async def error_breakdown(self, selection: Selection, recent_limit: int) -> ErrorBreakdown:
        query = RollupQuery(
            tenant=selection.tenant,
            minutes=selection.minutes(),
            level=Level.STEP,
            workflow_id=selection.workflow_id or None,
            by_workflow=True,
            by_step=True,
        )
        limit = self._recent(recent_limit)
        async with self._database.transaction() as uow:
            errors = await uow.rollups.errors(query)
            recent = await uow.facts.recent_failures(selection.facts(), limit)
        return _breakdown(errors, recent, qualify_steps=not selection.workflow_id)

    async def system_overview(self, selection: Selection, top_n: int) -> SystemOverview:
        query = RollupQuery(
            tenant=selection.tenant,
            minutes=selection.minutes(),
            level=Level.EXECUTION,
            by_workflow=True,
        )
        async with self._database.transaction() as uow:
            per_workflow = await uow.rollups.counts(query)
            recent = await uow.facts.recent_failures(
                selection.facts(), self._limits.default_recent_errors
            )
        return _overview(per_workflow, recent, self._top(top_n))

    async def export_steps(
        self, selection: Selection, statuses: tuple[str, ...]
    ) -> AsyncIterator[list[StepAttemptFact]]:
        """Pages of step facts; each page is read in its own short transaction."""
        after: StepAttemptFact | None = None
        while True:
            async with self._database.transaction() as uow:
                page = await uow.facts.step_page(
                    selection.facts(statuses), after, self._limits.export_page_size
                )
            if not page:
                return
            yield page
            after = page[-1]

    async def export_executions(
        self, selection: Selection, statuses: tuple[str, ...]
    ) -> AsyncIterator[list[ExecutionFact]]:
        after: ExecutionFact | None = None
        while True:
            async with self._database.transaction() as uow:
                page = await uow.facts.execution_page(
                    selection.facts(statuses), after, self._limits.export_page_size
                )
            if not page:
                return
            yield page
            after = page[-1]

    def _top(self, requested: int) -> int:
        return min(requested or self._limits.default_top, self._limits.max_top)

    def _recent(self, requested: int) -> int:
        return min(requested or self._limits.default_recent_errors, self._limits.max_recent_errors)


async def _workflow_metrics(uow: UnitOfWork, selection: Selection) -> WorkflowMetrics:
    executions = RollupQuery(
        tenant=selection.tenant,
        minutes=selection.minutes(),
        level=Level.EXECUTION,
        workflow_id=selection.workflow_id,
    )
    steps = replace(executions, level=Level.STEP)
    whole = GroupKey()
    return workflow_metrics(
        selection.workflow_id,
        executions=(await uow.rollups.counts(executions)).get(whole, RollupCounts()),
        histogram=(await uow.rollups.histograms(executions)).get(whole, Histogram()),
        steps=(await uow.rollups.counts(steps)).get(whole, RollupCounts()),
        errors=(await uow.rollups.errors(steps)).get(whole, {}),
    )


async def _step_metrics(uow: UnitOfWork, query: RollupQuery) -> tuple[StepMetrics, ...]:
    counts = await uow.rollups.counts(query)
    histograms = await uow.rollups.histograms(query)
    errors = await uow.rollups.errors(query)
    return tuple(
        step_metrics(
            key.workflow_id,
            key.step_id,
            counts[key],
            histograms.get(key, Histogram()),
            errors.get(key, {}),
        )
        for key in sorted(counts)
    )


async def _time_series(
    uow: UnitOfWork, selection: Selection, granularity: Granularity
) -> tuple[TimeSeriesPoint, ...]:
    query = RollupQuery(
        tenant=selection.tenant,
        minutes=selection.minutes(),
        level=Level.STEP if selection.step_id else Level.EXECUTION,
        workflow_id=selection.workflow_id,
        step_id=selection.step_id or None,
        bucket_minutes=granularity.value,
    )
    counts = await uow.rollups.counts(query)
    histograms = await uow.rollups.histograms(query)
    return tuple(
        time_series_point(key.bucket, counts[key], histograms.get(key, Histogram()))
        for key in sorted(counts)
    )


def _trend(
    points: tuple[TimeSeriesPoint, ...], granularity: Granularity, metric: TrendMetric
) -> Trend:
    if metric is TrendMetric.FAILURE_RATE:
        values = [ratio(p.failures, p.count) for p in points]
    else:
        values = [p.average_duration for p in points]
    return Trend(metric=metric, granularity=granularity, fit=fit_trend(values))


def _rank_failures(
    steps: tuple[StepMetrics, ...], ranking: FailureRanking
) -> tuple[StepMetrics, ...]:
    failing = [s for s in steps if s.failed + s.timed_out > 0]
    if ranking is FailureRanking.FAILURE_RATE:
        failing.sort(key=lambda s: (-s.failure_rate, -(s.failed + s.timed_out), s.step_id))
    else:
        failing.sort(key=lambda s: (-(s.failed + s.timed_out), -s.failure_rate, s.step_id))
    return tuple(failing)


def _groups(totals: dict[str, int]) -> tuple[ErrorGroup, ...]:
    ranked = sorted(totals.items(), key=lambda item: (-item[1], item[0]))
    return tuple(ErrorGroup(key, count) for key, count in ranked)


def _breakdown(
    errors: dict[GroupKey, dict[str, int]], recent: list[StepAttemptFact], *, qualify_steps: bool
) -> ErrorBreakdown:
    by_type: dict[str, int] = defaultdict(int)
    by_step: dict[str, int] = defaultdict(int)
    by_workflow: dict[str, int] = defaultdict(int)
    for key, types in errors.items():
        step = f"{key.workflow_id}/{key.step_id}" if qualify_steps else key.step_id
        for error_type, count in types.items():
            by_type[error_type] += count
            by_step[step] += count
            by_workflow[key.workflow_id] += count
    return ErrorBreakdown(
        by_type=_groups(by_type),
        by_step=_groups(by_step),
        by_workflow=_groups(by_workflow),
        recent=tuple(_recent_error(fact) for fact in recent),
    )


def _recent_error(fact: StepAttemptFact) -> RecentError:
    return RecentError(
        execution_id=fact.execution_id,
        workflow_id=fact.workflow_id,
        step_id=fact.step_id,
        attempt=fact.attempt,
        error_type=fact.error_type,
        error_message=fact.error_message,
        occurred_at=fact.finished_at,
    )


def _overview(
    per_workflow: dict[GroupKey, RollupCounts], recent: list[StepAttemptFact], top: int
) -> SystemOverview:
    total = RollupCounts()
    for counts in per_workflow.values():
        total = total.merge(counts)
    summaries = [
        WorkflowSummary(
            workflow_id=key.workflow_id,
            executions=counts.total,
            success_rate=ratio(counts.completed, counts.total),
            average_duration=ratio(counts.duration_sum, counts.total),
        )
        for key, counts in per_workflow.items()
    ]
    summaries.sort(key=lambda s: (-s.executions, s.workflow_id))
    return SystemOverview(
        workflows=len(per_workflow),
        executions=total.total,
        success_rate=ratio(total.completed, total.total),
        average_duration=ratio(total.duration_sum, total.total),
        top_workflows=tuple(summaries[:top]),
        recent_errors=tuple(_recent_error(fact) for fact in recent),
        roi=ReturnOnInvestment(
            successful_executions=total.completed,
            time_saved_seconds=total.time_saved_sum,
            business_value=total.business_value_sum,
        ),
    )

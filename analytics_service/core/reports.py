"""What the queries answer, as immutable values, and how rollup sums become them."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from analytics_service.core.histogram import Histogram
from analytics_service.core.rollups import SECONDS_PER_MINUTE, RollupCounts, minute_of
from analytics_service.core.trend import TrendFit


class Granularity(enum.Enum):
    """Time-series bucket widths, in minutes."""

    MINUTE = 1
    HOUR = 60
    DAY = 1440


class TrendMetric(enum.Enum):
    DURATION = "duration"
    FAILURE_RATE = "failure_rate"


@dataclass(frozen=True)
class TimeRange:
    """[start, end), resolved for rollups to the minutes that start inside it."""

    start: datetime
    end: datetime

    def minute_range(self) -> tuple[int, int]:
        return _ceil_minute(self.start), _ceil_minute(self.end)


def _ceil_minute(moment: datetime) -> int:
    floor = minute_of(moment)
    return floor if floor * SECONDS_PER_MINUTE == moment.timestamp() else floor + 1


def minute_start(minute: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(minutes=minute)


@dataclass(frozen=True)
class DurationStats:
    """Seconds; zeros when nothing finished."""

    average: float = 0.0
    p50: float = 0.0
    p95: float = 0.0
    p99: float = 0.0
    minimum: float = 0.0
    maximum: float = 0.0


@dataclass(frozen=True)
class ErrorCount:
    error_type: str
    count: int


@dataclass(frozen=True)
class WorkflowMetrics:
    workflow_id: str
    executions: int = 0
    completed: int = 0
    completed_with_errors: int = 0
    failed: int = 0
    cancelled: int = 0
    timed_out: int = 0
    success_rate: float = 0.0
    duration: DurationStats = DurationStats()
    errors: tuple[ErrorCount, ...] = ()
    retries: int = 0


@dataclass(frozen=True)
class StepMetrics:
    workflow_id: str
    step_id: str
    action: str = ""
    attempts: int = 0
    completed: int = 0
    failed: int = 0
    timed_out: int = 0
    skipped: int = 0
    cancelled: int = 0
    retries: int = 0
    success_rate: float = 0.0
    failure_rate: float = 0.0
    duration: DurationStats = DurationStats()
    errors: tuple[ErrorCount, ...] = ()


@dataclass(frozen=True)
class TimeSeriesPoint:
    bucket_start: datetime
    count: int
    success_rate: float
    average_duration: float
    p95_duration: float
    failures: int


@dataclass(frozen=True)
class Trend:
    metric: TrendMetric
    granularity: Granularity
    fit: TrendFit


@dataclass(frozen=True)
class CriticalPath:
    step_ids: tuple[str, ...] = ()
    average_duration: float = 0.0
    share: float = 0.0


@dataclass(frozen=True)
class PerformanceReport:
    summary: WorkflowMetrics
    slowest_steps: tuple[StepMetrics, ...]
    most_failed_steps: tuple[StepMetrics, ...]
    duration_trend: Trend
    failure_rate_trend: Trend
    critical_path: CriticalPath


@dataclass(frozen=True)
class MetricComparison:
    metric: str
    baseline: float
    candidate: float
    absolute_change: float
    relative_change: float
    regression: bool


@dataclass(frozen=True)
class Comparison:
    baseline: WorkflowMetrics
    candidate: WorkflowMetrics
    comparisons: tuple[MetricComparison, ...]


@dataclass(frozen=True)
class ErrorGroup:
    key: str
    count: int


@dataclass(frozen=True)
class RecentError:
    execution_id: str
    workflow_id: str
    step_id: str
    attempt: int
    error_type: str
    error_message: str
    occurred_at: datetime


@dataclass(frozen=True)
class ErrorBreakdown:
    by_type: tuple[ErrorGroup, ...]
    by_step: tuple[ErrorGroup, ...]
    by_workflow: tuple[ErrorGroup, ...]
    recent: tuple[RecentError, ...]


@dataclass(frozen=True)
class WorkflowSummary:
    workflow_id: str
    executions: int
    success_rate: float
    average_duration: float


@dataclass(frozen=True)
class ReturnOnInvestment:
    successful_executions: int = 0
    time_saved_seconds: float = 0.0
    business_value: float = 0.0


@dataclass(frozen=True)
class SystemOverview:
    workflows: int
    executions: int
    success_rate: float
    average_duration: float
    top_workflows: tuple[WorkflowSummary, ...]
    recent_errors: tuple[RecentError, ...]
    roi: ReturnOnInvestment


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else 0.0


def duration_stats(counts: RollupCounts, histogram: Histogram) -> DurationStats:
    if counts.total == 0:
        return DurationStats()
    low, high = counts.duration_min or 0.0, counts.duration_max or 0.0

    def percentile(q: float) -> float:
        # Min and max are exact; clamping into them only brings the estimate closer.
        estimate = histogram.quantile(q)
        return low if estimate is None else min(max(estimate, low), high)

    return DurationStats(
        average=counts.duration_sum / counts.total,
        p50=percentile(0.50),
        p95=percentile(0.95),
        p99=percentile(0.99),
        minimum=low,
        maximum=high,
    )


def error_counts(errors: dict[str, int]) -> tuple[ErrorCount, ...]:
    ranked = sorted(errors.items(), key=lambda item: (-item[1], item[0]))
    return tuple(ErrorCount(error_type, count) for error_type, count in ranked)


def workflow_metrics(
    workflow_id: str,
    executions: RollupCounts,
    histogram: Histogram,
    steps: RollupCounts,
    errors: dict[str, int],
) -> WorkflowMetrics:
    """Execution-level sums plus the step-level retries and errors of one workflow."""
    return WorkflowMetrics(
        workflow_id=workflow_id,
        executions=executions.total,
        completed=executions.completed,
        completed_with_errors=executions.completed_with_errors,
        failed=executions.failed,
        cancelled=executions.cancelled,
        timed_out=executions.timed_out,
        success_rate=ratio(executions.completed, executions.total),
        duration=duration_stats(executions, histogram),
        errors=error_counts(errors),
        retries=steps.retries,
    )


def step_metrics(
    workflow_id: str,
    step_id: str,
    counts: RollupCounts,
    histogram: Histogram,
    errors: dict[str, int],
) -> StepMetrics:
    return StepMetrics(
        workflow_id=workflow_id,
        step_id=step_id,
        action=counts.action,
        attempts=counts.total,
        completed=counts.completed,
        failed=counts.failed,
        timed_out=counts.timed_out,
        skipped=counts.skipped,
        cancelled=counts.cancelled,
        retries=counts.retries,
        success_rate=ratio(counts.completed, counts.total),
        failure_rate=ratio(counts.failures, counts.total),
        duration=duration_stats(counts, histogram),
        errors=error_counts(errors),
    )


def time_series_point(minute: int, counts: RollupCounts, histogram: Histogram) -> TimeSeriesPoint:
    stats = duration_stats(counts, histogram)
    return TimeSeriesPoint(
        bucket_start=minute_start(minute),
        count=counts.total,
        success_rate=ratio(counts.completed, counts.total),
        average_duration=stats.average,
        p95_duration=stats.p95,
        failures=counts.failures,
    )

"""Two workflows' metrics side by side, with regressions flagged."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from analytics_service.core.reports import Comparison, MetricComparison, WorkflowMetrics

DEFAULT_REGRESSION_THRESHOLD = 0.1


class Better(enum.Enum):
    HIGHER = "higher"
    LOWER = "lower"
    NEITHER = "neither"


@dataclass(frozen=True)
class ComparedMetric:
    name: str
    better: Better
    read: Callable[[WorkflowMetrics], float]


COMPARED_METRICS = (
    ComparedMetric("executions", Better.NEITHER, lambda m: m.executions),
    ComparedMetric("success_rate", Better.HIGHER, lambda m: m.success_rate),
    ComparedMetric("failed", Better.LOWER, lambda m: m.failed + m.timed_out),
    ComparedMetric("retries", Better.LOWER, lambda m: m.retries),
    ComparedMetric("average_duration_seconds", Better.LOWER, lambda m: m.duration.average),
    ComparedMetric("p50_duration_seconds", Better.LOWER, lambda m: m.duration.p50),
    ComparedMetric("p95_duration_seconds", Better.LOWER, lambda m: m.duration.p95),
    ComparedMetric("p99_duration_seconds", Better.LOWER, lambda m: m.duration.p99),
)


def is_regression(better: Better, baseline: float, candidate: float, threshold: float) -> bool:
    """Worse by more than `threshold` of the baseline; from a zero baseline, worse at all."""
    worsening = {Better.HIGHER: baseline - candidate, Better.LOWER: candidate - baseline}.get(
        better, 0.0
    )
    if worsening <= 0:
        return False
    return baseline == 0 or worsening / abs(baseline) > threshold


def compare_metric(
    metric: ComparedMetric, baseline: WorkflowMetrics, candidate: WorkflowMetrics, threshold: float
) -> MetricComparison:
    before, after = float(metric.read(baseline)), float(metric.read(candidate))
    change = after - before
    return MetricComparison(
        metric=metric.name,
        baseline=before,
        candidate=after,
        absolute_change=change,
        relative_change=change / before if before else 0.0,
        regression=is_regression(metric.better, before, after, threshold),
    )


def compare(baseline: WorkflowMetrics, candidate: WorkflowMetrics, threshold: float) -> Comparison:
    threshold = threshold or DEFAULT_REGRESSION_THRESHOLD
    return Comparison(
        baseline=baseline,
        candidate=candidate,
        comparisons=tuple(
            compare_metric(m, baseline, candidate, threshold) for m in COMPARED_METRICS
        ),
    )

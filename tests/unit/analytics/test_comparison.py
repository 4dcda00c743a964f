"""Comparisons: absolute and relative change, regressions in the worse direction only."""

from __future__ import annotations

import pytest

from analytics_service.core.comparison import compare
from analytics_service.core.reports import DurationStats, MetricComparison, WorkflowMetrics


def metrics(success_rate: float, p95: float, failed: int) -> WorkflowMetrics:
    return WorkflowMetrics(
        workflow_id="orders",
        executions=10,
        failed=failed,
        success_rate=success_rate,
        duration=DurationStats(average=p95 / 2, p95=p95),
    )


def by_name(
    baseline: WorkflowMetrics, candidate: WorkflowMetrics, threshold: float = 0.0
) -> dict[str, MetricComparison]:
    return {c.metric: c for c in compare(baseline, candidate, threshold).comparisons}


def test_a_slower_candidate_regresses_beyond_the_threshold() -> None:
    result = by_name(metrics(0.9, 10.0, 1), metrics(0.9, 12.0, 1))
    p95 = result["p95_duration_seconds"]
    assert p95.absolute_change == pytest.approx(2.0)
    assert p95.relative_change == pytest.approx(0.2)
    assert p95.regression is True
    assert result["success_rate"].regression is False


def test_changes_within_the_threshold_are_not_regressions() -> None:
    result = by_name(metrics(0.9, 10.0, 1), metrics(0.9, 10.5, 1), threshold=0.1)
    assert result["p95_duration_seconds"].regression is False


def test_improvements_are_never_regressions() -> None:
    result = by_name(metrics(0.5, 10.0, 5), metrics(0.9, 5.0, 1))
    assert not any(c.regression for c in result.values())


def test_from_a_zero_baseline_relative_change_is_zero_and_any_worsening_regresses() -> None:
    failed = by_name(metrics(1.0, 1.0, 0), metrics(1.0, 1.0, 2))["failed"]
    assert failed.relative_change == 0.0
    assert failed.regression is True

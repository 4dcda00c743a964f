"""Domain values into protobuf responses."""

from __future__ import annotations

from datetime import datetime

from google.protobuf import duration_pb2, timestamp_pb2
from stepstream.v1 import analytics_pb2, events_pb2

from analytics_service.core import reports
from analytics_service.core.alerts import AlertEvent, AlertRule
from analytics_service.core.trend import TrendDirection


def timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    message = timestamp_pb2.Timestamp()
    message.FromDatetime(moment)
    return message


def duration(seconds: float) -> duration_pb2.Duration:
    message = duration_pb2.Duration()
    message.FromNanoseconds(round(seconds * 1e9))
    return message


def duration_stats(stats: reports.DurationStats) -> analytics_pb2.DurationStats:
    return analytics_pb2.DurationStats(
        average=duration(stats.average),
        p50=duration(stats.p50),
        p95=duration(stats.p95),
        p99=duration(stats.p99),
        minimum=duration(stats.minimum),
        maximum=duration(stats.maximum),
    )


def _errors(errors: tuple[reports.ErrorCount, ...]) -> list[analytics_pb2.ErrorCount]:
    return [analytics_pb2.ErrorCount(error_type=e.error_type, count=e.count) for e in errors]


def workflow_metrics(metrics: reports.WorkflowMetrics) -> analytics_pb2.WorkflowMetrics:
    return analytics_pb2.WorkflowMetrics(
        workflow_id=metrics.workflow_id,
        executions=metrics.executions,
        completed=metrics.completed,
        completed_with_errors=metrics.completed_with_errors,
        failed=metrics.failed,
        cancelled=metrics.cancelled,
        timed_out=metrics.timed_out,
        success_rate=metrics.success_rate,
        duration=duration_stats(metrics.duration),
        errors=_errors(metrics.errors),
        retries=metrics.retries,
    )


def step_metrics(metrics: reports.StepMetrics) -> analytics_pb2.StepMetrics:
    return analytics_pb2.StepMetrics(
        workflow_id=metrics.workflow_id,
        step_id=metrics.step_id,
        action=metrics.action,
        attempts=metrics.attempts,
        completed=metrics.completed,
        failed=metrics.failed,
        timed_out=metrics.timed_out,
        skipped=metrics.skipped,
        cancelled=metrics.cancelled,
        retries=metrics.retries,
        success_rate=metrics.success_rate,
        failure_rate=metrics.failure_rate,
        duration=duration_stats(metrics.duration),
        errors=_errors(metrics.errors),
    )


def time_series_point(point: reports.TimeSeriesPoint) -> analytics_pb2.TimeSeriesPoint:
    return analytics_pb2.TimeSeriesPoint(
        bucket_start=timestamp(point.bucket_start),
        count=point.count,
        success_rate=point.success_rate,
        average_duration=duration(point.average_duration),
        p95_duration=duration(point.p95_duration),
        failures=point.failures,
    )


def trend(value: reports.Trend) -> analytics_pb2.Trend:
    fit = value.fit
    message = analytics_pb2.Trend(
        metric=analytics_pb2.TrendMetric.Value(f"TREND_METRIC_{value.metric.name}"),
        direction=analytics_pb2.TrendDirection.Value(f"TREND_DIRECTION_{fit.direction.name}"),
        points=fit.points,
        granularity=analytics_pb2.Granularity.Value(f"GRANULARITY_{value.granularity.name}"),
    )
    if fit.direction is not TrendDirection.INSUFFICIENT_DATA:
        message.slope = fit.slope
        message.r_squared = fit.r_squared
        message.p_value = fit.p_value
    return message


def critical_path(path: reports.CriticalPath) -> analytics_pb2.CriticalPath:
    return analytics_pb2.CriticalPath(
        step_ids=list(path.step_ids),
        average_duration=duration(path.average_duration),
        share=path.share,
    )


def performance_report(report: reports.PerformanceReport) -> analytics_pb2.PerformanceReport:
    return analytics_pb2.PerformanceReport(
        summary=workflow_metrics(report.summary),
        slowest_steps=[step_metrics(s) for s in report.slowest_steps],
        most_failed_steps=[step_metrics(s) for s in report.most_failed_steps],
        duration_trend=trend(report.duration_trend),
        failure_rate_trend=trend(report.failure_rate_trend),
        critical_path=critical_path(report.critical_path),
    )


def comparison(value: reports.Comparison) -> analytics_pb2.CompareWorkflowsResponse:
    return analytics_pb2.CompareWorkflowsResponse(
        baseline=workflow_metrics(value.baseline),
        candidate=workflow_metrics(value.candidate),
        comparisons=[
            analytics_pb2.MetricComparison(
                metric=c.metric,
                baseline=c.baseline,
                candidate=c.candidate,
                absolute_change=c.absolute_change,
                relative_change=c.relative_change,
                regression=c.regression,
            )
            for c in value.comparisons
        ],
    )


def recent_error(error: reports.RecentError) -> analytics_pb2.RecentError:
    return analytics_pb2.RecentError(
        execution_id=error.execution_id,
        workflow_id=error.workflow_id,
        step_id=error.step_id,
        attempt=error.attempt,
        error=events_pb2.Failure(type=error.error_type, message=error.error_message),
        occurred_at=timestamp(error.occurred_at),
    )


def _groups(groups: tuple[reports.ErrorGroup, ...]) -> list[analytics_pb2.ErrorGroup]:
    return [analytics_pb2.ErrorGroup(key=g.key, count=g.count) for g in groups]


def error_breakdown(value: reports.ErrorBreakdown) -> analytics_pb2.GetErrorBreakdownResponse:
    return analytics_pb2.GetErrorBreakdownResponse(
        by_type=_groups(value.by_type),
        by_step=_groups(value.by_step),
        by_workflow=_groups(value.by_workflow),
        recent=[recent_error(e) for e in value.recent],
    )


def system_overview(value: reports.SystemOverview) -> analytics_pb2.GetSystemOverviewResponse:
    return analytics_pb2.GetSystemOverviewResponse(
        workflows=value.workflows,
        executions=value.executions,
        success_rate=value.success_rate,
        average_duration=duration(value.average_duration),
        top_workflows=[
            analytics_pb2.WorkflowSummary(
                workflow_id=w.workflow_id,
                executions=w.executions,
                success_rate=w.success_rate,
                average_duration=duration(w.average_duration),
            )
            for w in value.top_workflows
        ],
        recent_errors=[recent_error(e) for e in value.recent_errors],
        roi=analytics_pb2.ReturnOnInvestment(
            successful_executions=value.roi.successful_executions,
            time_saved=duration(value.roi.time_saved_seconds),
            business_value=value.roi.business_value,
        ),
    )


def alert_rule(rule: AlertRule) -> analytics_pb2.AlertRule:
    return analytics_pb2.AlertRule(
        id=rule.id,
        tenant=rule.tenant,
        name=rule.name,
        workflow_id=rule.workflow_id,
        step_id=rule.step_id,
        metric=analytics_pb2.AlertMetric.Value(f"ALERT_METRIC_{rule.metric.name}"),
        comparator=analytics_pb2.Comparator.Value(f"COMPARATOR_{rule.comparator.name}"),
        threshold=rule.threshold,
        window=duration(rule.window_seconds),
        webhook_url=rule.webhook_url,
        enabled=rule.enabled,
        state=analytics_pb2.AlertState.Value(f"ALERT_STATE_{rule.state.name}"),
        created_at=timestamp(rule.created_at),
    )


def alert_event(event: AlertEvent) -> analytics_pb2.AlertEvent:
    return analytics_pb2.AlertEvent(
        id=event.id,
        rule_id=event.rule_id,
        tenant=event.tenant,
        state=analytics_pb2.AlertState.Value(f"ALERT_STATE_{event.state.name}"),
        value=event.value,
        threshold=event.threshold,
        occurred_at=timestamp(event.occurred_at),
        message=event.message,
    )

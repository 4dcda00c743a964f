"""Every query RPC over a known event set, through a real server, on SQLite and Postgres."""

from __future__ import annotations

import csv
import io
import statistics
from datetime import timedelta
from typing import TypeAlias

import grpc
import pytest
from stepstream.v1 import analytics_pb2, analytics_pb2_grpc

from tests.integration.analytics import scenario
from tests.integration.analytics.wire import ingest, time_range
from tests.unit.analytics.builders import T0
from tests.unit.analytics.test_histogram import percentile_cont

Stub: TypeAlias = "analytics_pb2_grpc.AnalyticsServiceAsyncStub"
HOUR = time_range(T0, T0 + timedelta(hours=1))


def seconds(duration: object) -> float:
    return duration.ToNanoseconds() / 1e9  # type: ignore[attr-defined, no-any-return]


@pytest.fixture
async def loaded(stub: Stub) -> Stub:
    response = await ingest(stub, [scenario.all_events()])
    assert response.accepted == len(scenario.all_events())
    return stub


async def test_workflow_metrics_are_exact(loaded: Stub) -> None:
    response = await loaded.GetWorkflowMetrics(
        analytics_pb2.GetWorkflowMetricsRequest(workflow_id="orders", range=HOUR)
    )
    metrics = response.metrics
    durations = [scenario.execution_seconds(i) for i in range(scenario.EXECUTIONS)]
    assert metrics.executions == 10
    assert (metrics.completed, metrics.completed_with_errors) == (6, 1)
    assert (metrics.failed, metrics.timed_out, metrics.cancelled) == (1, 1, 1)
    assert metrics.success_rate == pytest.approx(0.6)
    assert seconds(metrics.duration.average) == pytest.approx(statistics.fmean(durations))
    assert seconds(metrics.duration.minimum) == pytest.approx(min(durations))
    assert seconds(metrics.duration.maximum) == pytest.approx(max(durations))
    for field, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
        exact = percentile_cont(durations, q)
        assert seconds(getattr(metrics.duration, field)) == pytest.approx(exact, rel=0.01)
    assert metrics.retries == 4
    assert {(e.error_type, e.count) for e in metrics.errors} == {
        ("CardDeclined", 4),
        ("Timeout", 1),
    }


async def test_step_metrics_count_attempts_and_failures(loaded: Stub) -> None:
    response = await loaded.GetStepMetrics(
        analytics_pb2.GetStepMetricsRequest(workflow_id="orders", step_id="charge", range=HOUR)
    )
    [charge] = response.steps
    assert charge.action == "payments.charge"
    assert (charge.attempts, charge.completed, charge.failed, charge.retries) == (14, 10, 4, 4)
    assert charge.failure_rate == pytest.approx(4 / 14)
    assert charge.success_rate == pytest.approx(10 / 14)
    durations = [2.0] * 4 + [scenario.charge_seconds(i) for i in range(10)]
    assert seconds(charge.duration.average) == pytest.approx(statistics.fmean(durations))
    assert seconds(charge.duration.p95) == pytest.approx(percentile_cont(durations, 0.95), rel=0.01)

    every = await loaded.GetStepMetrics(
        analytics_pb2.GetStepMetricsRequest(workflow_id="orders", range=HOUR)
    )
    assert [s.step_id for s in every.steps] == ["charge", "fetch", "notify"]


async def test_most_failed_steps_rank_by_failures_or_rate(loaded: Stub) -> None:
    by_count = await loaded.GetMostFailedSteps(
        analytics_pb2.GetMostFailedStepsRequest(range=HOUR, limit=5)
    )
    assert [(s.step_id, s.failed + s.timed_out) for s in by_count.steps] == [
        ("charge", 4),
        ("notify", 1),
    ]
    by_rate = await loaded.GetMostFailedSteps(
        analytics_pb2.GetMostFailedStepsRequest(
            range=HOUR, limit=1, ranking=analytics_pb2.FAILURE_RANKING_FAILURE_RATE
        )
    )
    assert [s.step_id for s in by_rate.steps] == ["charge"]


async def test_time_series_per_minute_hour_and_day(loaded: Stub) -> None:
    def request(
        granularity: analytics_pb2.Granularity.ValueType,
    ) -> analytics_pb2.GetTimeSeriesRequest:
        return analytics_pb2.GetTimeSeriesRequest(
            workflow_id="orders", range=HOUR, granularity=granularity
        )

    minutes = await loaded.GetTimeSeries(request(analytics_pb2.GRANULARITY_MINUTE))
    assert len(minutes.points) == 10
    assert [p.bucket_start.ToDatetime().minute for p in minutes.points] == list(range(10))
    assert [seconds(p.average_duration) for p in minutes.points] == [
        pytest.approx(scenario.execution_seconds(i)) for i in range(10)
    ]
    assert [p.failures for p in minutes.points] == [0] * 8 + [1, 1]

    for granularity in (analytics_pb2.GRANULARITY_HOUR, analytics_pb2.GRANULARITY_DAY):
        [point] = (await loaded.GetTimeSeries(request(granularity))).points
        assert point.count == 10
        assert point.success_rate == pytest.approx(0.6)
        assert point.failures == 2


async def test_trends_on_increasing_flat_and_short_series(loaded: Stub) -> None:
    def request(workflow_id: str, minutes: int) -> analytics_pb2.GetTrendRequest:
        return analytics_pb2.GetTrendRequest(
            workflow_id=workflow_id,
            range=time_range(T0, T0 + timedelta(minutes=minutes)),
            granularity=analytics_pb2.GRANULARITY_MINUTE,
        )

    increasing = (await loaded.GetTrend(request("orders", 60))).trend
    assert increasing.direction == analytics_pb2.TREND_DIRECTION_INCREASING
    assert increasing.slope == pytest.approx(1.0)
    assert increasing.r_squared == pytest.approx(1.0)
    assert increasing.points == 10

    flat = (await loaded.GetTrend(request("billing", 60))).trend
    assert flat.direction == analytics_pb2.TREND_DIRECTION_FLAT
    assert flat.slope == 0.0

    short = (await loaded.GetTrend(request("orders", 2))).trend
    assert short.direction == analytics_pb2.TREND_DIRECTION_INSUFFICIENT_DATA
    assert short.points == 2


async def test_performance_report(loaded: Stub) -> None:
    report = (
        await loaded.GetPerformanceReport(
            analytics_pb2.GetPerformanceReportRequest(workflow_id="orders", range=HOUR, top_n=2)
        )
    ).report
    assert report.summary.executions == 10
    assert [s.step_id for s in report.slowest_steps] == ["charge", "fetch"]
    assert [s.step_id for s in report.most_failed_steps] == ["charge", "notify"]
    assert list(report.critical_path.step_ids) == ["fetch", "charge", "notify"]
    assert report.critical_path.share == pytest.approx(1.0)
    assert report.duration_trend.direction == analytics_pb2.TREND_DIRECTION_INSUFFICIENT_DATA


async def test_compare_one_workflow_in_two_periods(loaded: Stub) -> None:
    early = time_range(T0, T0 + timedelta(minutes=5))
    late = time_range(T0 + timedelta(minutes=5), T0 + timedelta(minutes=10))
    response = await loaded.CompareWorkflows(
        analytics_pb2.CompareWorkflowsRequest(
            baseline=analytics_pb2.WorkflowSelector(workflow_id="orders", range=early),
            candidate=analytics_pb2.WorkflowSelector(workflow_id="orders", range=late),
        )
    )
    comparisons = {c.metric: c for c in response.comparisons}
    average = comparisons["average_duration_seconds"]
    assert average.baseline == pytest.approx(12.0)
    assert average.candidate == pytest.approx(17.0)
    assert average.relative_change == pytest.approx(5 / 12)
    assert average.regression is True
    assert comparisons["success_rate"].candidate == pytest.approx(0.2)
    assert comparisons["success_rate"].regression is True
    assert comparisons["executions"].regression is False


async def test_error_breakdown(loaded: Stub) -> None:
    response = await loaded.GetErrorBreakdown(
        analytics_pb2.GetErrorBreakdownRequest(range=HOUR, recent_limit=3)
    )
    assert [(g.key, g.count) for g in response.by_type] == [("CardDeclined", 4), ("Timeout", 1)]
    assert [(g.key, g.count) for g in response.by_step] == [
        ("orders/charge", 4),
        ("orders/notify", 1),
    ]
    assert [(g.key, g.count) for g in response.by_workflow] == [("orders", 5)]
    assert [(e.execution_id, e.step_id) for e in response.recent] == [
        ("default-orders-9", "charge"),
        ("default-orders-8", "notify"),
        ("default-orders-6", "charge"),
    ]
    assert response.recent[0].error.type == "CardDeclined"


async def test_system_overview_with_return_on_investment(loaded: Stub) -> None:
    response = await loaded.GetSystemOverview(
        analytics_pb2.GetSystemOverviewRequest(range=HOUR, top_n=1)
    )
    assert (response.workflows, response.executions) == (2, 13)
    assert response.success_rate == pytest.approx(9 / 13)
    assert [w.workflow_id for w in response.top_workflows] == ["orders"]
    assert response.roi.successful_executions == 9
    # Billing's definition names no ROI figures; orders' six successes carry them.
    assert seconds(response.roi.time_saved) == pytest.approx(6 * scenario.TIME_SAVED)
    assert response.roi.business_value == pytest.approx(6 * scenario.BUSINESS_VALUE)


async def test_queries_see_only_their_tenant(loaded: Stub) -> None:
    response = await loaded.GetWorkflowMetrics(
        analytics_pb2.GetWorkflowMetricsRequest(tenant="acme", workflow_id="orders", range=HOUR)
    )
    assert response.metrics.executions == 1
    nobody = await loaded.GetSystemOverview(
        analytics_pb2.GetSystemOverviewRequest(tenant="nobody", range=HOUR)
    )
    assert nobody.executions == 0


async def test_csv_export_parses_back_to_the_facts(loaded: Stub) -> None:
    chunks = loaded.ExportCsv(
        analytics_pb2.ExportCsvRequest(workflow_id="orders", range=HOUR, statuses=["failed"])
    )
    text = b"".join([c.chunk async for c in chunks]).decode()
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    assert len(rows) == 4
    assert {r["step_id"] for r in rows} == {"charge"}
    assert {r["error_type"] for r in rows} == {"CardDeclined"}
    assert sorted(r["execution_id"] for r in rows) == [f"default-orders-{i}" for i in (0, 3, 6, 9)]
    assert all(float(r["duration_seconds"]) == 2.0 for r in rows)

    executions = loaded.ExportCsv(
        analytics_pb2.ExportCsvRequest(range=HOUR, kind=analytics_pb2.FACT_KIND_EXECUTIONS)
    )
    lines = b"".join([c.chunk async for c in executions]).decode()
    parsed = list(csv.DictReader(io.StringIO(lines, newline="")))
    assert len(parsed) == 13
    assert sum(float(r["business_value"]) for r in parsed) == pytest.approx(10 * 2.0)


async def test_unknown_export_status_is_invalid(loaded: Stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in loaded.ExportCsv(analytics_pb2.ExportCsvRequest(statuses=["exploded"])):
            pass
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_ranges_off_the_hour_combine_hour_and_minute_rollups(loaded: Stub) -> None:
    def request(start_minutes: int, end_minutes: int) -> analytics_pb2.GetWorkflowMetricsRequest:
        window = time_range(
            T0 + timedelta(minutes=start_minutes), T0 + timedelta(minutes=end_minutes)
        )
        return analytics_pb2.GetWorkflowMetricsRequest(workflow_id="orders", range=window)

    wide = (await loaded.GetWorkflowMetrics(request(-90, 150))).metrics
    hour = (await loaded.GetWorkflowMetrics(request(0, 60))).metrics
    assert wide == hour
    # Minutes 3..6 only: an edge-only range must not pick up the hour row.
    edge = (await loaded.GetWorkflowMetrics(request(3, 7))).metrics
    assert edge.executions == 4
    assert seconds(edge.duration.average) == pytest.approx(statistics.fmean([13, 14, 15, 16]))

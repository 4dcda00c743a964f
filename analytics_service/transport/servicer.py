"""The AnalyticsService servicer: requests to use cases, results to responses."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, TypeAlias

import grpc
from stepstream.v1 import analytics_pb2, analytics_pb2_grpc

from analytics_service.core.alerting import AlertLoop, AlertRules
from analytics_service.core.auth import TenantScope, TokenTable
from analytics_service.core.broadcast import AlertBroadcaster
from analytics_service.core.errors import InvalidArgumentError
from analytics_service.core.events import ExecutionEvent
from analytics_service.core.export import (
    EXECUTION_COLUMNS,
    STEP_COLUMNS,
    execution_rows,
    header,
    step_rows,
)
from analytics_service.core.ingest import Ingestor, IngestResult
from analytics_service.core.queries import AnalyticsQueries
from analytics_service.metrics import AnalyticsMetrics
from analytics_service.transport import requests, responses
from analytics_service.transport.interceptors import bearer_token

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


@dataclass(frozen=True)
class AnalyticsUseCases:
    """Everything the servicer calls into, built once in main."""

    ingestor: Ingestor
    queries: AnalyticsQueries
    alert_rules: AlertRules
    alert_loop: AlertLoop
    broadcaster: AlertBroadcaster
    tokens: TokenTable
    metrics: AnalyticsMetrics


class AnalyticsServicer(analytics_pb2_grpc.AnalyticsServiceServicer):
    def __init__(self, use_cases: AnalyticsUseCases) -> None:
        self._use = use_cases

    def _scope(self, context: Context) -> TenantScope:
        return self._use.tokens.scope_of(bearer_token(context))

    def _tenant(self, context: Context, tenant: str) -> str:
        return self._scope(context).require(requests.tenant_of(tenant))

    async def IngestEvents(
        self,
        request_iterator: AsyncIterator[analytics_pb2.IngestEventsRequest],
        context: Context,
    ) -> analytics_pb2.IngestEventsResponse:
        scope = self._scope(context)
        totals = analytics_pb2.IngestEventsResponse()
        index = 0
        async for request in request_iterator:
            events = requests.event_batch(request.batch, f"batch[{index}]")
            for event in events:
                scope.require(event.tenant)
            result = await self._ingest(events)
            totals.accepted += result.accepted
            # Events older than the fact retention are ignored like known ones: the contract
            # has no third count, and resending them can never change anything.
            totals.duplicates += result.duplicates + result.expired
            totals.batches += 1
            index += 1
        return totals

    async def _ingest(self, events: list[ExecutionEvent]) -> IngestResult:
        metrics = self._use.metrics
        started = time.perf_counter()
        result = await self._use.ingestor.ingest(events)
        metrics.batch_seconds.observe(time.perf_counter() - started)
        metrics.events_ingested.inc(result.accepted)
        metrics.duplicates_ignored.inc(result.duplicates)
        metrics.events_expired.inc(result.expired)
        if result.lags:
            metrics.ingest_lag_seconds.observe(max(lag.max_seconds for lag in result.lags.values()))
            self._use.alert_loop.request(result.scopes)
        return result

    async def GetWorkflowMetrics(
        self, request: analytics_pb2.GetWorkflowMetricsRequest, context: Context
    ) -> analytics_pb2.GetWorkflowMetricsResponse:
        selection = requests.selection(
            self._tenant(context, request.tenant),
            requests.require(request.workflow_id, "workflow_id"),
            request.range,
        )
        metrics = await self._use.queries.workflow_metrics(selection)
        return analytics_pb2.GetWorkflowMetricsResponse(metrics=responses.workflow_metrics(metrics))

    async def GetStepMetrics(
        self, request: analytics_pb2.GetStepMetricsRequest, context: Context
    ) -> analytics_pb2.GetStepMetricsResponse:
        selection = requests.selection(
            self._tenant(context, request.tenant),
            requests.require(request.workflow_id, "workflow_id"),
            request.range,
            step_id=request.step_id,
        )
        steps = await self._use.queries.step_metrics(selection)
        return analytics_pb2.GetStepMetricsResponse(
            steps=[responses.step_metrics(s) for s in steps]
        )

    async def GetMostFailedSteps(
        self, request: analytics_pb2.GetMostFailedStepsRequest, context: Context
    ) -> analytics_pb2.GetMostFailedStepsResponse:
        selection = requests.selection(
            self._tenant(context, request.tenant), request.workflow_id, request.range
        )
        steps = await self._use.queries.most_failed_steps(
            selection,
            requests.non_negative(request.limit, "limit"),
            requests.failure_ranking(request.ranking),
        )
        return analytics_pb2.GetMostFailedStepsResponse(
            steps=[responses.step_metrics(s) for s in steps]
        )

    async def GetTimeSeries(
        self, request: analytics_pb2.GetTimeSeriesRequest, context: Context
    ) -> analytics_pb2.GetTimeSeriesResponse:
        selection = requests.selection(
            self._tenant(context, request.tenant),
            requests.require(request.workflow_id, "workflow_id"),
            request.range,
            step_id=request.step_id,
        )
        points = await self._use.queries.time_series(
            selection, requests.granularity(request.granularity)
        )
        return analytics_pb2.GetTimeSeriesResponse(
            points=[responses.time_series_point(p) for p in points]
        )

    async def GetTrend(
        self, request: analytics_pb2.GetTrendRequest, context: Context
    ) -> analytics_pb2.GetTrendResponse:
        selection = requests.selection(
            self._tenant(context, request.tenant),
            requests.require(request.workflow_id, "workflow_id"),
            request.range,
            step_id=request.step_id,
        )
        trend = await self._use.queries.trend(
            selection,
            requests.granularity(request.granularity),
            requests.trend_metric(request.metric),
        )
        return analytics_pb2.GetTrendResponse(trend=responses.trend(trend))

    async def GetPerformanceReport(
        self, request: analytics_pb2.GetPerformanceReportRequest, context: Context
    ) -> analytics_pb2.GetPerformanceReportResponse:
        selection = requests.selection(
            self._tenant(context, request.tenant),
            requests.require(request.workflow_id, "workflow_id"),
            request.range,
        )
        report = await self._use.queries.performance_report(
            selection, requests.non_negative(request.top_n, "top_n")
        )
        return analytics_pb2.GetPerformanceReportResponse(
            report=responses.performance_report(report)
        )

    async def CompareWorkflows(
        self, request: analytics_pb2.CompareWorkflowsRequest, context: Context
    ) -> analytics_pb2.CompareWorkflowsResponse:
        tenant = self._tenant(context, request.tenant)
        baseline = requests.selection(
            tenant,
            requests.require(request.baseline.workflow_id, "baseline.workflow_id"),
            request.baseline.range,
            field="baseline.range",
        )
        candidate = requests.selection(
            tenant,
            requests.require(request.candidate.workflow_id, "candidate.workflow_id"),
            request.candidate.range,
            field="candidate.range",
        )
        if request.regression_threshold < 0:
            raise InvalidArgumentError.single("regression_threshold", "must not be negative")
        comparison = await self._use.queries.compare(
            baseline, candidate, request.regression_threshold
        )
        return responses.comparison(comparison)

    async def GetErrorBreakdown(
        self, request: analytics_pb2.GetErrorBreakdownRequest, context: Context
    ) -> analytics_pb2.GetErrorBreakdownResponse:
        selection = requests.selection(
            self._tenant(context, request.tenant), request.workflow_id, request.range
        )
        breakdown = await self._use.queries.error_breakdown(
            selection, requests.non_negative(request.recent_limit, "recent_limit")
        )
        return responses.error_breakdown(breakdown)

    async def GetSystemOverview(
        self, request: analytics_pb2.GetSystemOverviewRequest, context: Context
    ) -> analytics_pb2.GetSystemOverviewResponse:
        selection = requests.selection(self._tenant(context, request.tenant), "", request.range)
        overview = await self._use.queries.system_overview(
            selection, requests.non_negative(request.top_n, "top_n")
        )
        return responses.system_overview(overview)

    async def ExportCsv(
        self, request: analytics_pb2.ExportCsvRequest, context: Context
    ) -> AsyncIterator[analytics_pb2.ExportCsvResponse]:
        selection = requests.selection(
            self._tenant(context, request.tenant),
            request.workflow_id,
            request.range,
            step_id=request.step_id,
        )
        executions = request.kind == analytics_pb2.FACT_KIND_EXECUTIONS
        statuses = requests.export_statuses(list(request.statuses), executions=executions)
        queries = self._use.queries
        if executions:
            yield _chunk(header(EXECUTION_COLUMNS))
            async for execution_page in queries.export_executions(selection, statuses):
                yield _chunk(execution_rows(execution_page))
        else:
            yield _chunk(header(STEP_COLUMNS))
            async for step_page in queries.export_steps(selection, statuses):
                yield _chunk(step_rows(step_page))

    async def CreateAlertRule(
        self, request: analytics_pb2.CreateAlertRuleRequest, context: Context
    ) -> analytics_pb2.CreateAlertRuleResponse:
        new = requests.new_alert_rule(request.rule)
        self._scope(context).require(new.tenant)
        rule = await self._use.alert_rules.create(new)
        return analytics_pb2.CreateAlertRuleResponse(rule=responses.alert_rule(rule))

    async def ListAlertRules(
        self, request: analytics_pb2.ListAlertRulesRequest, context: Context
    ) -> analytics_pb2.ListAlertRulesResponse:
        rules, next_token = await self._use.alert_rules.list(
            self._tenant(context, request.tenant),
            request.workflow_id,
            requests.non_negative(request.page_size, "page_size"),
            request.page_token,
        )
        return analytics_pb2.ListAlertRulesResponse(
            rules=[responses.alert_rule(r) for r in rules], next_page_token=next_token
        )

    async def UpdateAlertRule(
        self, request: analytics_pb2.UpdateAlertRuleRequest, context: Context
    ) -> analytics_pb2.UpdateAlertRuleResponse:
        rule = await self._use.alert_rules.update(
            requests.require(request.rule_id, "rule_id"),
            requests.alert_rule_changes(request),
            self._scope(context),
        )
        return analytics_pb2.UpdateAlertRuleResponse(rule=responses.alert_rule(rule))

    async def DeleteAlertRule(
        self, request: analytics_pb2.DeleteAlertRuleRequest, context: Context
    ) -> analytics_pb2.DeleteAlertRuleResponse:
        await self._use.alert_rules.delete(
            requests.require(request.rule_id, "rule_id"), self._scope(context)
        )
        return analytics_pb2.DeleteAlertRuleResponse()

    async def WatchAlerts(
        self, request: analytics_pb2.WatchAlertsRequest, context: Context
    ) -> AsyncIterator[analytics_pb2.WatchAlertsResponse]:
        tenant = self._tenant(context, request.tenant)
        gauge = self._use.metrics.alert_watchers
        gauge.inc()
        try:
            async for event in self._use.broadcaster.subscribe(tenant, request.rule_id):
                yield analytics_pb2.WatchAlertsResponse(event=responses.alert_event(event))
        finally:
            gauge.dec()


def _chunk(text: str) -> analytics_pb2.ExportCsvResponse:
    return analytics_pb2.ExportCsvResponse(chunk=text.encode())

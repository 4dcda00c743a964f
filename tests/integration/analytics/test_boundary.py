"""The analytics boundary: every malformed request is INVALID_ARGUMENT naming its field.

Each case is one request a hostile or buggy client could send; before the boundary layer
they were answered INTERNAL (or accepted, and broke something later). Run on SQLite and
Postgres: lengths and NUL characters must be refused the same on both.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable
from typing import Any, TypeAlias

import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from stepstream.v1 import analytics_pb2, analytics_pb2_grpc, events_pb2

from analytics_service.core.events import ExecutionStatus
from tests.integration.analytics.wire import to_proto
from tests.unit.analytics.builders import T0, execution_event, step_event

Stub: TypeAlias = "analytics_pb2_grpc.AnalyticsServiceAsyncStub"
Case: TypeAlias = "tuple[str, Callable[[], Message], str]"

AFTER_9999 = timestamp_pb2.Timestamp(seconds=253402300800)
BEFORE_YEAR_1 = timestamp_pb2.Timestamp(seconds=-62135596801)
NEGATIVE_NANOS = timestamp_pb2.Timestamp(seconds=1, nanos=-1)
GOOD_START = timestamp_pb2.Timestamp(seconds=1_700_000_000)

# Every query RPC that takes a range, with what else it needs to be valid, and the path of
# its range field.
QUERIES: dict[str, tuple[Callable[..., Message], dict[str, Any], str]] = {
    "GetWorkflowMetrics": (
        analytics_pb2.GetWorkflowMetricsRequest,
        {"workflow_id": "orders"},
        "range",
    ),
    "GetStepMetrics": (analytics_pb2.GetStepMetricsRequest, {"workflow_id": "orders"}, "range"),
    "GetMostFailedSteps": (analytics_pb2.GetMostFailedStepsRequest, {}, "range"),
    "GetTimeSeries": (analytics_pb2.GetTimeSeriesRequest, {"workflow_id": "orders"}, "range"),
    "GetTrend": (analytics_pb2.GetTrendRequest, {"workflow_id": "orders"}, "range"),
    "GetPerformanceReport": (
        analytics_pb2.GetPerformanceReportRequest,
        {"workflow_id": "orders"},
        "range",
    ),
    "GetErrorBreakdown": (analytics_pb2.GetErrorBreakdownRequest, {}, "range"),
    "GetSystemOverview": (analytics_pb2.GetSystemOverviewRequest, {}, "range"),
    "ExportCsv": (analytics_pb2.ExportCsvRequest, {}, "range"),
}
BAD_BOUNDS = {
    "end_after_9999": ("end", AFTER_9999),
    "start_nanos_negative": ("start", NEGATIVE_NANOS),
    "start_before_year_1": ("start", BEFORE_YEAR_1),
}


def _range_case(method: str, bound: str, value: timestamp_pb2.Timestamp) -> Case:
    make, fields, path = QUERIES[method]

    def request() -> Message:
        bounds = {"start": GOOD_START, bound: value}
        return make(range=analytics_pb2.TimeRange(**bounds), **fields)

    return method, request, f"{path}.{bound}"


def _compare(**selector: Any) -> Callable[[], Message]:
    def request() -> Message:
        good = analytics_pb2.WorkflowSelector(workflow_id="orders")
        return analytics_pb2.CompareWorkflowsRequest(
            baseline=analytics_pb2.WorkflowSelector(workflow_id="orders", **selector),
            candidate=good,
        )

    return request


def _rule(**fields: Any) -> analytics_pb2.AlertRule:
    values: dict[str, Any] = {
        "name": "failing",
        "workflow_id": "orders",
        "metric": analytics_pb2.ALERT_METRIC_FAILURE_RATE,
        "comparator": analytics_pb2.COMPARATOR_GREATER_THAN,
        "threshold": 0.5,
        "window": duration_pb2.Duration(seconds=600),
        "enabled": True,
    }
    values.update(fields)
    return analytics_pb2.AlertRule(**values)


def _create_rule(**fields: Any) -> Callable[[], Message]:
    return lambda: analytics_pb2.CreateAlertRuleRequest(rule=_rule(**fields))


def _event(**fields: Any) -> Callable[[], Message]:
    def request() -> Message:
        event = to_proto(execution_event("e1", finished_at=T0))
        for name, value in fields.items():
            target, _, leaf = name.partition("__")
            if leaf:
                setattr(getattr(event, target), leaf, value)
            elif isinstance(value, Message):
                getattr(event, name).CopyFrom(value)
            else:
                setattr(event, name, value)
        return analytics_pb2.IngestEventsRequest(batch=events_pb2.EventBatch(events=[event]))

    return request


def _step_event(**fields: Any) -> Callable[[], Message]:
    def request() -> Message:
        event = to_proto(step_event("e1", "charge"))
        for name, value in fields.items():
            setattr(event, name, value)
        return analytics_pb2.IngestEventsRequest(batch=events_pb2.EventBatch(events=[event]))

    return request


EVENT = "batch[0].events[0]"
CASES: dict[str, Case] = {
    **{
        f"{method}-{name}": _range_case(method, bound, value)
        for method in QUERIES
        for name, (bound, value) in BAD_BOUNDS.items()
    },
    "CompareWorkflows-end_after_9999": (
        "CompareWorkflows",
        _compare(range=analytics_pb2.TimeRange(end=AFTER_9999)),
        "baseline.range.end",
    ),
    "CompareWorkflows-threshold_nan": (
        "CompareWorkflows",
        lambda: analytics_pb2.CompareWorkflowsRequest(
            baseline=analytics_pb2.WorkflowSelector(workflow_id="orders"),
            candidate=analytics_pb2.WorkflowSelector(workflow_id="orders"),
            regression_threshold=math.nan,
        ),
        "regression_threshold",
    ),
    # Undefined enum numbers.
    "GetTimeSeries-granularity_99": (
        "GetTimeSeries",
        lambda: analytics_pb2.GetTimeSeriesRequest(workflow_id="orders", granularity=99),  # type: ignore[arg-type]
        "granularity",
    ),
    "GetTrend-metric_99": (
        "GetTrend",
        lambda: analytics_pb2.GetTrendRequest(workflow_id="orders", metric=99),  # type: ignore[arg-type]
        "metric",
    ),
    "GetMostFailedSteps-ranking_minus_1": (
        "GetMostFailedSteps",
        lambda: analytics_pb2.GetMostFailedStepsRequest(ranking=-1),  # type: ignore[arg-type]
        "ranking",
    ),
    "ExportCsv-kind_99": (
        "ExportCsv",
        lambda: analytics_pb2.ExportCsvRequest(kind=99),  # type: ignore[arg-type]
        "kind",
    ),
    "CreateAlertRule-metric_99": ("CreateAlertRule", _create_rule(metric=99), "rule.metric"),
    "CreateAlertRule-comparator_99": (
        "CreateAlertRule",
        _create_rule(comparator=99),
        "rule.comparator",
    ),
    "UpdateAlertRule-comparator_99": (
        "UpdateAlertRule",
        lambda: analytics_pb2.UpdateAlertRuleRequest(rule_id="r1", comparator=99),  # type: ignore[arg-type]
        "comparator",
    ),
    "IngestEvents-execution_status_99": (
        "IngestEvents",
        _event(execution_status=99),
        f"{EVENT}.execution_status",
    ),
    "IngestEvents-step_status_99": (
        "IngestEvents",
        _step_event(step_status=99),
        f"{EVENT}.step_status",
    ),
    # Numbers that are not finite.
    "IngestEvents-business_value_nan": (
        "IngestEvents",
        _event(business_value=math.nan),
        f"{EVENT}.business_value",
    ),
    "IngestEvents-business_value_inf": (
        "IngestEvents",
        _event(business_value=-math.inf),
        f"{EVENT}.business_value",
    ),
    "CreateAlertRule-threshold_inf": (
        "CreateAlertRule",
        _create_rule(threshold=math.inf),
        "rule.threshold",
    ),
    "UpdateAlertRule-threshold_nan": (
        "UpdateAlertRule",
        lambda: analytics_pb2.UpdateAlertRuleRequest(rule_id="r1", threshold=math.nan),
        "threshold",
    ),
    # Timestamps and durations out of their range inside events.
    "IngestEvents-timestamp_after_9999": (
        "IngestEvents",
        _event(timestamp=AFTER_9999),
        f"{EVENT}.timestamp",
    ),
    "IngestEvents-started_at_nanos_negative": (
        "IngestEvents",
        _event(started_at=NEGATIVE_NANOS),
        f"{EVENT}.started_at",
    ),
    "IngestEvents-duration_mixed_signs": (
        "IngestEvents",
        _event(duration=duration_pb2.Duration(seconds=1, nanos=-5)),
        f"{EVENT}.duration",
    ),
    "IngestEvents-duration_negative": (
        "IngestEvents",
        _event(duration=duration_pb2.Duration(seconds=-1)),
        f"{EVENT}.duration",
    ),
    "IngestEvents-duration_over_a_century": (
        "IngestEvents",
        _event(duration=duration_pb2.Duration(seconds=101 * 31_557_600)),
        f"{EVENT}.duration",
    ),
    "IngestEvents-time_saved_too_long": (
        "IngestEvents",
        _event(estimated_time_saved=duration_pb2.Duration(seconds=315576000001)),
        f"{EVENT}.estimated_time_saved",
    ),
    # Windows: 10,000 years stopped every evaluation round; mixed signs are no duration.
    "CreateAlertRule-window_10000_years": (
        "CreateAlertRule",
        _create_rule(window=duration_pb2.Duration(seconds=315576000000)),
        "rule.window",
    ),
    "CreateAlertRule-window_mixed_signs": (
        "CreateAlertRule",
        _create_rule(window=duration_pb2.Duration(seconds=600, nanos=-5)),
        "rule.window",
    ),
    "UpdateAlertRule-window_10000_years": (
        "UpdateAlertRule",
        lambda: analytics_pb2.UpdateAlertRuleRequest(
            rule_id="r1", window=duration_pb2.Duration(seconds=315576000000)
        ),
        "window",
    ),
    # NUL characters and lengths, which Postgres refuses (and SQLite stores).
    "GetWorkflowMetrics-tenant_nul": (
        "GetWorkflowMetrics",
        lambda: analytics_pb2.GetWorkflowMetricsRequest(tenant="\x00", workflow_id="orders"),
        "tenant",
    ),
    "GetWorkflowMetrics-tenant_100000": (
        "GetWorkflowMetrics",
        lambda: analytics_pb2.GetWorkflowMetricsRequest(tenant="t" * 100_000, workflow_id="o"),
        "tenant",
    ),
    "GetStepMetrics-step_id_nul": (
        "GetStepMetrics",
        lambda: analytics_pb2.GetStepMetricsRequest(workflow_id="orders", step_id="a\x00"),
        "step_id",
    ),
    "ExportCsv-statuses_nul": (
        "ExportCsv",
        lambda: analytics_pb2.ExportCsvRequest(statuses=["completed", "\x00"]),
        "statuses[1]",
    ),
    "DeleteAlertRule-rule_id_nul": (
        "DeleteAlertRule",
        lambda: analytics_pb2.DeleteAlertRuleRequest(rule_id="\x00"),
        "rule_id",
    ),
    "DeleteAlertRule-rule_id_100000": (
        "DeleteAlertRule",
        lambda: analytics_pb2.DeleteAlertRuleRequest(rule_id="r" * 100_000),
        "rule_id",
    ),
    "ListAlertRules-page_token_nul": (
        "ListAlertRules",
        lambda: analytics_pb2.ListAlertRulesRequest(page_token="\x00"),
        "page_token",
    ),
    "WatchAlerts-rule_id_nul": (
        "WatchAlerts",
        lambda: analytics_pb2.WatchAlertsRequest(rule_id="\x00"),
        "rule_id",
    ),
    "CreateAlertRule-name_nul": ("CreateAlertRule", _create_rule(name="a\x00"), "rule.name"),
    "CreateAlertRule-workflow_id_long": (
        "CreateAlertRule",
        _create_rule(workflow_id="w" * 257),
        "rule.workflow_id",
    ),
    "IngestEvents-event_id_nul": ("IngestEvents", _event(event_id="\x00"), f"{EVENT}.event_id"),
    "IngestEvents-execution_id_long": (
        "IngestEvents",
        _event(execution_id="x" * 129),
        f"{EVENT}.execution_id",
    ),
    "IngestEvents-depends_on_nul": (
        "IngestEvents",
        lambda: analytics_pb2.IngestEventsRequest(
            batch=events_pb2.EventBatch(
                events=[to_proto(step_event("e1", "b", depends_on=("a", "\x00")))]
            )
        ),
        f"{EVENT}.depends_on[1]",
    ),
}


async def _call(stub: Stub, method: str, request: Message) -> None:
    rpc = getattr(stub, method)
    if method == "IngestEvents":
        await rpc(iter([request]))
    elif method in ("ExportCsv", "WatchAlerts"):
        async for _ in rpc(request):
            pass
    else:
        await rpc(request)


def violated_fields(error: grpc.aio.AioRpcError) -> list[str]:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, error.details()
    details = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(details)
    return [violation.field for violation in details.field_violations]


async def _answer(stub: Stub, case: Case) -> tuple[str, list[str]]:
    """The code and violated fields a case is answered with ("OK" if it was accepted)."""
    method, request, _ = case
    try:
        await _call(stub, method, request())
    except grpc.aio.AioRpcError as error:
        if error.code() != grpc.StatusCode.INVALID_ARGUMENT:
            return error.code().name, []
        return "INVALID_ARGUMENT", violated_fields(error)
    return "OK", []


@pytest.mark.timeout(60)
async def test_every_malformed_request_is_invalid_argument_naming_its_field(stub: Stub) -> None:
    # One service for every case: each is one request, and the service must survive all.
    wrong = {}
    for name, case in CASES.items():
        code, fields = await _answer(stub, case)
        if code != "INVALID_ARGUMENT" or case[2] not in fields:
            wrong[name] = (code, fields)
    assert wrong == {}


@pytest.mark.timeout(30)
async def test_the_nth_message_of_an_ingest_stream_is_named_by_its_index(stub: Stub) -> None:
    good = to_proto(execution_event("e1"))
    bad = to_proto(execution_event("e2"))
    bad.business_value = math.nan
    requests = [
        analytics_pb2.IngestEventsRequest(batch=events_pb2.EventBatch(events=[good])),
        analytics_pb2.IngestEventsRequest(batch=events_pb2.EventBatch(events=[good, bad])),
    ]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.IngestEvents(iter(requests))
    assert violated_fields(caught.value) == ["batch[1].events[1].business_value"]


@pytest.mark.timeout(30)
async def test_the_extremes_of_the_valid_ranges_are_answered(stub: Stub) -> None:
    earliest = timestamp_pb2.Timestamp(seconds=-62135596800)
    latest = timestamp_pb2.Timestamp(seconds=253402300799, nanos=999_999_999)
    whole = analytics_pb2.TimeRange(start=earliest, end=latest)
    for method, (make, fields, _) in QUERIES.items():
        await _call(stub, method, make(range=whole, **fields))
    longest = duration_pb2.Duration(seconds=31 * 86400)
    created = await stub.CreateAlertRule(
        analytics_pb2.CreateAlertRuleRequest(rule=_rule(window=longest, name="x" * 256))
    )
    assert created.rule.window == longest


@pytest.mark.timeout(30)
async def test_an_events_error_texts_are_cut_and_cleaned_not_refused(stub: Stub) -> None:
    # Whatever an action raised: the failure must count, whatever its message says.
    event = to_proto(execution_event("e1", status=ExecutionStatus.FAILED))
    event.error.type = "Broken\x00" + "E" * 300
    event.error.message = "boom\x00" + "m" * 100_000
    request = analytics_pb2.IngestEventsRequest(batch=events_pb2.EventBatch(events=[event]))
    response = await stub.IngestEvents(iter([request]))
    assert response.accepted == 1
    export = stub.ExportCsv(analytics_pb2.ExportCsvRequest(kind=analytics_pb2.FACT_KIND_EXECUTIONS))
    text = b"".join([chunk.chunk async for chunk in export]).decode()
    [row] = list(csv.DictReader(io.StringIO(text, newline="")))
    assert row["error_type"] == ("Broken\ufffd" + "E" * 300)[:256]
    message = row["error_message"]
    assert len(message) == 64 * 1024
    assert message.startswith("boom\ufffdmmm")
    assert message.endswith("m ... [truncated]")

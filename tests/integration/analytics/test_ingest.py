"""Ingest through the real RPC: idempotent by event id, independent of order and batching."""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import Sequence
from dataclasses import replace
from typing import TypeAlias

import grpc
import pytest
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stepstream.v1 import analytics_pb2, analytics_pb2_grpc, events_pb2

from analytics_service.core.events import ExecutionEvent
from tests.integration.analytics import scenario
from tests.integration.analytics.wire import ingest, time_range
from tests.unit.analytics.builders import T0, step_event

Stub: TypeAlias = "analytics_pb2_grpc.AnalyticsServiceAsyncStub"
EVERYTHING = time_range(T0.replace(hour=0), T0.replace(hour=23))
TEMPLATE_SIZE = len(scenario.orders_events())


async def aggregates(stub: Stub, tenant: str) -> list[Message]:
    """Everything the rollups answer for one tenant, ids of executions aside."""
    workflow = await stub.GetWorkflowMetrics(
        analytics_pb2.GetWorkflowMetricsRequest(
            tenant=tenant, workflow_id="orders", range=EVERYTHING
        )
    )
    steps = await stub.GetStepMetrics(
        analytics_pb2.GetStepMetricsRequest(tenant=tenant, workflow_id="orders", range=EVERYTHING)
    )
    series = await stub.GetTimeSeries(
        analytics_pb2.GetTimeSeriesRequest(
            tenant=tenant,
            workflow_id="orders",
            step_id="charge",
            range=EVERYTHING,
            granularity=analytics_pb2.GRANULARITY_MINUTE,
        )
    )
    errors = await stub.GetErrorBreakdown(
        analytics_pb2.GetErrorBreakdownRequest(tenant=tenant, range=EVERYTHING)
    )
    del errors.recent[:]
    return [workflow, steps, series, errors]


def batched(events: Sequence[ExecutionEvent], sizes: Sequence[int]) -> list[list[ExecutionEvent]]:
    batches, start = [], 0
    for size in sizes:
        if start >= len(events):
            break
        batches.append(list(events[start : start + size]))
        start += size
    if start < len(events):
        batches.append(list(events[start:]))
    return batches


async def test_a_redelivered_batch_changes_nothing(stub: Stub) -> None:
    events = scenario.orders_events()
    first = await ingest(stub, [events])
    before = await aggregates(stub, "default")
    again = await ingest(stub, [events, events[:7]])
    assert (first.accepted, first.duplicates, first.batches) == (len(events), 0, 1)
    assert (again.accepted, again.duplicates, again.batches) == (0, len(events) + 7, 2)
    assert await aggregates(stub, "default") == before


async def test_repeats_inside_one_batch_count_once(stub: Stub) -> None:
    events = scenario.orders_events()
    response = await ingest(stub, [events + events[:3]])
    assert (response.accepted, response.duplicates) == (len(events), 3)


async def test_reversed_order_gives_the_same_aggregates(stub: Stub) -> None:
    await ingest(stub, [scenario.orders_events("forward")])
    backwards = list(reversed(scenario.orders_events("backward")))
    await ingest(stub, [[event] for event in backwards])
    assert await aggregates(stub, "forward") == await aggregates(stub, "backward")


@pytest.fixture
async def reference(stub: Stub) -> list[Message]:
    """The aggregates of the whole event set ingested in one batch, computed once."""
    await ingest(stub, [scenario.orders_events("reference")])
    return await aggregates(stub, "reference")


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    order=st.permutations(range(TEMPLATE_SIZE)),
    sizes=st.lists(st.integers(min_value=1, max_value=12), min_size=1, max_size=10),
    redeliver=st.lists(st.integers(min_value=0, max_value=20), max_size=4),
)
async def test_any_partition_order_and_redelivery_gives_the_same_aggregates(
    stub: Stub, reference: list[Message], order: list[int], sizes: list[int], redeliver: list[int]
) -> None:
    # A fresh tenant per example: the examples share one database but never each other's rows.
    tenant = f"t{uuid.uuid4().hex[:10]}"
    template = scenario.orders_events(tenant)
    batches = batched([template[i] for i in order], sizes)
    resent = [batches[i % len(batches)] for i in redeliver]
    response = await ingest(stub, batches + resent)
    assert response.accepted == TEMPLATE_SIZE
    assert response.duplicates == sum(len(batch) for batch in resent)
    assert await aggregates(stub, tenant) == reference


async def test_an_invalid_event_is_rejected_with_field_violations(stub: Stub) -> None:
    bad = events_pb2.ExecutionEvent(
        event_id="", execution_id="e1", kind=events_pb2.EVENT_KIND_STEP_STATUS_CHANGED
    )
    request = analytics_pb2.IngestEventsRequest(batch=events_pb2.EventBatch(events=[bad]))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.IngestEvents(iter([request]))
    error = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    bad_request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad_request)
    fields = {v.field for v in bad_request.field_violations}
    assert fields == {
        "batch[0].events[0].event_id",
        "batch[0].events[0].workflow_id",
        "batch[0].events[0].timestamp",
        "batch[0].events[0].step_id",
    }


async def test_two_events_for_one_attempt_in_a_batch_keep_the_first_fact(stub: Stub) -> None:
    first = step_event("e1", "charge", seconds=1.0)
    # An id that sorts first: the order of the batch decides, not the order of the ids.
    second = replace(first, event_id="a-replayed", duration_seconds=3.0)
    response = await ingest(stub, [[first, second]])
    assert (response.accepted, response.duplicates) == (2, 0)
    export = stub.ExportCsv(analytics_pb2.ExportCsvRequest(range=EVERYTHING))
    text = b"".join([chunk.chunk async for chunk in export]).decode()
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    assert [float(row["duration_seconds"]) for row in rows] == [1.0]

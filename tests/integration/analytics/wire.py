"""Domain test events onto the wire, and ingestion through the real RPC."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from google.protobuf import duration_pb2, timestamp_pb2
from stepstream.v1 import analytics_pb2, analytics_pb2_grpc, events_pb2

from analytics_service.core.events import EventKind, ExecutionEvent


def _timestamp(event_time: object) -> timestamp_pb2.Timestamp:
    message = timestamp_pb2.Timestamp()
    message.FromDatetime(event_time)  # type: ignore[arg-type]
    return message


def _duration(seconds: float) -> duration_pb2.Duration:
    message = duration_pb2.Duration()
    message.FromNanoseconds(round(seconds * 1e9))
    return message


def to_proto(event: ExecutionEvent) -> events_pb2.ExecutionEvent:
    kind = {
        EventKind.EXECUTION_STATUS_CHANGED: events_pb2.EVENT_KIND_EXECUTION_STATUS_CHANGED,
        EventKind.STEP_STATUS_CHANGED: events_pb2.EVENT_KIND_STEP_STATUS_CHANGED,
    }[event.kind]
    message = events_pb2.ExecutionEvent(
        event_id=event.event_id,
        execution_id=event.execution_id,
        workflow_id=event.workflow_id,
        workflow_version=event.workflow_version,
        sequence=event.sequence,
        timestamp=_timestamp(event.occurred_at),
        kind=kind,
        step_id=event.step_id,
        attempt=event.attempt,
        execution_status=events_pb2.ExecutionStatus.Value(
            f"EXECUTION_STATUS_{event.execution_status.name}"
        ),
        step_status=events_pb2.StepStatus.Value(f"STEP_STATUS_{event.step_status.name}"),
        duration=_duration(event.duration_seconds),
        error=events_pb2.Failure(type=event.error_type, message=event.error_message),
        tenant=event.tenant,
        action=event.action,
        estimated_time_saved=_duration(event.estimated_time_saved_seconds),
        business_value=event.business_value,
        depends_on=list(event.depends_on),
    )
    if event.started_at is not None:
        message.started_at.CopyFrom(_timestamp(event.started_at))
    return message


def batch_requests(
    batches: Iterable[Sequence[ExecutionEvent]],
) -> list[analytics_pb2.IngestEventsRequest]:
    return [
        analytics_pb2.IngestEventsRequest(
            batch=events_pb2.EventBatch(
                events=[to_proto(e) for e in batch], batch_id=f"batch-{index}"
            )
        )
        for index, batch in enumerate(batches)
    ]


async def ingest(
    stub: analytics_pb2_grpc.AnalyticsServiceAsyncStub,
    batches: Iterable[Sequence[ExecutionEvent]],
    metadata: Sequence[tuple[str, str]] = (),
) -> analytics_pb2.IngestEventsResponse:
    requests = batch_requests(batches)
    return await stub.IngestEvents(iter(requests), metadata=tuple(metadata))


def time_range(start: object, end: object) -> analytics_pb2.TimeRange:
    return analytics_pb2.TimeRange(start=_timestamp(start), end=_timestamp(end))

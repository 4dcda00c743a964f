"""Protobuf <-> domain conversion for the engine's gRPC API.

Definitions cross as dicts in the canonical proto-JSON form that `core.definitions`
reads and `core.definition_format` writes, so there is one parser. JSON values cross as
`google.protobuf.Struct`, which only holds objects at the top level and only doubles as
numbers: a step output that is not an object is sent as `{"value": <output>}`, and
whole-number doubles coming in become ints (so `${inputs.n}` stays an int in CEL, where
`1` and `1.0` do not mix).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from google.protobuf import duration_pb2, json_format, struct_pb2, timestamp_pb2
from stepstream.v1 import engine_pb2, events_pb2, workflow_pb2

from engine_service.core.definition_format import definition_to_dict
from engine_service.core.model import WorkflowDefinition
from engine_service.core.schedules import MissedRunPolicy, OverlapPolicy, Schedule
from engine_service.core.state import (
    EventKind,
    ExecutionEvent,
    ExecutionState,
    ExecutionStatus,
    Failure,
    StepState,
    StepStatus,
)
from engine_service.transport.offload import CpuLane

# Doubles beyond this are not exact integers, so they stay floats.
_MAX_EXACT_INT: Final = 2**53
# Messages larger than this (encoded) are converted in the CPU lane: protobuf's JSON
# conversion is pure Python, about a second per 100,000 values.
OFF_LOOP_BYTES: Final = 64 * 1024


# -- JSON values ---------------------------------------------------------------------------


def normalize_numbers(value: Any) -> Any:
    """`value` with every whole-number float turned into an int, recursively."""
    if isinstance(value, float) and value.is_integer() and abs(value) <= _MAX_EXACT_INT:
        return int(value)
    if isinstance(value, Mapping):
        return {key: normalize_numbers(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [normalize_numbers(item) for item in value]
    return value


def struct_to_dict(message: struct_pb2.Struct) -> dict[str, Any]:
    converted: dict[str, Any] = normalize_numbers(json_format.MessageToDict(message))
    return converted


async def struct_to_dict_off_loop(message: struct_pb2.Struct, lane: CpuLane) -> dict[str, Any]:
    """`struct_to_dict`, in the CPU lane when the Struct is large."""
    if message.ByteSize() > OFF_LOOP_BYTES:
        return await lane.run(lambda: struct_to_dict(message))
    return struct_to_dict(message)


def to_struct(value: Any) -> struct_pb2.Struct:
    """A Struct of a JSON value; values that are not objects are wrapped as {"value": ...}."""
    struct = struct_pb2.Struct()
    struct.update(dict(value) if isinstance(value, Mapping) else {"value": value})
    return struct


def _set_struct(target: struct_pb2.Struct, value: Any) -> None:
    if value is not None:
        target.CopyFrom(to_struct(value))


def to_timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    timestamp = timestamp_pb2.Timestamp()
    timestamp.FromDatetime(moment if moment.tzinfo else moment.replace(tzinfo=UTC))
    return timestamp


def from_timestamp(timestamp: timestamp_pb2.Timestamp) -> datetime:
    return timestamp.ToDatetime(tzinfo=UTC)


def _set_timestamp(target: timestamp_pb2.Timestamp, moment: datetime | None) -> None:
    if moment is not None:
        target.CopyFrom(to_timestamp(moment))


def to_duration(seconds: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(round(seconds * 1e9))
    return duration


# -- enums ---------------------------------------------------------------------------------


def execution_status_to_proto(status: ExecutionStatus) -> events_pb2.ExecutionStatus.ValueType:
    return events_pb2.ExecutionStatus.Value(f"EXECUTION_STATUS_{status.value}")


def execution_status_from_proto(value: int) -> ExecutionStatus | None:
    """The domain status of a proto enum number; None for UNSPECIFIED or unknown numbers."""
    known = value in events_pb2.ExecutionStatus.values()
    name = (
        events_pb2.ExecutionStatus.Name(events_pb2.ExecutionStatus.ValueType(value))
        if known
        else ""
    )
    prefix = "EXECUTION_STATUS_"
    if not name.startswith(prefix) or name == f"{prefix}UNSPECIFIED":
        return None
    return ExecutionStatus(name.removeprefix(prefix))


def step_status_to_proto(status: StepStatus) -> events_pb2.StepStatus.ValueType:
    return events_pb2.StepStatus.Value(f"STEP_STATUS_{status.value}")


def event_kind_to_proto(kind: EventKind) -> events_pb2.EventKind.ValueType:
    return events_pb2.EventKind.Value(f"EVENT_KIND_{kind.value}")


# -- workflow definitions ------------------------------------------------------------------


def definition_from_proto(message: workflow_pb2.WorkflowDefinition) -> dict[str, Any]:
    """The dict `Engine.register_workflow` and `validate_definition` read."""
    data = json_format.MessageToDict(message, preserving_proto_field_name=True)
    converted: dict[str, Any] = normalize_numbers(data)
    return converted


async def definition_from_proto_off_loop(
    message: workflow_pb2.WorkflowDefinition, lane: CpuLane
) -> dict[str, Any]:
    """`definition_from_proto`, in the CPU lane when the definition is large."""
    if message.ByteSize() > OFF_LOOP_BYTES:
        return await lane.run(lambda: definition_from_proto(message))
    return definition_from_proto(message)


def definition_to_proto(definition: WorkflowDefinition) -> workflow_pb2.WorkflowDefinition:
    """The stored definition in the form it was written in, with its version and tenant."""
    data = dict(definition.source) or definition_to_dict(definition)
    data["version"] = definition.version
    data["tenant"] = definition.tenant
    message = workflow_pb2.WorkflowDefinition()
    json_format.ParseDict(data, message, ignore_unknown_fields=True)
    return message


# -- executions ----------------------------------------------------------------------------


def _set_failure(target: events_pb2.Failure, failure: Failure | None) -> None:
    if failure is not None:
        target.type = failure.type
        target.message = failure.message


def step_to_proto(step: StepState) -> engine_pb2.StepState:
    message = engine_pb2.StepState(
        step_id=step.step_id,
        status=step_status_to_proto(step.status),
        attempt=step.attempt,
        fallback_used=step.fallback_used,
        compensated=step.compensated,
        missing_inputs=list(step.missing_inputs),
        child_execution_id=step.child_execution_id,
    )
    _set_timestamp(message.started_at, step.started_at)
    _set_timestamp(message.finished_at, step.finished_at)
    _set_timestamp(message.next_attempt_at, step.next_attempt_at)
    _set_struct(message.output, step.output)
    _set_failure(message.error, step.error)
    return message


def execution_to_proto(state: ExecutionState) -> engine_pb2.Execution:
    message = engine_pb2.Execution(
        id=state.id,
        tenant=state.tenant,
        workflow_id=state.workflow_id,
        workflow_version=state.workflow_version,
        status=execution_status_to_proto(state.status),
        parent_execution_id=state.parent_execution_id,
        parent_step_id=state.parent_step_id,
        idempotency_key=state.idempotency_key,
        steps=[step_to_proto(step) for step in state.steps.values()],
        last_sequence=state.last_sequence,
        missing_inputs=list(state.missing_inputs),
        compensated_steps=list(state.compensated_steps),
        schedule_id=state.schedule_id,
    )
    _set_struct(message.inputs, state.inputs)
    _set_struct(message.outputs, state.outputs)
    _set_timestamp(message.created_at, state.created_at)
    _set_timestamp(message.started_at, state.started_at)
    _set_timestamp(message.finished_at, state.finished_at)
    _set_failure(message.error, state.error)
    return message


def event_to_proto(event: ExecutionEvent) -> events_pb2.ExecutionEvent:
    message = events_pb2.ExecutionEvent(
        event_id=event.event_id,
        execution_id=event.execution_id,
        workflow_id=event.workflow_id,
        workflow_version=event.workflow_version,
        sequence=event.sequence,
        kind=event_kind_to_proto(event.kind),
        step_id=event.step_id,
        attempt=event.attempt,
        missing_inputs=list(event.missing_inputs),
        tenant=event.tenant,
        action=event.action,
        parent_execution_id=event.parent_execution_id,
        business_value=event.business_value,
        depends_on=list(event.depends_on),
        parent_step_id=event.parent_step_id,
        child_execution_id=event.child_execution_id,
    )
    _set_event_optionals(message, event)
    return message


def _set_event_optionals(message: events_pb2.ExecutionEvent, event: ExecutionEvent) -> None:
    if event.execution_status is not None:
        message.execution_status = execution_status_to_proto(event.execution_status)
    if event.step_status is not None:
        message.step_status = step_status_to_proto(event.step_status)
    if event.duration is not None:
        message.duration.CopyFrom(to_duration(event.duration))
    if event.estimated_time_saved:
        message.estimated_time_saved.CopyFrom(to_duration(event.estimated_time_saved))
    _set_timestamp(message.timestamp, event.timestamp)
    _set_timestamp(message.started_at, event.started_at)
    _set_timestamp(message.next_attempt_at, event.next_attempt_at)
    _set_failure(message.error, event.error)
    _set_struct(message.output, event.output)
    _set_struct(message.inputs, event.inputs)


def batch_to_proto(events: list[ExecutionEvent], batch_id: str) -> events_pb2.EventBatch:
    return events_pb2.EventBatch(events=[event_to_proto(e) for e in events], batch_id=batch_id)


# -- schedules -----------------------------------------------------------------------------


def overlap_policy_to_proto(policy: OverlapPolicy) -> engine_pb2.OverlapPolicy.ValueType:
    return engine_pb2.OverlapPolicy.Value(f"OVERLAP_POLICY_{policy.value}")


def overlap_policy_from_proto(value: int) -> OverlapPolicy | None:
    """None for UNSPECIFIED; ValueError for a number the contract does not define."""
    name = _enum_name(engine_pb2.OverlapPolicy.items(), value, "OVERLAP_POLICY_")
    return None if name is None else OverlapPolicy(name)


def missed_run_policy_to_proto(policy: MissedRunPolicy) -> engine_pb2.MissedRunPolicy.ValueType:
    return engine_pb2.MissedRunPolicy.Value(f"MISSED_RUN_POLICY_{policy.value}")


def missed_run_policy_from_proto(value: int) -> MissedRunPolicy | None:
    """None for UNSPECIFIED; ValueError for a number the contract does not define."""
    name = _enum_name(engine_pb2.MissedRunPolicy.items(), value, "MISSED_RUN_POLICY_")
    return None if name is None else MissedRunPolicy(name)


def _enum_name(items: list[tuple[str, Any]], value: int, prefix: str) -> str | None:
    for name, number in items:
        if number == value:
            short = name.removeprefix(prefix)
            return None if short == "UNSPECIFIED" else short
    raise ValueError(f"{value} is not a defined value")


def schedule_to_proto(schedule: Schedule) -> engine_pb2.Schedule:
    message = engine_pb2.Schedule(
        id=schedule.id,
        tenant=schedule.tenant,
        workflow_id=schedule.workflow_id,
        workflow_version=schedule.workflow_version,
        cron=schedule.cron,
        time_zone=schedule.time_zone,
        overlap_policy=overlap_policy_to_proto(schedule.overlap_policy),
        missed_run_policy=missed_run_policy_to_proto(schedule.missed_run_policy),
        paused=schedule.paused,
        last_execution_id=schedule.last_execution_id,
    )
    message.inputs.CopyFrom(to_struct(schedule.inputs))
    _set_timestamp(message.next_run_at, schedule.next_run_at)
    _set_timestamp(message.last_run_at, schedule.last_run_at)
    _set_timestamp(message.created_at, schedule.created_at)
    return message

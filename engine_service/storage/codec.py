"""Domain values <-> the JSON kept in the engine's tables."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson

from engine_service.core.state import (
    EventKind,
    ExecutionEvent,
    ExecutionState,
    ExecutionStatus,
    Failure,
    StepState,
    StepStatus,
)


def dumps(value: Any) -> str:
    """JSON text for a column: orjson (several times faster than `json` on the events the
    engine writes per step), and `json` for what orjson refuses (integers beyond 64 bits,
    non-string keys)."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return json.dumps(value)


def loads(text: str | bytes) -> Any:
    return orjson.loads(text)


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands timestamps back without a zone; they were written in UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def _time(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _failure(value: Failure | None) -> dict[str, str] | None:
    return {"type": value.type, "message": value.message} if value is not None else None


def _parse_failure(value: Mapping[str, str] | None) -> Failure | None:
    return Failure(value["type"], value["message"]) if value else None


def event_to_json(event: ExecutionEvent) -> dict[str, Any]:
    return {
        "event_id": event.event_id,
        "execution_id": event.execution_id,
        "sequence": event.sequence,
        "timestamp": _time(event.timestamp),
        "kind": event.kind.value,
        "tenant": event.tenant,
        "workflow_id": event.workflow_id,
        "workflow_version": event.workflow_version,
        "execution_status": event.execution_status.value if event.execution_status else None,
        "step_id": event.step_id,
        "step_status": event.step_status.value if event.step_status else None,
        "attempt": event.attempt,
        "action": event.action,
        "duration": event.duration,
        "started_at": _time(event.started_at),
        "error": _failure(event.error),
        "output": event.output,
        "missing_inputs": list(event.missing_inputs),
        "inputs": dict(event.inputs) if event.inputs is not None else None,
        "parent_execution_id": event.parent_execution_id,
        "parent_step_id": event.parent_step_id,
        "next_attempt_at": _time(event.next_attempt_at),
        "depends_on": list(event.depends_on),
        "estimated_time_saved": event.estimated_time_saved,
        "business_value": event.business_value,
        "child_execution_id": event.child_execution_id,
    }


def event_from_json(data: Mapping[str, Any]) -> ExecutionEvent:
    timestamp = _parse_time(data["timestamp"])
    assert timestamp is not None
    return ExecutionEvent(
        event_id=data["event_id"],
        execution_id=data["execution_id"],
        sequence=data["sequence"],
        timestamp=timestamp,
        kind=EventKind(data["kind"]),
        tenant=data["tenant"],
        workflow_id=data["workflow_id"],
        workflow_version=data["workflow_version"],
        execution_status=_optional_enum(ExecutionStatus, data["execution_status"]),
        step_id=data["step_id"],
        step_status=_optional_enum(StepStatus, data["step_status"]),
        attempt=data["attempt"],
        action=data["action"],
        duration=data["duration"],
        started_at=_parse_time(data["started_at"]),
        error=_parse_failure(data["error"]),
        output=data["output"],
        missing_inputs=tuple(data["missing_inputs"]),
        inputs=data["inputs"],
        parent_execution_id=data["parent_execution_id"],
        parent_step_id=data["parent_step_id"],
        next_attempt_at=_parse_time(data["next_attempt_at"]),
        depends_on=tuple(data["depends_on"]),
        estimated_time_saved=data["estimated_time_saved"],
        business_value=data["business_value"],
        child_execution_id=data["child_execution_id"],
    )


def _optional_enum(enum: Any, value: str | None) -> Any:
    return enum(value) if value is not None else None


def _step_to_json(step: StepState) -> dict[str, Any]:
    return {
        "status": step.status.value,
        "attempt": step.attempt,
        "started_at": _time(step.started_at),
        "finished_at": _time(step.finished_at),
        "output": step.output,
        "error": _failure(step.error),
        "fallback_used": step.fallback_used,
        "compensated": step.compensated,
        "missing_inputs": list(step.missing_inputs),
        "next_attempt_at": _time(step.next_attempt_at),
        "child_execution_id": step.child_execution_id,
        "lost_attempts": step.lost_attempts,
        "lost_since": _time(step.lost_since),
    }


def _step_from_json(step_id: str, data: Mapping[str, Any]) -> StepState:
    return StepState(
        step_id=step_id,
        status=StepStatus(data["status"]),
        attempt=data["attempt"],
        started_at=_parse_time(data["started_at"]),
        finished_at=_parse_time(data["finished_at"]),
        output=data["output"],
        error=_parse_failure(data["error"]),
        fallback_used=data["fallback_used"],
        compensated=data["compensated"],
        missing_inputs=tuple(data["missing_inputs"]),
        next_attempt_at=_parse_time(data["next_attempt_at"]),
        child_execution_id=data["child_execution_id"],
        # Snapshots written before lost attempts were counted have none.
        lost_attempts=data.get("lost_attempts", 0),
        lost_since=_parse_time(data.get("lost_since")),
    )


def state_snapshot(state: ExecutionState) -> dict[str, Any]:
    """What the `state` column keeps: everything not already in a column of its own."""
    return {
        "status": state.status.value,
        "started_at": _time(state.started_at),
        "finished_at": _time(state.finished_at),
        "inputs": dict(state.inputs),
        "steps": {step_id: _step_to_json(step) for step_id, step in state.steps.items()},
        "error": _failure(state.error),
        "completion_order": list(state.completion_order),
        "compensated_steps": list(state.compensated_steps),
    }


def progress_columns(state: ExecutionState) -> dict[str, Any]:
    """The columns every append updates; the snapshot is written less often."""
    return {
        "status": state.status.value,
        "started_at": state.started_at,
        "finished_at": state.finished_at,
        "last_sequence": state.last_sequence,
    }


def execution_columns(state: ExecutionState) -> dict[str, Any]:
    return {
        "id": state.id,
        "tenant": state.tenant,
        "workflow_id": state.workflow_id,
        "workflow_version": state.workflow_version,
        "status": state.status.value,
        "created_at": state.created_at,
        "started_at": state.started_at,
        "finished_at": state.finished_at,
        "parent_execution_id": state.parent_execution_id,
        "parent_step_id": state.parent_step_id,
        "idempotency_key": state.idempotency_key,
        "schedule_id": state.schedule_id,
        "depth": state.depth,
        "last_sequence": state.last_sequence,
        "snapshot_sequence": state.last_sequence,
        "state": state_snapshot(state),
    }


def snapshot_from_row(row: Any) -> ExecutionState:
    """The state as of `row.snapshot_sequence`; events after it still need folding."""
    snapshot = row["state"]
    created_at = as_utc(row["created_at"])
    assert created_at is not None
    return ExecutionState(
        id=row["id"],
        tenant=row["tenant"],
        workflow_id=row["workflow_id"],
        workflow_version=row["workflow_version"],
        created_at=created_at,
        status=ExecutionStatus(snapshot["status"]),
        inputs=snapshot["inputs"],
        steps={k: _step_from_json(k, v) for k, v in snapshot["steps"].items()},
        started_at=_parse_time(snapshot["started_at"]),
        finished_at=_parse_time(snapshot["finished_at"]),
        parent_execution_id=row["parent_execution_id"],
        parent_step_id=row["parent_step_id"],
        idempotency_key=row["idempotency_key"],
        schedule_id=row["schedule_id"],
        depth=row["depth"],
        last_sequence=row["snapshot_sequence"],
        error=_parse_failure(snapshot["error"]),
        completion_order=tuple(snapshot["completion_order"]),
        compensated_steps=tuple(snapshot["compensated_steps"]),
    )

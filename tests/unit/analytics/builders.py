"""Domain events for tests: one finished step attempt or execution per call."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from analytics_service.core.events import (
    EventKind,
    ExecutionEvent,
    ExecutionStatus,
    StepStatus,
)

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


def step_event(
    execution_id: str,
    step_id: str,
    *,
    status: StepStatus = StepStatus.COMPLETED,
    attempt: int = 1,
    seconds: float = 1.0,
    finished_at: datetime = T0,
    workflow_id: str = "orders",
    tenant: str = "default",
    error_type: str = "",
    depends_on: tuple[str, ...] = (),
    action: str = "http",
) -> ExecutionEvent:
    return ExecutionEvent(
        event_id=f"{execution_id}/{step_id}/{attempt}/{status.value}",
        tenant=tenant,
        execution_id=execution_id,
        workflow_id=workflow_id,
        workflow_version=1,
        sequence=attempt,
        occurred_at=finished_at,
        kind=EventKind.STEP_STATUS_CHANGED,
        step_id=step_id,
        attempt=attempt,
        step_status=status,
        duration_seconds=seconds,
        error_type=error_type,
        error_message=f"{error_type} happened" if error_type else "",
        action=action,
        started_at=finished_at - timedelta(seconds=seconds),
        depends_on=depends_on,
    )


def execution_event(
    execution_id: str,
    *,
    status: ExecutionStatus = ExecutionStatus.COMPLETED,
    seconds: float = 10.0,
    finished_at: datetime = T0,
    workflow_id: str = "orders",
    tenant: str = "default",
    time_saved: float = 0.0,
    business_value: float = 0.0,
) -> ExecutionEvent:
    return ExecutionEvent(
        event_id=f"{execution_id}/{status.value}",
        tenant=tenant,
        execution_id=execution_id,
        workflow_id=workflow_id,
        workflow_version=1,
        sequence=100,
        occurred_at=finished_at,
        kind=EventKind.EXECUTION_STATUS_CHANGED,
        execution_status=status,
        duration_seconds=seconds,
        started_at=finished_at - timedelta(seconds=seconds),
        estimated_time_saved_seconds=time_saved,
        business_value=business_value,
    )

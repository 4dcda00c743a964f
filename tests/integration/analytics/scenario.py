"""A known event set whose every aggregate is computed here by hand, from plain lists."""

from __future__ import annotations

from datetime import datetime, timedelta

from analytics_service.core.events import ExecutionEvent, ExecutionStatus, StepStatus
from tests.unit.analytics.builders import T0, execution_event, step_event

EXECUTIONS = 10
STATUSES = {
    9: ExecutionStatus.FAILED,
    8: ExecutionStatus.TIMED_OUT,
    7: ExecutionStatus.CANCELLED,
    6: ExecutionStatus.COMPLETED_WITH_ERRORS,
}
TIME_SAVED = 60.0
BUSINESS_VALUE = 2.0


def minute(i: int, seconds: int) -> datetime:
    return T0 + timedelta(minutes=i, seconds=seconds)


def execution_seconds(i: int) -> float:
    return 10.0 + i


def charge_seconds(i: int) -> float:
    return 3.0 + i


def retried(i: int) -> bool:
    return i % 3 == 0


def orders_events(tenant: str = "default") -> list[ExecutionEvent]:
    events = []
    for i in range(EXECUTIONS):
        execution = f"{tenant}-orders-{i}"
        events.append(
            step_event(
                execution, "fetch", seconds=1 + i * 0.5, finished_at=minute(i, 5), tenant=tenant
            )
        )
        if retried(i):
            events.append(
                step_event(
                    execution,
                    "charge",
                    status=StepStatus.FAILED,
                    error_type="CardDeclined",
                    seconds=2.0,
                    finished_at=minute(i, 8),
                    depends_on=("fetch",),
                    tenant=tenant,
                    action="payments.charge",
                )
            )
        events.append(
            step_event(
                execution,
                "charge",
                attempt=2 if retried(i) else 1,
                seconds=charge_seconds(i),
                finished_at=minute(i, 20),
                depends_on=("fetch",),
                tenant=tenant,
                action="payments.charge",
            )
        )
        timed_out = i == 8
        events.append(
            step_event(
                execution,
                "notify",
                status=StepStatus.TIMED_OUT if timed_out else StepStatus.COMPLETED,
                error_type="Timeout" if timed_out else "",
                seconds=0.5,
                finished_at=minute(i, 25),
                depends_on=("charge",),
                tenant=tenant,
            )
        )
        events.append(
            execution_event(
                execution,
                status=STATUSES.get(i, ExecutionStatus.COMPLETED),
                seconds=execution_seconds(i),
                finished_at=minute(i, 30),
                time_saved=TIME_SAVED,
                business_value=BUSINESS_VALUE,
                tenant=tenant,
            )
        )
    return events


def billing_events() -> list[ExecutionEvent]:
    """Three executions of constant duration, one per minute: a flat trend."""
    return [
        execution_event(
            f"billing-{i}", workflow_id="billing", seconds=5.0, finished_at=minute(i, 30)
        )
        for i in range(3)
    ]


def all_events() -> list[ExecutionEvent]:
    return orders_events() + billing_events() + orders_events(tenant="acme")[:5]

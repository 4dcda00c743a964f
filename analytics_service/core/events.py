"""Engine events as the analytics service sees them, and the facts derived from them."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

DEFAULT_TENANT = "default"


class EventKind(enum.Enum):
    EXECUTION_STATUS_CHANGED = "execution_status_changed"
    STEP_STATUS_CHANGED = "step_status_changed"
    STEP_FALLBACK_FINISHED = "step_fallback_finished"
    STEP_COMPENSATION_FINISHED = "step_compensation_finished"
    OTHER = "other"


class ExecutionStatus(enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    COMPLETED_WITH_ERRORS = "completed_with_errors"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"
    UNSPECIFIED = "unspecified"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_EXECUTION_STATUSES


class StepStatus(enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    RETRYING = "retrying"
    PAUSED = "paused"
    COMPLETED = "completed"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"
    UNSPECIFIED = "unspecified"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STEP_STATUSES


TERMINAL_EXECUTION_STATUSES = frozenset(
    {
        ExecutionStatus.COMPLETED,
        ExecutionStatus.COMPLETED_WITH_ERRORS,
        ExecutionStatus.FAILED,
        ExecutionStatus.CANCELLED,
        ExecutionStatus.TIMED_OUT,
    }
)
TERMINAL_STEP_STATUSES = frozenset(
    {
        StepStatus.COMPLETED,
        StepStatus.FAILED,
        StepStatus.TIMED_OUT,
        StepStatus.SKIPPED,
        StepStatus.CANCELLED,
    }
)
# Statuses that count as a failure in failure rates: the attempt ran and did not succeed.
FAILED_STEP_STATUSES = frozenset({StepStatus.FAILED, StepStatus.TIMED_OUT})
FAILED_EXECUTION_STATUSES = frozenset({ExecutionStatus.FAILED, ExecutionStatus.TIMED_OUT})


@dataclass(frozen=True)
class ExecutionEvent:
    """One state change of an execution or a step attempt, as the engine committed it."""

    event_id: str
    tenant: str
    execution_id: str
    workflow_id: str
    workflow_version: int
    sequence: int
    occurred_at: datetime
    kind: EventKind
    step_id: str = ""
    attempt: int = 0
    execution_status: ExecutionStatus = ExecutionStatus.UNSPECIFIED
    step_status: StepStatus = StepStatus.UNSPECIFIED
    duration_seconds: float = 0.0
    error_type: str = ""
    error_message: str = ""
    action: str = ""
    started_at: datetime | None = None
    parent_execution_id: str = ""
    estimated_time_saved_seconds: float = 0.0
    business_value: float = 0.0
    depends_on: tuple[str, ...] = ()


@dataclass(frozen=True)
class StepAttemptFact:
    """One finished step attempt."""

    tenant: str
    workflow_id: str
    workflow_version: int
    execution_id: str
    step_id: str
    action: str
    attempt: int
    status: StepStatus
    error_type: str
    error_message: str
    started_at: datetime
    finished_at: datetime
    duration_seconds: float
    depends_on: tuple[str, ...]
    event_id: str

    @property
    def is_retry(self) -> bool:
        return self.attempt > 1


@dataclass(frozen=True)
class ExecutionFact:
    """One finished execution."""

    tenant: str
    workflow_id: str
    workflow_version: int
    execution_id: str
    status: ExecutionStatus
    error_type: str
    error_message: str
    started_at: datetime
    finished_at: datetime
    duration_seconds: float
    estimated_time_saved_seconds: float
    business_value: float
    parent_execution_id: str
    event_id: str


@dataclass(frozen=True)
class Facts:
    """The facts that one set of events yields."""

    steps: tuple[StepAttemptFact, ...] = ()
    executions: tuple[ExecutionFact, ...] = ()


def step_fact(event: ExecutionEvent) -> StepAttemptFact:
    return StepAttemptFact(
        tenant=event.tenant,
        workflow_id=event.workflow_id,
        workflow_version=event.workflow_version,
        execution_id=event.execution_id,
        step_id=event.step_id,
        action=event.action,
        attempt=max(event.attempt, 1),
        status=event.step_status,
        error_type=event.error_type,
        error_message=event.error_message,
        started_at=event.started_at or event.occurred_at,
        finished_at=event.occurred_at,
        duration_seconds=max(event.duration_seconds, 0.0),
        depends_on=event.depends_on,
        event_id=event.event_id,
    )


def execution_fact(event: ExecutionEvent) -> ExecutionFact:
    return ExecutionFact(
        tenant=event.tenant,
        workflow_id=event.workflow_id,
        workflow_version=event.workflow_version,
        execution_id=event.execution_id,
        status=event.execution_status,
        error_type=event.error_type,
        error_message=event.error_message,
        started_at=event.started_at or event.occurred_at,
        finished_at=event.occurred_at,
        duration_seconds=max(event.duration_seconds, 0.0),
        estimated_time_saved_seconds=max(event.estimated_time_saved_seconds, 0.0),
        business_value=event.business_value,
        parent_execution_id=event.parent_execution_id,
        event_id=event.event_id,
    )


def derive_facts(events: tuple[ExecutionEvent, ...]) -> Facts:
    """Facts from the terminal events among `events`; other events yield none."""
    steps = tuple(
        step_fact(event)
        for event in events
        if event.kind is EventKind.STEP_STATUS_CHANGED and event.step_status.is_terminal
    )
    executions = tuple(
        execution_fact(event)
        for event in events
        if event.kind is EventKind.EXECUTION_STATUS_CHANGED and event.execution_status.is_terminal
    )
    return Facts(steps=steps, executions=executions)


def unique_by_id(events: tuple[ExecutionEvent, ...]) -> tuple[ExecutionEvent, ...]:
    """The first event of each id, in order: a batch may repeat an event."""
    seen: set[str] = set()
    unique = []
    for event in events:
        if event.event_id not in seen:
            seen.add(event.event_id)
            unique.append(event)
    return tuple(unique)

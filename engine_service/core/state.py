"""Execution and step state, the transition tables, and the events that move them.

An execution's state is a fold of its events: `apply(state, event)` checks the event
against the transition table and returns the next state. The scheduler commits events and
the state they produce together; `GetExecution(at_sequence)` replays the same fold.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any, TypeVar

from engine_service.core.errors import IllegalTransition


class ExecutionStatus(enum.StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    PAUSED = "PAUSED"
    COMPLETED = "COMPLETED"
    COMPLETED_WITH_ERRORS = "COMPLETED_WITH_ERRORS"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMED_OUT = "TIMED_OUT"

    @property
    def is_terminal(self) -> bool:
        return self not in EXECUTION_TRANSITIONS


class StepStatus(enum.StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    RETRYING = "RETRYING"
    PAUSED = "PAUSED"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    TIMED_OUT = "TIMED_OUT"
    SKIPPED = "SKIPPED"
    CANCELLED = "CANCELLED"


class EventKind(enum.StrEnum):
    EXECUTION_STATUS_CHANGED = "EXECUTION_STATUS_CHANGED"
    STEP_STATUS_CHANGED = "STEP_STATUS_CHANGED"
    STEP_FALLBACK_FINISHED = "STEP_FALLBACK_FINISHED"
    STEP_COMPENSATION_FINISHED = "STEP_COMPENSATION_FINISHED"


ES = ExecutionStatus
SS = StepStatus

# The one table of execution transitions; statuses absent as keys are terminal.
EXECUTION_TRANSITIONS: Mapping[ExecutionStatus, frozenset[ExecutionStatus]] = {
    ES.PENDING: frozenset({ES.RUNNING, ES.CANCELLED, ES.FAILED}),
    ES.RUNNING: frozenset(
        {ES.PAUSED, ES.COMPLETED, ES.COMPLETED_WITH_ERRORS, ES.FAILED, ES.CANCELLED, ES.TIMED_OUT}
    ),
    ES.PAUSED: frozenset({ES.RUNNING, ES.CANCELLED, ES.FAILED, ES.TIMED_OUT}),
}

# The one table of step transitions. An attempt ends FAILED or TIMED_OUT; RETRYING follows
# when another attempt will run. PENDING -> FAILED is a failure before running (bad input,
# unresolved step reference, condition error).
STEP_TRANSITIONS: Mapping[StepStatus, frozenset[StepStatus]] = {
    SS.PENDING: frozenset({SS.RUNNING, SS.SKIPPED, SS.PAUSED, SS.FAILED, SS.CANCELLED}),
    SS.PAUSED: frozenset({SS.PENDING, SS.CANCELLED}),
    SS.RUNNING: frozenset({SS.COMPLETED, SS.FAILED, SS.TIMED_OUT, SS.CANCELLED}),
    SS.RETRYING: frozenset({SS.RUNNING, SS.CANCELLED}),
    SS.FAILED: frozenset({SS.RETRYING}),
    SS.TIMED_OUT: frozenset({SS.RETRYING}),
}

# A fallback replaces the outcome of a step whose attempts are exhausted.
FALLBACK_TRANSITIONS: Mapping[StepStatus, frozenset[StepStatus]] = {
    SS.FAILED: frozenset({SS.COMPLETED, SS.FAILED}),
    SS.TIMED_OUT: frozenset({SS.COMPLETED, SS.FAILED}),
}

SETTLED_STEP_STATUSES = frozenset({SS.COMPLETED, SS.FAILED, SS.TIMED_OUT, SS.SKIPPED, SS.CANCELLED})
FAILED_STEP_STATUSES = frozenset({SS.FAILED, SS.TIMED_OUT})
# The error type of an attempt the engine lost by stopping while it ran.
LOST_ATTEMPT_ERROR = "EngineRestarted"

R = TypeVar("R")
_Slot = tuple[str, Callable[[Any], Any], Callable[[Any, Any], None]]
_SLOTS: dict[type, tuple[frozenset[str], tuple[_Slot, ...]]] = {}


def evolve(record: R, **changes: Any) -> R:
    """`dataclasses.replace` for the frozen, slotted records below at half its cost, by
    copying slots instead of running `__init__` (a profile of the engine found `replace`
    its largest single cost). The records have no `__post_init__` to skip."""
    kind = type(record)
    known = _SLOTS.get(kind)
    if known is None:
        descriptors = vars(kind)
        slots = tuple(
            (f.name, descriptors[f.name].__get__, descriptors[f.name].__set__)
            for f in fields(kind)  # type: ignore[arg-type]
        )
        known = _SLOTS[kind] = (frozenset(name for name, _, _ in slots), slots)
    names, slots = known
    if not changes.keys() <= names:
        raise TypeError(f"{kind.__name__} has no field {sorted(changes.keys() - names)}")
    copy = object.__new__(kind)
    for name, get, put in slots:
        put(copy, changes[name] if name in changes else get(record))
    return copy


@dataclass(frozen=True, slots=True)
class Failure:
    type: str
    message: str


@dataclass(frozen=True, slots=True)
class ExecutionEvent:
    """One committed state change; `sequence` is gap-free per execution from 1."""

    event_id: str
    execution_id: str
    sequence: int
    timestamp: datetime
    kind: EventKind
    tenant: str
    workflow_id: str
    workflow_version: int
    execution_status: ExecutionStatus | None = None
    step_id: str = ""
    step_status: StepStatus | None = None
    attempt: int = 0
    action: str = ""
    duration: float | None = None
    started_at: datetime | None = None
    error: Failure | None = None
    output: Any = None
    missing_inputs: tuple[str, ...] = ()
    inputs: Mapping[str, Any] | None = None
    parent_execution_id: str = ""
    parent_step_id: str = ""
    next_attempt_at: datetime | None = None
    depends_on: tuple[str, ...] = ()
    estimated_time_saved: float = 0.0
    business_value: float = 0.0
    child_execution_id: str = ""


@dataclass(frozen=True, slots=True)
class StepState:
    step_id: str
    status: StepStatus = SS.PENDING
    attempt: int = 0
    started_at: datetime | None = None
    finished_at: datetime | None = None
    output: Any = None
    error: Failure | None = None
    fallback_used: bool = False
    compensated: bool = False
    missing_inputs: tuple[str, ...] = ()
    next_attempt_at: datetime | None = None
    child_execution_id: str = ""
    # Attempts the engine lost by stopping mid-attempt: they never count against the
    # step's retry budget (see `ExecutionRunner._recover_lost_attempt`).
    lost_attempts: int = 0
    # When the first of the step's latest unbroken run of lost attempts started (None
    # once an attempt ends otherwise): what that run of attempts left (a child) started
    # after this, and a re-run takes it over whichever process runs it.
    lost_since: datetime | None = None

    @property
    def is_settled(self) -> bool:
        return self.status in SETTLED_STEP_STATUSES


@dataclass(frozen=True, slots=True)
class ExecutionState:
    id: str
    tenant: str
    workflow_id: str
    workflow_version: int
    created_at: datetime
    status: ExecutionStatus = ES.PENDING
    inputs: Mapping[str, Any] = field(default_factory=dict)
    steps: Mapping[str, StepState] = field(default_factory=dict)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    parent_execution_id: str = ""
    parent_step_id: str = ""
    idempotency_key: str = ""
    schedule_id: str = ""
    depth: int = 0
    last_sequence: int = 0
    error: Failure | None = None
    # Completed steps in the order they completed (compensation runs it backwards).
    completion_order: tuple[str, ...] = ()
    compensated_steps: tuple[str, ...] = ()

    @property
    def missing_inputs(self) -> tuple[str, ...]:
        missing = {name for step in self.steps.values() for name in step.missing_inputs}
        return tuple(sorted(missing))

    @property
    def outputs(self) -> dict[str, Any]:
        return {
            step_id: step.output
            for step_id, step in self.steps.items()
            if step.status is SS.COMPLETED and step.output is not None
        }

    def step(self, step_id: str) -> StepState:
        return self.steps[step_id]


def apply(state: ExecutionState, event: ExecutionEvent) -> ExecutionState:
    """The state after `event`; raises IllegalTransition for a move the tables forbid."""
    if event.sequence != state.last_sequence + 1:
        raise IllegalTransition(
            subject=f"execution {state.id}",
            current=f"sequence {state.last_sequence}",
            requested=f"sequence {event.sequence}",
        )
    # Each kind yields the fields it changes: one copy of the state per event.
    if event.kind is EventKind.EXECUTION_STATUS_CHANGED:
        changes = _apply_execution_status(state, event)
    elif event.kind is EventKind.STEP_STATUS_CHANGED:
        changes = _apply_step_status(state, event)
    elif event.kind is EventKind.STEP_FALLBACK_FINISHED:
        changes = _apply_fallback(state, event)
    else:
        changes = _apply_compensation(state, event)
    return evolve(state, last_sequence=event.sequence, **changes)


def _apply_execution_status(state: ExecutionState, event: ExecutionEvent) -> dict[str, Any]:
    target = _required(event.execution_status, "execution_status")
    if event.sequence == 1:
        if target is not ES.PENDING:
            raise IllegalTransition(subject="execution", current="(new)", requested=target)
        return {"inputs": dict(event.inputs or {})}
    if target not in EXECUTION_TRANSITIONS.get(state.status, frozenset()):
        raise IllegalTransition(
            subject=f"execution {state.id}", current=state.status, requested=target
        )
    changes: dict[str, Any] = {"status": target}
    if target is ES.RUNNING and state.started_at is None:
        changes["started_at"] = event.timestamp
    if target is ES.RUNNING and event.inputs:
        changes["inputs"] = {**state.inputs, **event.inputs}
    if target.is_terminal:
        changes["finished_at"] = event.timestamp
        changes["error"] = event.error
    return changes


def _apply_step_status(state: ExecutionState, event: ExecutionEvent) -> dict[str, Any]:
    target = _required(event.step_status, "step_status")
    current = state.steps.get(event.step_id, StepState(event.step_id))
    if target not in STEP_TRANSITIONS.get(current.status, frozenset()):
        raise IllegalTransition(
            subject=f"step {event.step_id}", current=current.status, requested=target
        )
    step = _next_step_state(current, target, event)
    order = state.completion_order
    if target is SS.COMPLETED:
        order = (*order, event.step_id)
    return {"steps": {**state.steps, event.step_id: step}, "completion_order": order}


def _next_step_state(current: StepState, target: StepStatus, event: ExecutionEvent) -> StepState:
    if target is SS.RUNNING:
        return evolve(
            current,
            status=target,
            attempt=event.attempt,
            started_at=event.timestamp,
            finished_at=None,
            error=None,
            next_attempt_at=None,
            missing_inputs=(),
            child_execution_id=event.child_execution_id,
        )
    if target is SS.RETRYING:
        return evolve(current, status=target, next_attempt_at=event.next_attempt_at)
    if target is SS.PAUSED:
        return evolve(current, status=target, missing_inputs=event.missing_inputs)
    if target is SS.PENDING:
        return evolve(current, status=target, missing_inputs=())
    lost = current.lost_attempts
    lost_since = None
    if event.error is not None and event.error.type == LOST_ATTEMPT_ERROR:
        lost += 1
        lost_since = current.lost_since or current.started_at
    return evolve(
        current,
        status=target,
        attempt=max(current.attempt, event.attempt),
        lost_attempts=lost,
        lost_since=lost_since,
        finished_at=event.timestamp,
        output=event.output,
        error=event.error,
        child_execution_id=event.child_execution_id or current.child_execution_id,
    )


def _apply_fallback(state: ExecutionState, event: ExecutionEvent) -> dict[str, Any]:
    target = _required(event.step_status, "step_status")
    current = state.steps[event.step_id]
    if current.fallback_used or target not in FALLBACK_TRANSITIONS.get(current.status, frozenset()):
        raise IllegalTransition(
            subject=f"fallback of step {event.step_id}", current=current.status, requested=target
        )
    step = evolve(
        current,
        status=target,
        fallback_used=True,
        output=event.output,
        error=event.error,
        finished_at=event.timestamp,
        child_execution_id=event.child_execution_id or current.child_execution_id,
    )
    order = state.completion_order
    if target is SS.COMPLETED:
        order = (*order, event.step_id)
    return {"steps": {**state.steps, event.step_id: step}, "completion_order": order}


def _apply_compensation(state: ExecutionState, event: ExecutionEvent) -> dict[str, Any]:
    current = state.steps[event.step_id]
    if current.status is not SS.COMPLETED or current.compensated:
        raise IllegalTransition(
            subject=f"compensation of step {event.step_id}",
            current=current.status,
            requested="COMPENSATED",
        )
    step = evolve(current, compensated=event.step_status is SS.COMPLETED)
    compensated = state.compensated_steps
    if step.compensated:
        compensated = (*compensated, event.step_id)
    return {"steps": {**state.steps, event.step_id: step}, "compensated_steps": compensated}


def _required(value: Any, name: str) -> Any:
    if value is None:
        raise IllegalTransition(subject="event", current="incomplete", requested=f"no {name}")
    return value


def replay(initial: ExecutionState, events: list[ExecutionEvent]) -> ExecutionState:
    """Fold `events` onto `initial` (a state with last_sequence 0)."""
    state = initial
    for event in events:
        state = apply(state, event)
    return state


def blank(state: ExecutionState) -> ExecutionState:
    """The execution's identity with none of its events applied: the start of a replay."""
    return ExecutionState(
        id=state.id,
        tenant=state.tenant,
        workflow_id=state.workflow_id,
        workflow_version=state.workflow_version,
        created_at=state.created_at,
        parent_execution_id=state.parent_execution_id,
        parent_step_id=state.parent_step_id,
        idempotency_key=state.idempotency_key,
        schedule_id=state.schedule_id,
        depth=state.depth,
        steps={step_id: StepState(step_id) for step_id in state.steps},
    )

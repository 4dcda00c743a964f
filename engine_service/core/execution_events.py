"""The events one execution records, built from the state they will be applied to."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from engine_service.core.clock import Clock
from engine_service.core.model import WorkflowDefinition
from engine_service.core.state import (
    EventKind,
    ExecutionEvent,
    ExecutionState,
    ExecutionStatus,
    Failure,
    StepStatus,
    evolve,
)

ES = ExecutionStatus
SS = StepStatus


class ExecutionEvents:
    """Builds the events of one execution of `definition`; sequence numbers are left at 0
    for the commit to assign."""

    def __init__(self, definition: WorkflowDefinition, clock: Clock) -> None:
        self._definition = definition
        self._clock = clock

    def _base_event(self, state: ExecutionState, kind: EventKind, **fields: Any) -> ExecutionEvent:
        return ExecutionEvent(
            event_id=str(uuid.uuid4()),
            execution_id=state.id,
            sequence=0,
            timestamp=self._clock.now(),
            kind=kind,
            tenant=state.tenant,
            workflow_id=state.workflow_id,
            workflow_version=state.workflow_version,
            parent_execution_id=state.parent_execution_id,
            **fields,
        )

    def execution_event(
        self,
        state: ExecutionState,
        status: ExecutionStatus,
        *,
        error: Failure | None = None,
        inputs: Mapping[str, Any] | None = None,
        missing: tuple[str, ...] | None = None,
    ) -> ExecutionEvent:
        if status is ES.PAUSED and missing is None:
            missing = state.missing_inputs
        event = self._base_event(
            state,
            EventKind.EXECUTION_STATUS_CHANGED,
            execution_status=status,
            error=error,
            inputs=inputs,
            missing_inputs=missing or (),
        )
        if status.is_terminal:
            started = state.started_at or event.timestamp
            event = evolve(
                event,
                started_at=started,
                # Wall-clock times (the start may even be another replica's): a clock
                # stepped back must not make a negative duration, which analytics refuses.
                duration=max((event.timestamp - started).total_seconds(), 0.0),
                output=state.outputs or None,
                estimated_time_saved=self._definition.estimated_time_saved,
                business_value=self._definition.business_value,
            )
        return event

    def step_event(
        self,
        state: ExecutionState,
        step_id: str,
        status: StepStatus,
        *,
        kind: EventKind = EventKind.STEP_STATUS_CHANGED,
        attempt: int = 0,
        error: Failure | None = None,
        output: Any = None,
        duration: float | None = None,
        missing: tuple[str, ...] = (),
        next_attempt_at: Any = None,
        child_execution_id: str = "",
    ) -> ExecutionEvent:
        step = self._definition.step(step_id)
        current = state.steps[step_id]
        return self._base_event(
            state,
            kind,
            step_id=step_id,
            step_status=status,
            attempt=attempt or current.attempt,
            action=step.action,
            error=error,
            output=output,
            duration=duration,
            started_at=current.started_at if status is not SS.RUNNING else None,
            missing_inputs=missing,
            next_attempt_at=next_attempt_at,
            depends_on=step.depends_on,
            child_execution_id=child_execution_id,
        )

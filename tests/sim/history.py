"""Reading one execution's history (fatal failures, decided endings, lost attempts),
excerpts to print, and the `Violation` every check reports."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from engine_service.core.model import FailurePolicy, WorkflowDefinition
from engine_service.core.state import (
    FAILED_STEP_STATUSES,
    EventKind,
    ExecutionEvent,
    ExecutionStatus,
    StepStatus,
)
from tests.sim.probe import LOST

SS = StepStatus
ES = ExecutionStatus
SUCCESSFUL = frozenset({ES.COMPLETED, ES.COMPLETED_WITH_ERRORS})
EPSILON = 1e-3  # virtual seconds: timestamps have microseconds, deadlines float error
ORIGIN = datetime(2026, 1, 1, tzinfo=UTC)  # LoopClock's: t=0 of the loop


@dataclass(frozen=True)
class Violation:
    """What the checks report: an invariant broken, where, and the history around it."""

    invariant: str
    execution_id: str
    detail: str
    excerpt: str = ""

    def __str__(self) -> str:
        where = f" [{self.execution_id[:8]}]" if self.execution_id else ""
        text = f"{self.invariant}{where}: {self.detail}"
        return f"{text}\n{self.excerpt}" if self.excerpt else text


@dataclass(frozen=True)
class Reading:
    """Where in a history the run's ending was decided, if it was."""

    fatal: int | None  # index of the first fatal failure event
    cancelled: int | None  # index of the first step CANCELLED event
    lost: dict[str, int]  # step -> attempts a restart lost
    running: dict[str, list[int]]  # step -> attempt numbers of its RUNNING events
    # step -> attempts that are not the re-run of a lost one (which takes over the lost
    # attempt's work, a child execution say, instead of starting it again)
    fresh: dict[str, int]


def continues(definition: WorkflowDefinition, step_id: str) -> bool:
    return (
        definition.step(step_id).continue_on_error
        or definition.on_failure is FailurePolicy.CONTINUE
    )


def is_lost(event: ExecutionEvent) -> bool:
    return event.error is not None and event.error.type == LOST


def read(definition: WorkflowDefinition, events: Sequence[ExecutionEvent]) -> Reading:
    fatal = cancelled = None
    lost: dict[str, int] = {}
    running: dict[str, list[int]] = {}
    fresh: dict[str, int] = {}
    last_lost: dict[str, bool] = {}
    status: dict[str, StepStatus] = {}
    for index, event in enumerate(events):
        if not event.step_id or event.step_id not in definition.step_ids:
            continue
        step = definition.step(event.step_id)
        before = status.get(event.step_id, SS.PENDING)
        if event.kind is EventKind.STEP_STATUS_CHANGED and event.step_status is not None:
            status[event.step_id] = event.step_status
            if event.step_status is SS.RUNNING:
                running.setdefault(event.step_id, []).append(event.attempt)
                if not last_lost.get(event.step_id, False):
                    fresh[event.step_id] = fresh.get(event.step_id, 0) + 1
            elif event.step_status is not SS.RETRYING:
                last_lost[event.step_id] = is_lost(event)
            if event.step_status is SS.CANCELLED and cancelled is None:
                cancelled = index
            if event.step_status in FAILED_STEP_STATUSES and is_lost(event):
                lost[event.step_id] = lost.get(event.step_id, 0) + 1
        if fatal is None and not continues(definition, event.step_id):
            settled_failure = (
                event.kind is EventKind.STEP_STATUS_CHANGED
                and event.step_status in FAILED_STEP_STATUSES
                and not is_lost(event)
                and (step.fallback is None or before is SS.PENDING)
                and not _retried(events, index)
            )
            fallback_failed = (
                event.kind is EventKind.STEP_FALLBACK_FINISHED and event.step_status is SS.FAILED
            )
            if settled_failure or fallback_failed:
                fatal = index
    return Reading(fatal, cancelled, lost, running, fresh)


def _retried(events: Sequence[ExecutionEvent], index: int) -> bool:
    """Whether the step's next event after `index` is RETRYING."""
    step_id = events[index].step_id
    for later in events[index + 1 :]:
        if later.step_id == step_id:
            return later.step_status is SS.RETRYING
    return False


def seconds(at: datetime | None) -> float:
    """Virtual seconds of a timestamp (LoopClock's origin is t=0)."""
    if at is None:
        return float("nan")
    return (at - ORIGIN).total_seconds()


def line(event: ExecutionEvent) -> str:
    t = f"t={seconds(event.timestamp):.3f}"
    if event.kind is EventKind.EXECUTION_STATUS_CHANGED:
        text = f"#{event.sequence} {t} execution {event.execution_status}"
        if event.inputs:
            text += f" inputs={dict(event.inputs)}"
    else:
        kind = "" if event.kind is EventKind.STEP_STATUS_CHANGED else f" [{event.kind.name}]"
        text = (
            f"#{event.sequence} {t} {event.step_id} {event.step_status} att={event.attempt}{kind}"
        )
    if event.error is not None:
        text += f" error={event.error.type}"
    if event.child_execution_id:
        text += f" child={event.child_execution_id[:8]}"
    return text


def excerpt(events: Sequence[ExecutionEvent], around: int | None = None, width: int = 6) -> str:
    if around is None:
        chosen = events[-2 * width :]
    else:
        chosen = events[max(0, around - width) : around + width + 1]
    return "\n".join("    " + line(e) for e in chosen)


_HANDLER_KINDS = {
    EventKind.STEP_FALLBACK_FINISHED: "FALLBACK",
    EventKind.STEP_COMPENSATION_FINISHED: "COMPENSATION",
}
_ENDINGS = frozenset({SS.COMPLETED, SS.FAILED, SS.TIMED_OUT, SS.CANCELLED})


def expected_attempt_rows(events: Sequence[ExecutionEvent]) -> dict[tuple[str, int, str], str]:
    """(step, attempt, kind) -> status: each attempt's own ending (the first after its
    RUNNING; a later CANCELLED of the step waiting to retry is not the attempt's), and
    each fallback's and compensation's."""
    rows: dict[tuple[str, int, str], str] = {}
    for event in events:
        if event.kind in _HANDLER_KINDS and event.step_status is not None:
            rows[(event.step_id, event.attempt, _HANDLER_KINDS[event.kind])] = event.step_status
        elif event.kind is EventKind.STEP_STATUS_CHANGED and event.attempt > 0:
            key = (event.step_id, event.attempt, "ATTEMPT")
            if event.step_status is SS.RUNNING:
                rows[key] = SS.RUNNING.value
            elif event.step_status in _ENDINGS and rows.get(key) == SS.RUNNING.value:
                rows[key] = event.step_status.value
    return {key: str(status) for key, status in rows.items()}

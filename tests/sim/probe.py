"""The actions of simulated steps, and the ledger of what they did across every process.

A probe attempt reads the execution's committed history first (through the observer: a
view of the store no fault touches). That gives its outcome, `plan[i]` where `i` counts
the step's attempts that really failed (not those a restart lost), and lets it check, at
the moment the action starts, what the engine promises about starting one:
- the store says this very attempt is running (its RUNNING is durable, and no other
  process has moved the step on since): so no completed step's action runs again;
- no other attempt of the same step is running anywhere (across processes);
- its parameters were resolved from the inputs as they were when the attempt started.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from engine_service.core.actions import ActionContext, ActionError, ActionRegistry, builtin_actions
from engine_service.core.state import (
    FAILED_STEP_STATUSES,
    EventKind,
    ExecutionEvent,
    ExecutionState,
    ExecutionStatus,
    StepStatus,
)
from engine_service.core.store import ExecutionStore
from tests.sim.workflows import SLOW_SECONDS

SS = StepStatus
Role = Literal["main", "fallback", "undo"]
LOST = "EngineRestarted"


@dataclass
class Attempt:
    process: str
    execution_id: str
    step_id: str
    role: Role
    attempt: int
    began: float
    outcome: str
    ended: float | None = None


@dataclass(frozen=True)
class Breach:
    """An invariant a probe saw broken at the moment an action started."""

    invariant: str
    execution_id: str
    step_id: str
    detail: str


@dataclass
class Ledger:
    observer: ExecutionStore
    attempts: list[Attempt] = field(default_factory=list)
    breaches: list[Breach] = field(default_factory=list)
    _running: dict[tuple[str, str], list[Attempt]] = field(default_factory=dict)

    def registry(self, process: str) -> ActionRegistry:
        """The actions of one engine process: the probes, bound to its name."""
        registry = builtin_actions()
        roles: tuple[tuple[str, Role], ...] = (
            ("probe", "main"),
            ("probe_fallback", "fallback"),
            ("probe_undo", "undo"),
        )
        for name, role in roles:
            registry.register(name, functools.partial(self._probe, process=process, role=role))
        return registry

    @property
    def running(self) -> list[Attempt]:
        return [a for attempts in self._running.values() for a in attempts]

    async def _probe(
        self, parameters: Mapping[str, Any], context: ActionContext, *, process: str, role: Role
    ) -> Any:
        state = await self.observer.get_execution(context.execution_id)
        events = await self.observer.read_events(context.execution_id)
        self._check_start(state, events, parameters, context, role)
        plan = list(parameters["plan"])
        index = real_failures(events, context.step_id) if role == "main" else 0
        outcome = plan[min(index, len(plan) - 1)]
        loop = asyncio.get_running_loop()
        attempt = Attempt(
            process,
            context.execution_id,
            context.step_id,
            role,
            context.attempt,
            loop.time(),
            outcome,
        )
        self._begin(attempt)
        try:
            await asyncio.sleep(SLOW_SECONDS if outcome == "slow" else float(parameters["seconds"]))
            if outcome == "fail":
                raise ActionError("planned failure", error_type="Boom")
            if outcome == "fatal":
                raise ActionError("planned fatal failure", error_type="Fatal", retryable=False)
            return {"v": parameters["v"]}
        finally:
            attempt.ended = loop.time()
            self._running[(attempt.execution_id, attempt.step_id)].remove(attempt)

    def _begin(self, attempt: Attempt) -> None:
        self.attempts.append(attempt)
        others = self._running.setdefault((attempt.execution_id, attempt.step_id), [])
        for other in others:
            self._breach(
                "attempts-never-overlap",
                attempt,
                f"{_name(attempt)} started at t={attempt.began:g} while {_name(other)} "
                f"(since t={other.began:g}) was still running",
            )
        others.append(attempt)

    def _check_start(
        self,
        state: ExecutionState,
        events: Sequence[ExecutionEvent],
        parameters: Mapping[str, Any],
        context: ActionContext,
        role: Role,
    ) -> None:
        step = state.steps[context.step_id]
        where = Attempt("", context.execution_id, context.step_id, role, context.attempt, 0, "")
        if role == "main":
            if step.status is not SS.RUNNING or step.attempt != context.attempt:
                self._breach(
                    "an-action-runs-only-for-the-running-attempt",
                    where,
                    f"attempt {context.attempt} started while the store has the step "
                    f"{step.status} at attempt {step.attempt}",
                )
            self._check_parameters(events, parameters, context, where)
            self._check_upstream(state, parameters, where)
        elif role == "fallback" and (step.status not in FAILED_STEP_STATUSES or step.fallback_used):
            self._breach(
                "a-fallback-runs-once-for-a-failed-step",
                where,
                f"the fallback started while the store has the step {step.status}"
                f"{' with its fallback done' if step.fallback_used else ''}",
            )
        elif role == "undo" and (
            step.status is not SS.COMPLETED or step.compensated or state.status.is_terminal
        ):
            self._breach(
                "a-compensation-runs-once-for-a-completed-step",
                where,
                f"the compensation started while the store has the step {step.status}"
                f"{' compensated' if step.compensated else ''}, the run {state.status}",
            )

    def _check_parameters(
        self,
        events: Sequence[ExecutionEvent],
        parameters: Mapping[str, Any],
        context: ActionContext,
        where: Attempt,
    ) -> None:
        inputs = inputs_when_started(events, context.step_id, context.attempt)
        if inputs is None:
            return  # no RUNNING for this attempt: reported above
        for name in ("x", "late"):
            if name in parameters and parameters[name] != inputs.get(name):
                self._breach(
                    "parameters-resolve-when-the-attempt-starts",
                    where,
                    f"`{name}` was {parameters[name]!r}, but the inputs were "
                    f"{inputs.get(name)!r} when attempt {context.attempt} started",
                )

    def _check_upstream(
        self, state: ExecutionState, parameters: Mapping[str, Any], where: Attempt
    ) -> None:
        """The step read each dependency's settled status, which never changes after."""
        for dep, seen in dict(parameters.get("upstream") or {}).items():
            now = state.steps[dep]
            if not now.is_settled or seen != now.status.value:
                self._breach(
                    "a-step-starts-after-its-dependencies-settled",
                    where,
                    f"it read {dep} {seen}; the store has {dep} {now.status}",
                )

    def _breach(self, invariant: str, attempt: Attempt, detail: str) -> None:
        self.breaches.append(Breach(invariant, attempt.execution_id, attempt.step_id, detail))


def _name(attempt: Attempt) -> str:
    return f"{attempt.role} attempt {attempt.attempt} in {attempt.process}"


def real_failures(events: Sequence[ExecutionEvent], step_id: str) -> int:
    """Attempts of the step that ran and failed: not the ones a restart lost."""
    return sum(
        1
        for e in events
        if e.kind is EventKind.STEP_STATUS_CHANGED
        and e.step_id == step_id
        and e.step_status in FAILED_STEP_STATUSES
        and e.attempt > 0
        and not (e.error is not None and e.error.type == LOST)
    )


def inputs_when_started(
    events: Sequence[ExecutionEvent], step_id: str, attempt: int
) -> dict[str, Any] | None:
    """The execution's inputs as of the RUNNING event of `attempt` of the step."""
    inputs: dict[str, Any] = {}
    for e in events:
        if e.kind is EventKind.EXECUTION_STATUS_CHANGED and e.inputs:
            if e.execution_status is ExecutionStatus.PENDING:
                inputs = dict(e.inputs)
            else:
                inputs.update(e.inputs)
        elif e.step_id == step_id and e.step_status is SS.RUNNING and e.attempt == attempt:
            return inputs
    return None

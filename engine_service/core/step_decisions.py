"""Whether and how a ready step runs: run it with resolved parameters or settle it without
running (SKIPPED, FAILED or PAUSED); and the outcome of one attempt."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import jsonschema

from engine_service.core import graph, json_schemas, references
from engine_service.core.conditions import evaluate_condition
from engine_service.core.errors import ConditionError
from engine_service.core.model import FailurePolicy, StepDefinition, WorkflowDefinition
from engine_service.core.state import (
    FAILED_STEP_STATUSES,
    ExecutionState,
    Failure,
    StepState,
    StepStatus,
)

SS = StepStatus


@dataclass(frozen=True, slots=True)
class RunStep:
    parameters: Any
    secret_values: frozenset[str]


@dataclass(frozen=True, slots=True)
class SettleStep:
    """End the step without running it: SKIPPED, FAILED or PAUSED."""

    status: StepStatus
    error: Failure | None = None
    missing_inputs: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AttemptOutcome:
    status: StepStatus
    output: Any = None
    error: Failure | None = None
    retryable: bool = False
    duration: float = 0.0


class StepView(Mapping[str, Mapping[str, Any]]):
    """What references see of the steps, `{id: {"output": ..., "status": ...}}`, read
    from the state on access: a reference names a few steps, most parameters none."""

    __slots__ = ("_steps",)

    def __init__(self, steps: Mapping[str, StepState]) -> None:
        self._steps = steps

    def __getitem__(self, step_id: str) -> Mapping[str, Any]:
        step = self._steps[step_id]
        return {"output": step.output, "status": step.status.value}

    def __iter__(self) -> Iterator[str]:
        return iter(self._steps)

    def __len__(self) -> int:
        return len(self._steps)


class UpstreamView(Mapping[str, Mapping[str, Any]]):
    """`steps` as the expressions of one step see it: its upstream steps (and itself, for
    its compensation) in declaration order, read from the state on access, so naming a
    step costs one lookup however many steps the workflow has."""

    __slots__ = ("_ancestry", "_owner", "_steps", "_with_self")

    def __init__(
        self,
        steps: Mapping[str, StepState],
        ancestry: graph.Ancestry,
        owner: str,
        with_self: bool,
    ) -> None:
        self._steps = steps
        self._ancestry = ancestry
        self._owner = owner
        self._with_self = with_self

    def __getitem__(self, step_id: str) -> Mapping[str, Any]:
        visible = (self._with_self and step_id == self._owner) or self._ancestry.is_upstream(
            step_id, self._owner
        )
        if not visible or step_id not in self._steps:
            raise KeyError(step_id)
        step = self._steps[step_id]
        return {"output": step.output, "status": step.status.value}

    def __iter__(self) -> Iterator[str]:
        return iter(self._ancestry.upstream(self._owner, with_self=self._with_self))

    def __len__(self) -> int:
        return self._ancestry.count(self._owner, with_self=self._with_self)


class LazyActivation(Mapping[str, Any]):
    """An activation built on first use: most steps have no condition and most actions
    never read theirs, while building one copies every step of the execution."""

    __slots__ = ("_build", "_value")

    def __init__(self, build: Callable[[], dict[str, Any]]) -> None:
        self._build = build
        self._value: dict[str, Any] | None = None

    def _built(self) -> dict[str, Any]:
        if self._value is None:
            self._value = self._build()
        return self._value

    def __getitem__(self, key: str) -> Any:
        return self._built()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._built())

    def __len__(self) -> int:
        return len(self._built())


class StepDecisions:
    """Decides from an execution's committed state whether a ready step runs, and with what."""

    def __init__(self, definition: WorkflowDefinition, secrets: Mapping[str, str]) -> None:
        self._definition = definition
        self._secrets = secrets
        self._steps = {step.id: step for step in definition.steps}
        self._ancestry: graph.Ancestry | None = None

    def decide(self, state: ExecutionState, step: StepDefinition) -> RunStep | SettleStep:
        activation = self.lazy_activation(state, step.id)
        try:
            if not self._any_upstream_taken(state, step, activation):
                return SettleStep(SS.SKIPPED)
            if step.when and not evaluate_condition(step.when, activation):
                return SettleStep(SS.SKIPPED)
        except ConditionError as exc:
            # ConditionError, or ConditionTooCostly for one over the evaluation budget.
            return SettleStep(SS.FAILED, Failure(type(exc).__name__, str(exc)))
        return self.resolve(state, step.parameters, step.input_schema)

    def _any_upstream_taken(
        self, state: ExecutionState, step: StepDefinition, activation: Mapping[str, Any]
    ) -> bool:
        if not step.depends_on:
            return True
        for dep_id in step.depends_on:
            dep = state.steps[dep_id]
            reached = dep.status is SS.COMPLETED or (
                dep.status in FAILED_STEP_STATUSES and self.continues(dep_id)
            )
            condition = step.edge_conditions.get(dep_id)
            if reached and (not condition or evaluate_condition(condition, activation)):
                return True
        return False

    def continues(self, step_id: str) -> bool:
        return (
            self._steps[step_id].continue_on_error
            or self._definition.on_failure is FailurePolicy.CONTINUE
        )

    def resolve(
        self, state: ExecutionState, parameters: Any, schema: Mapping[str, Any] | None
    ) -> RunStep | SettleStep:
        resolution = references.resolve(
            parameters,
            inputs=state.inputs,
            steps=StepView(state.steps),
            secrets=self._secrets,
        )
        if resolution.missing_steps:
            missing = ", ".join(resolution.missing_steps)
            return SettleStep(
                SS.FAILED, Failure("UnresolvedReference", f"cannot resolve {missing}")
            )
        if resolution.missing_secrets:
            missing = ", ".join(resolution.missing_secrets)
            return SettleStep(SS.FAILED, Failure("SecretNotFound", f"no secret for {missing}"))
        if resolution.missing_inputs:
            return SettleStep(SS.PAUSED, missing_inputs=resolution.missing_inputs)
        problem = schema_problem(resolution.value, schema)
        if problem is not None:
            message = references.redact(problem, resolution.secret_values)
            return SettleStep(SS.FAILED, Failure("InputValidationError", message))
        return RunStep(resolution.value, resolution.secret_values)

    def lazy_activation(
        self, state: ExecutionState, step_id: str, *, with_self: bool = False
    ) -> Mapping[str, Any]:
        """`inputs` and `steps` as the expressions of `step_id` see them, built on first read.

        `steps` holds the step's upstream steps only (its transitive dependencies, all
        settled by the time anything of the step is evaluated), so what an expression sees
        never depends on timing, however it names a step (`steps[inputs.which]`, a macro
        over `steps`). `with_self` adds the step itself, for its compensation, which runs
        after the step and may read its output.
        """
        return LazyActivation(lambda: self._activation(state, step_id, with_self))

    def _activation(self, state: ExecutionState, step_id: str, with_self: bool) -> dict[str, Any]:
        steps = UpstreamView(state.steps, self.ancestry, step_id, with_self)
        return {"inputs": dict(state.inputs), "steps": steps}

    @property
    def ancestry(self) -> graph.Ancestry:
        """Built on first use: most workflows have no condition reading `steps`."""
        if self._ancestry is None:
            deps = {step_id: step.depends_on for step_id, step in self._steps.items()}
            self._ancestry = graph.Ancestry(list(deps), deps)
        return self._ancestry


# An action names its own errors; what it names must fit where failures are kept (the
# attempts table's error_type column, text without NUL on Postgres).
MAX_ERROR_TYPE_LENGTH = 128
MAX_ERROR_MESSAGE_LENGTH = 8192


def failed_outcome(
    status: StepStatus, error: Failure, *, retryable: bool, started: float
) -> AttemptOutcome:
    duration = asyncio.get_running_loop().time() - started
    error = storable_failure(error)
    return AttemptOutcome(status, error=error, retryable=retryable, duration=duration)


def storable_failure(error: Failure) -> Failure:
    """`error` as the store can keep it: NUL replaced, type and message cut to bounds."""
    kind = _storable_text(error.type, MAX_ERROR_TYPE_LENGTH)
    message = _storable_text(error.message, MAX_ERROR_MESSAGE_LENGTH)
    if kind == error.type and message == error.message:
        return error
    return Failure(kind, message)


def _storable_text(text: str, limit: int) -> str:
    text = text.replace("\x00", "\ufffd")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def missing_input_failure(decision: SettleStep) -> Failure:
    names = ", ".join(decision.missing_inputs) or "a value"
    return Failure("MissingInput", f"needs {names}")


def schema_problem(value: Any, schema: Mapping[str, Any] | None) -> str | None:
    if not schema:
        return None
    error = jsonschema.exceptions.best_match(json_schemas.validation_errors(value, schema))
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path)
    return f"{where or '(root)'}: {error.message}"

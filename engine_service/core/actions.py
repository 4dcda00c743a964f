"""Actions: what a step does. Looked up by name in a registry.

The core ships the actions that make workflows testable (`noop`, `echo`, `delay`, `fail`,
`transform`); the engine adds `workflow` (sub-workflows). An action is an async callable
taking the resolved parameters and an `ActionContext`, returning a JSON value.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from engine_service.core.conditions import ExpressionTooCostly, evaluate_expression
from engine_service.core.errors import EngineError, ExpressionError


@dataclass(frozen=True, slots=True)
class ActionContext:
    execution_id: str
    step_id: str
    attempt: int
    tenant: str
    workflow_id: str
    # `inputs` and `steps` as conditions see them, for actions that compute over them.
    activation: Mapping[str, Any] = field(default_factory=dict)
    # Set when this attempt re-runs one the engine lost by stopping mid-attempt: when the
    # lost attempt started. An action with a lasting effect (a child execution) looks for
    # what the lost attempt left since then and takes it over instead of doing it twice.
    lost_attempt_started: datetime | None = None
    # Called by an action that starts (or takes over) a child execution, with its id: the
    # step's state and its finished event name the child.
    child_started: Callable[[str], None] = field(default=lambda _child_id: None)
    # What runs: "" for one of the step's attempts, else the handler ("fallback",
    # "compensation"). An action with a lasting effect keys it by this as well as by the
    # attempt, so a handler never gets back what the attempt it replaces or undoes made.
    handler: str = ""


Action = Callable[[Mapping[str, Any], ActionContext], Awaitable[Any]]


class ActionError(EngineError):
    """An action failed; `error_type` is what `non_retryable_errors` matches."""

    def __init__(self, message: str, *, error_type: str = "ActionError", retryable: bool = True):
        self.error_type = error_type
        self.retryable = retryable
        super().__init__(message)


class UnknownAction(EngineError):
    def __init__(self, *, name: str) -> None:
        self.name = name
        super().__init__(f"no action named {name!r} is registered")


class ActionRegistry:
    def __init__(self, actions: Mapping[str, Action] | None = None) -> None:
        self._actions: dict[str, Action] = dict(actions or {})
        self._slotless: set[str] = set()

    def register(self, name: str, action: Action, *, holds_slot: bool = True) -> None:
        """`holds_slot=False` for an action that mostly waits on the engine itself (a
        child execution): it takes none of the engine's step slots, which the work it
        waits for needs, so parents waiting for children can never starve them."""
        self._actions[name] = action
        if holds_slot:
            self._slotless.discard(name)
        else:
            self._slotless.add(name)

    def holds_slot(self, name: str) -> bool:
        return name not in self._slotless

    def get(self, name: str) -> Action:
        try:
            return self._actions[name]
        except KeyError:
            raise UnknownAction(name=name) from None

    def __contains__(self, name: object) -> bool:
        return name in self._actions

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._actions))


async def noop(parameters: Mapping[str, Any], context: ActionContext) -> Any:
    return {}


async def echo(parameters: Mapping[str, Any], context: ActionContext) -> Any:
    """Returns its parameters: the simplest way to move data between steps."""
    return dict(parameters)


async def delay(parameters: Mapping[str, Any], context: ActionContext) -> Any:
    """Sleeps `seconds`, then returns {"slept": seconds}."""
    seconds = _number(parameters, "seconds", default=0.0)
    await asyncio.sleep(seconds)
    return {"slept": seconds}


async def fail(parameters: Mapping[str, Any], context: ActionContext) -> Any:
    """Fails with `error_type` and `message`; with `times`, fails that many attempts first."""
    times = parameters.get("times")
    if times is not None and context.attempt > int(times):
        return {"succeeded_on_attempt": context.attempt}
    raise ActionError(
        str(parameters.get("message", "step failed on purpose")),
        error_type=str(parameters.get("error_type", "ActionError")),
        retryable=bool(parameters.get("retryable", True)),
    )


async def transform(parameters: Mapping[str, Any], context: ActionContext) -> Any:
    """Evaluates the CEL `expression` over `inputs`, `steps` and the `values` parameter."""
    expression = parameters.get("expression")
    if not isinstance(expression, str) or not expression:
        raise ActionError(
            "transform needs an `expression`", error_type="InvalidParameters", retryable=False
        )
    activation = {**context.activation, "values": parameters.get("values")}
    try:
        return evaluate_expression(expression, activation)
    except ExpressionTooCostly as exc:
        raise ActionError(str(exc), error_type="ExpressionTooCostly", retryable=False) from exc
    except ExpressionError as exc:
        raise ActionError(str(exc), error_type="TransformError", retryable=False) from exc


def _number(parameters: Mapping[str, Any], name: str, *, default: float) -> float:
    value = parameters.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ActionError(
            f"`{name}` must be a non-negative number",
            error_type="InvalidParameters",
            retryable=False,
        )
    return float(value)


def builtin_actions() -> ActionRegistry:
    return ActionRegistry(
        {"noop": noop, "echo": echo, "delay": delay, "fail": fail, "transform": transform}
    )

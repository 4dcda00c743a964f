"""CEL for `when` conditions, connection conditions and the `transform` action.

Expressions see `inputs` (the execution inputs) and `steps` (`{id: {"output": ...,
"status": "COMPLETED"}}` for the step's upstream steps, all settled by then, and for no
other step, so what an expression sees never depends on timing). CEL is compiled by a Rust
library and never evaluated as Python, so a definition cannot run code on the engine.
"""

from __future__ import annotations

import base64
import datetime
import functools
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import cel

from engine_service.core import cel_budget
from engine_service.core.cel_budget import EXPRESSION_LIMITS, DataTooLarge, Path
from engine_service.core.cel_syntax import CelSyntaxError, Node, TooDeep, parse, tokenize
from engine_service.core.errors import ConditionError, ExpressionError
from engine_service.core.model import JsonValue

_ERRORS: Final = (KeyError, IndexError, TypeError, ValueError, RuntimeError, ArithmeticError)
# Characters (and the word `in`) without which no node of a CEL tree has children: their
# count bounds the depth of the tree the library would build.
_OPERATOR: Final = re.compile(r"[.\[({+\-*/%<>=!&|?]|\bin\b")


class ExpressionTooCostly(ExpressionError):
    """Evaluating the expression could cost more than the budget: it was not run."""


class ConditionTooCostly(ConditionError, ExpressionTooCostly):
    """A condition over the budget: its step fails with this type."""


class ExpressionRefused(ValueError):
    """Not an expression the engine will hand to the CEL library; the message says why."""


@dataclass(frozen=True, slots=True)
class Analysis:
    tree: Node
    paths: Mapping[str, frozenset[Path]]


@functools.lru_cache(maxsize=1024)
def _analysed(expression: str) -> Analysis:
    """Checked once per distinct expression, in linear time, before the library sees it:
    length, nesting (the library crashes on deep trees), syntax, the literals' cost."""
    limits = EXPRESSION_LIMITS
    if len(expression) > limits.max_length:
        raise ExpressionRefused(
            f"{len(expression)} characters, over the limit of {limits.max_length}"
        )
    try:
        tree = parse(expression, max_depth=limits.max_depth)
    except TooDeep as exc:
        raise ExpressionRefused(str(exc)) from exc
    except CelSyntaxError as exc:
        if len(_OPERATOR.findall(expression)) < limits.max_depth:
            _program(expression)  # shallow enough for the library: its message is better
        raise ExpressionRefused(f"invalid CEL: {exc}") from exc
    _program(expression)
    static = cel_budget.static_cost(tree)
    if static > limits.budget:
        raise ExpressionRefused(
            f"evaluating it costs at least {static} units, over the budget of "
            f"{limits.budget} (about 5 ms): iterate over fewer or shorter literals"
        )
    return Analysis(tree, cel_budget.paths(tree))


@functools.lru_cache(maxsize=1024)
def _program(expression: str) -> Any:
    """Compile once per distinct expression: conditions are evaluated for every execution."""
    try:
        return cel.compile(expression)
    except ValueError as exc:
        raise ExpressionRefused(f"invalid CEL: {exc}") from exc
    except BaseException as exc:  # the library's panics derive from BaseException
        if type(exc).__name__ != "PanicException":
            raise
        raise ExpressionRefused(f"invalid CEL: the CEL library failed on it: {exc}") from exc


def compile_condition(expression: str) -> str | None:
    """None when `expression` is valid CEL within the limits (or empty, meaning true),
    else why not."""
    if not expression.strip():
        return None
    try:
        _analysed(expression)
    except ExpressionRefused as exc:
        return str(exc)
    return None


def referenced_steps(expression: str) -> frozenset[str]:
    """Step ids the expression selects from `steps` by name (`steps.a`, `steps["a-b"]`).

    CEL's own analysis only reports the root variable `steps`, not which step, so the
    engine's syntax tree is read (the tokens, for an expression that is not CEL).
    `inputs.steps.x` is a field of inputs; `steps.exists(k, ...)` is a macro over the
    steps and `steps[k]` a computed index, neither names a step. Used to reject
    references to steps that are not upstream.
    """
    try:
        wanted = _analysed(expression).paths.get("steps", frozenset())
        return frozenset(path[0] for path in wanted if path)
    except ExpressionRefused:
        pass  # not CEL: read the tokens, for what they are worth
    try:
        tokens = tokenize(expression)
    except CelSyntaxError:
        return frozenset()
    found: set[str] = set()
    for index, (kind, text) in enumerate(tokens[:-1]):
        if kind != "ident" or text != "steps" or (index and tokens[index - 1][1] == "."):
            continue
        following = [token[1] for token in tokens[index + 1 : index + 4]]
        if following[0] == "." and tokens[index + 2][0] == "ident" and following[2] != "(":
            found.add(following[1])
        elif following[0] == "[" and tokens[index + 2][0] == "str" and following[2] == "]":
            key = cel_budget.string_key(tokens[index + 2][1])
            if key is not None:
                found.add(key)
    return frozenset(found)


def _execute(
    expression: str,
    activation: Mapping[str, Any],
    error: type[ExpressionError],
    too_costly: type[ExpressionTooCostly],
) -> Any:
    try:
        analysis = _analysed(expression)
    except ExpressionRefused as exc:
        raise error(expression=expression, reason=str(exc)) from exc
    budget = EXPRESSION_LIMITS.budget
    try:
        units, data = cel_budget.bounded_activation(
            analysis.tree, analysis.paths, activation, budget
        )
    except DataTooLarge as exc:
        reason = f"the data it reads is {exc}, over the budget of {budget} units"
        raise too_costly(expression=expression, reason=reason) from exc
    if units > budget:
        reason = f"evaluating it could cost {units} units, over the budget of {budget} (about 5 ms)"
        raise too_costly(expression=expression, reason=reason)
    try:
        return _program(expression).execute(data)
    except KeyError as exc:
        raise error(expression=expression, reason=f"no such key: {exc.args[0]!r}") from exc
    except _ERRORS as exc:
        raise error(expression=expression, reason=str(exc)) from exc


def evaluate_condition(expression: str, activation: Mapping[str, Any]) -> bool:
    """Whether a step or connection may proceed; empty means true.

    Anything but a bool is an error rather than truthiness: `steps.a.output.count` being
    0 or missing should be a visible mistake, not a silent skip.
    """
    if not expression.strip():
        return True
    result = _execute(expression, activation, ConditionError, ConditionTooCostly)
    if not isinstance(result, bool):
        raise ConditionError(
            expression=expression,
            reason=f"must evaluate to a bool, got {type(result).__name__} {result!r}",
        )
    return result


def evaluate_expression(expression: str, activation: Mapping[str, Any]) -> JsonValue:
    """The value of a CEL expression as plain JSON (for `transform`)."""
    result = _execute(expression, activation, ExpressionError, ExpressionTooCostly)
    try:
        return to_json(result)
    except (TypeError, ValueError) as exc:
        raise ExpressionError(expression=expression, reason=str(exc)) from exc


def to_json(value: Any) -> JsonValue:
    """CEL results as JSON: bytes as base64, timestamps as RFC 3339, durations as proto
    JSON ("1.5s"), map keys as strings, optionals unwrapped; non-finite floats are
    rejected because JSON cannot carry them."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value} is not representable in JSON")
        return value
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, datetime.datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, datetime.timedelta):
        return f"{value.total_seconds():.9f}".rstrip("0").rstrip(".") + "s"
    if isinstance(value, Mapping):
        return {_key(k): to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(item) for item in value]
    if isinstance(value, cel.OptionalValue):
        return to_json(value.value()) if value.has_value() else None
    raise TypeError(f"CEL value of type {type(value).__name__} has no JSON form")


def _key(key: Any) -> str:
    if isinstance(key, bool):
        return "true" if key else "false"
    return str(key)

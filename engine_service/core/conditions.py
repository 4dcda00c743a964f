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
from typing import Any, Final

import cel

from engine_service.core.errors import ConditionError, ExpressionError
from engine_service.core.model import JsonValue

# A string literal (skipped, so text inside quotes never counts) or a `steps.<id>` /
# `steps["<id>"]` selection. Not preceded by `.` or a name character: `inputs.steps.x`
# is a field of inputs, not a step. Not followed by `(`: `steps.exists(k, ...)` is a
# macro over the steps, not a step named `exists`.
_STEP_SELECTION: Final = re.compile(
    r"""(?P<literal>[rR]?(?:\"\"\"[\s\S]*?\"\"\"|'''[\s\S]*?'''|"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*'))"""
    r"""|(?<![\w.])steps\s*(?:\.\s*(?P<dot>[A-Za-z_][A-Za-z0-9_]*)(?![A-Za-z0-9_]|\s*\()"""
    r"""|\[\s*(?:"(?P<dq>[^"\\]*)"|'(?P<sq>[^'\\]*)')\s*\])"""
)
_ERRORS: Final = (KeyError, IndexError, TypeError, ValueError, RuntimeError, ArithmeticError)


@functools.lru_cache(maxsize=1024)
def _compiled(expression: str) -> Any:
    """Compile once per distinct expression: conditions are evaluated for every execution."""
    return cel.compile(expression)


def compile_condition(expression: str) -> str | None:
    """None when `expression` is valid CEL (or empty, meaning true), else the parser's error."""
    if not expression.strip():
        return None
    try:
        _compiled(expression)
    except ValueError as exc:
        return str(exc)
    return None


def referenced_steps(expression: str) -> frozenset[str]:
    """Step ids the expression selects from `steps` (`steps.a`, `steps["a-b"]`).

    CEL's own analysis only reports the root variable `steps`, not which step, so the
    source is scanned, skipping string literals. Used to reject references to steps that
    are not upstream.
    """
    found: set[str] = set()
    for match in _STEP_SELECTION.finditer(expression):
        step_id = match.group("dot") or match.group("dq") or match.group("sq")
        if step_id:
            found.add(step_id)
    return frozenset(found)


def _execute(expression: str, activation: Mapping[str, Any], error: type[ExpressionError]) -> Any:
    try:
        program = _compiled(expression)
    except ValueError as exc:
        raise error(expression=expression, reason=f"invalid CEL: {exc}") from exc
    try:
        return program.execute(dict(activation))
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
    result = _execute(expression, activation, ConditionError)
    if not isinstance(result, bool):
        raise ConditionError(
            expression=expression,
            reason=f"must evaluate to a bool, got {type(result).__name__} {result!r}",
        )
    return result


def evaluate_expression(expression: str, activation: Mapping[str, Any]) -> JsonValue:
    """The value of a CEL expression as plain JSON (for `transform`)."""
    result = _execute(expression, activation, ExpressionError)
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

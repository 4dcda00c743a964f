"""How definitions are written: problem paths, durations, enums and the canonical dict form.

The canonical dict form is the proto JSON form with snake_case names, durations as strings
like "1.5s" and enums by their proto names, so the transport layer can hand it to
`json_format.ParseDict` as is.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable
from typing import Any, Final, Literal

from engine_service.core.model import (
    FailurePolicy,
    JitterMode,
    JsonObject,
    RetryPolicy,
    StepDefinition,
    WorkflowDefinition,
)

# google.protobuf.Duration's range: anything longer cannot be stored or sent.
MAX_DURATION_SECONDS: Final = 315_576_000_000.0
_DURATION: Final = re.compile(r"(?P<number>\d+(?:\.\d*)?|\.\d+)(?P<unit>ms|s|m|h)")
_UNIT_SECONDS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

Form = Literal["steps", "graph"]


def format_path(base: str, *segments: str | int) -> str:
    """`steps[3].depends_on[0]`; keys that are not names are quoted: `labels["a b"]`."""
    path = base
    for segment in segments:
        if isinstance(segment, int):
            path += f"[{segment}]"
        elif _NAME.fullmatch(segment):
            path += f".{segment}" if path else segment
        else:
            path += f"[{json.dumps(segment, ensure_ascii=False)}]"
    return path


# -- durations and enums ---------------------------------------------------------------


def parse_duration(value: object) -> float:
    """Seconds from "1.5s", "500ms", "2m", "1h" or a number; rounded to nanoseconds (the
    proto's precision) so the canonical string form round-trips exactly."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"expected a duration, got {value!r}")
    if isinstance(value, str):
        match = _DURATION.fullmatch(value.strip())
        if match is None:
            raise ValueError(
                f"bad duration {value!r}: use e.g. '1.5s', '500ms', '2m', '1h' or seconds"
            )
        seconds = float(match.group("number")) * _UNIT_SECONDS[match.group("unit")]
    else:
        seconds = float(value)
    if seconds < 0:
        raise ValueError(f"duration {value!r} is negative")
    if seconds > MAX_DURATION_SECONDS:
        raise ValueError(f"duration {value!r} is longer than {MAX_DURATION_SECONDS:.0f}s")
    return round(seconds, 9)


def format_duration(seconds: float) -> str:
    """The proto JSON form: "1.5s", "120s"."""
    return f"{seconds:.9f}".rstrip("0").rstrip(".") + "s"


def _enum_names(members: Iterable[str], prefix: str, default: str) -> dict[str, str]:
    names = {"": default, f"{prefix}_UNSPECIFIED": default}
    for member in members:
        names[member] = names[f"{prefix}_{member}"] = member
    return names


_FAILURE_POLICIES: Final = _enum_names(FailurePolicy, "FAILURE_POLICY", FailurePolicy.STOP)
_JITTER_MODES: Final = _enum_names(JitterMode, "JITTER_MODE", JitterMode.NONE)


def parse_failure_policy(name: str) -> FailurePolicy:
    """The policy named by its proto or member name; empty and UNSPECIFIED mean STOP."""
    return FailurePolicy(_FAILURE_POLICIES[name])


def parse_jitter_mode(name: str) -> JitterMode:
    """The mode named by its proto or member name; empty and UNSPECIFIED mean NONE."""
    return JitterMode(_JITTER_MODES[name])


# -- the canonical dict form --------------------------------------------------------------


def definition_to_dict(
    definition: WorkflowDefinition, *, form: Form | None = None
) -> dict[str, Any]:
    """The canonical dict form; `parse_definition` of it gives back an equal definition.

    Proto JSON with snake_case names: durations as "1.5s", enums by proto name, steps in
    topological order, engine defaults (on_failure, retry) written out, other empty or
    absent fields left out. `form` defaults to the form the definition was written in; the
    graph form is required when a connection has a condition.
    """
    out: dict[str, Any] = {"id": definition.id}
    if definition.version:
        out["version"] = definition.version
    out["tenant"] = definition.tenant
    _put_if(out, "name", definition.name)
    _put_if(out, "description", definition.description)
    _put_if(out, "labels", dict(definition.labels))
    if definition.estimated_time_saved:
        out["estimated_time_saved"] = format_duration(definition.estimated_time_saved)
    _put_if(out, "business_value", definition.business_value)
    _put_schema(out, "input_schema", definition.input_schema)
    _put_if(out, "max_concurrent_steps", definition.max_concurrent_steps)
    if definition.timeout is not None:
        out["timeout"] = format_duration(definition.timeout)
    out["on_failure"] = f"FAILURE_POLICY_{definition.on_failure.value}"
    chosen = form or _form_of(definition)
    out.update(_graph_to_dict(definition) if chosen == "graph" else _steps_to_dict(definition))
    return out


def _form_of(definition: WorkflowDefinition) -> Form:
    conditional = any(step.edge_conditions for step in definition.steps)
    return "graph" if conditional or "nodes" in definition.source else "steps"


def _put_if(out: dict[str, Any], key: str, value: Any) -> None:
    if value:
        out[key] = copy.deepcopy(value)


def _put_schema(out: dict[str, Any], key: str, schema: JsonObject | None) -> None:
    # An empty schema ({}: anything goes) differs from no schema, so only None is left out.
    if schema is not None:
        out[key] = copy.deepcopy(dict(schema))


def _steps_to_dict(definition: WorkflowDefinition) -> dict[str, Any]:
    if any(step.edge_conditions for step in definition.steps):
        raise ValueError("connection conditions can only be written in the graph form")
    return {"steps": [_step_to_dict(step, with_depends_on=True) for step in definition.steps]}


def _graph_to_dict(definition: WorkflowDefinition) -> dict[str, Any]:
    connections: list[dict[str, str]] = []
    for step in definition.steps:
        for source in step.depends_on:
            connection = {"source": source, "target": step.id}
            _put_if(connection, "condition", step.edge_conditions.get(source, ""))
            connections.append(connection)
    out: dict[str, Any] = {
        "nodes": [_step_to_dict(step, with_depends_on=False) for step in definition.steps]
    }
    _put_if(out, "connections", connections)
    return out


def _step_to_dict(step: StepDefinition, *, with_depends_on: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"id": step.id, "action": step.action}
    _put_if(out, "parameters", dict(step.parameters))
    if with_depends_on:
        _put_if(out, "depends_on", list(step.depends_on))
    _put_if(out, "when", step.when)
    out["retry"] = _retry_to_dict(step.retry)
    if step.timeout is not None:
        out["timeout"] = format_duration(step.timeout)
    _put_if(out, "continue_on_error", step.continue_on_error)
    _put_schema(out, "input_schema", step.input_schema)
    _put_schema(out, "output_schema", step.output_schema)
    for key, call in (("compensate", step.compensate), ("fallback", step.fallback)):
        if call is not None:
            out[key] = {"action": call.action}
            _put_if(out[key], "parameters", dict(call.parameters))
    _put_if(out, "name", step.name)
    _put_if(out, "description", step.description)
    return out


def _retry_to_dict(retry: RetryPolicy) -> dict[str, Any]:
    out: dict[str, Any] = {
        "max_attempts": retry.max_attempts,
        "initial_interval": format_duration(retry.initial_interval),
        "backoff_coefficient": retry.backoff_coefficient,
    }
    if retry.maximum_interval is not None:
        out["maximum_interval"] = format_duration(retry.maximum_interval)
    out["jitter"] = f"JITTER_MODE_{retry.jitter.value}"
    _put_if(out, "non_retryable_errors", list(retry.non_retryable_errors))
    return out

"""Parse and validate workflow definitions given as dicts (from YAML, JSON or proto JSON).

Validation runs in two passes. The published JSON Schema
(`schemas/workflow-definition.schema.json`) checks the shape first; if the shape is wrong,
those problems are reported alone, because the semantic checks need a sane shape. Then
every semantic rule runs and every problem is reported at once, each with its path.

`WorkflowDefinition.source` holds the canonical dict form (see `definition_to_dict`): the
proto JSON form with snake_case names, durations as strings like "1.5s" and enums by
their proto names, so the transport layer can hand it to `json_format.ParseDict` as is.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import importlib.resources
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import jsonschema
from jsonschema.validators import validator_for

from engine_service.core import graph
from engine_service.core.conditions import compile_condition, referenced_steps
from engine_service.core.errors import DefinitionInvalid, InvalidReference, Problem
from engine_service.core.model import (
    DEFAULT_TENANT,
    ActionCall,
    FailurePolicy,
    JitterMode,
    JsonObject,
    RetryPolicy,
    StepDefinition,
    WorkflowDefinition,
)
from engine_service.core.references import iter_strings, template_references

SCHEMA_FILE: Final = "workflow-definition.schema.json"
MAX_ATTEMPTS: Final = 100
# google.protobuf.Duration's range: anything longer cannot be stored or sent.
MAX_DURATION_SECONDS: Final = 315_576_000_000.0
_DURATION: Final = re.compile(r"(?P<number>\d+(?:\.\d*)?|\.\d+)(?P<unit>ms|s|m|h)")
_UNIT_SECONDS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

Form = Literal["steps", "graph"]


@dataclass(frozen=True, slots=True)
class DefinitionLimits:
    """Bounds that protect the engine from definitions too large to schedule or store."""

    max_steps: int = 1000
    max_depends_on: int = 100
    max_definition_bytes: int = 1024 * 1024
    max_id_length: int = 128
    id_pattern: str = r"^[A-Za-z_][A-Za-z0-9_-]*$"


@functools.cache
def definition_schema() -> Mapping[str, Any]:
    """The published JSON Schema of the definition format, as shipped in the package."""
    resource = importlib.resources.files("engine_service.core.schemas").joinpath(SCHEMA_FILE)
    schema: dict[str, Any] = json.loads(resource.read_text(encoding="utf-8"))
    return schema


@functools.cache
def _definition_validator() -> jsonschema.protocols.Validator:
    return jsonschema.Draft202012Validator(definition_schema())


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


# -- the entry points ---------------------------------------------------------------------


def parse_definition(
    data: Mapping[str, Any], *, limits: DefinitionLimits = DefinitionLimits()
) -> WorkflowDefinition:
    """A validated definition with steps in topological order, or DefinitionInvalid
    naming every problem."""
    problems = _shape_problems(data, limits)
    if problems:
        raise DefinitionInvalid(problems=problems)
    return _Parser(copy.deepcopy(dict(data)), limits).parse()


def validate_definition(
    data: Mapping[str, Any], *, limits: DefinitionLimits = DefinitionLimits()
) -> tuple[list[Problem], list[str], list[list[str]]]:
    """For the dry run: the problems, or the execution plan (topological order) and the
    stages of steps that could run in parallel."""
    try:
        definition = parse_definition(data, limits=limits)
    except DefinitionInvalid as exc:
        return list(exc.problems), [], []
    deps = {step.id: step.depends_on for step in definition.steps}
    return [], list(definition.step_ids), graph.stages(definition.step_ids, deps)


def _shape_problems(data: Mapping[str, Any], limits: DefinitionLimits) -> list[Problem]:
    try:
        encoded = json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        return [Problem("", f"the definition is not JSON: {exc}")]
    size = len(encoded.encode("utf-8"))
    if size > limits.max_definition_bytes:
        return [
            Problem(
                "",
                f"the definition is {size} bytes, over the limit of {limits.max_definition_bytes}",
            )
        ]
    return [
        Problem(format_path("", *error.absolute_path), error.message)
        for error in _definition_validator().iter_errors(data)
    ]


# -- semantic checks ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Dependency:
    """One edge into a step, with where to report problems about it."""

    step_id: str
    path: str
    condition: str = ""
    condition_path: str = ""


@dataclass(frozen=True, slots=True)
class _RawStep:
    """A step (or node) as given, with its path and incoming edges from either form."""

    data: Mapping[str, Any]
    path: str
    dependencies_path: str
    dependencies: tuple[_Dependency, ...]

    @property
    def id(self) -> str:
        return str(self.data["id"])


@dataclass(frozen=True, slots=True)
class _Scope:
    """What a step may read: its own id, its upstream steps, and every declared id."""

    owner: str
    upstream: frozenset[str]
    known: frozenset[str]


class _Parser:
    """Runs every semantic check on a shape-valid definition, collecting all problems."""

    def __init__(self, data: Mapping[str, Any], limits: DefinitionLimits) -> None:
        self.data = data
        self.limits = limits
        self.problems: list[Problem] = []

    def problem(self, path: str, message: str) -> None:
        self.problems.append(Problem(path, message))

    def parse(self) -> WorkflowDefinition:
        form = self._form()
        raw_steps = self._graph_steps() if form == "graph" else self._steps()
        self._check_count(raw_steps, form)
        self._check_ids(raw_steps)
        deps = self._check_dependencies(raw_steps)
        acyclic = self._check_cycles(raw_steps, deps)
        steps = [self._step(raw) for raw in raw_steps]
        self._check_references(raw_steps, steps, deps, acyclic)
        definition = self._workflow()
        if self.problems:
            raise DefinitionInvalid(problems=self.problems)
        by_id = {step.id: step for step in steps}
        ordered = tuple(by_id[step_id] for step_id in graph.topological_order(list(deps), deps))
        definition = dataclasses.replace(definition, steps=ordered)
        return dataclasses.replace(definition, source=definition_to_dict(definition, form=form))

    def _form(self) -> Form:
        has_steps = bool(self.data.get("steps"))
        has_graph = bool(self.data.get("nodes") or self.data.get("connections"))
        if has_steps and has_graph:
            self.problem("", "give either steps or nodes + connections, not both")
        return "graph" if has_graph and not has_steps else "steps"

    def _check_count(self, raw_steps: Sequence[_RawStep], form: Form) -> None:
        key = "nodes" if form == "graph" else "steps"
        if not raw_steps:
            given = any(k in self.data for k in ("steps", "nodes", "connections"))
            self.problem(
                key,
                "the workflow has no steps" if given else "give steps, or nodes and connections",
            )
        elif len(raw_steps) > self.limits.max_steps:
            self.problem(key, f"{len(raw_steps)} steps, over the limit of {self.limits.max_steps}")

    def _steps(self) -> list[_RawStep]:
        return [
            _RawStep(
                data=step,
                path=f"steps[{i}]",
                dependencies_path=f"steps[{i}].depends_on",
                dependencies=tuple(
                    _Dependency(step_id, f"steps[{i}].depends_on[{k}]")
                    for k, step_id in enumerate(step.get("depends_on", ()))
                ),
            )
            for i, step in enumerate(self.data.get("steps", ()))
        ]

    def _graph_steps(self) -> list[_RawStep]:
        """Nodes become steps; each connection adds its source to the target's dependencies."""
        nodes = self.data.get("nodes", ())
        node_ids = {node["id"] for node in nodes}
        incoming: dict[str, list[_Dependency]] = {}
        for index, connection in enumerate(self.data.get("connections", ())):
            dependency = self._connection(index, connection, node_ids)
            if dependency is not None:
                incoming.setdefault(connection["target"], []).append(dependency)
        return [
            _RawStep(node, f"nodes[{i}]", f"nodes[{i}]", tuple(incoming.pop(node["id"], ())))
            for i, node in enumerate(nodes)
        ]

    def _connection(
        self, index: int, connection: Mapping[str, str], node_ids: set[str]
    ) -> _Dependency | None:
        base = f"connections[{index}]"
        condition = connection.get("condition", "")
        error = compile_condition(condition)
        if error is not None:
            self.problem(f"{base}.condition", f"invalid CEL: {error}")
        known = True
        for end in ("source", "target"):
            if connection[end] not in node_ids:
                self.problem(f"{base}.{end}", f"unknown node {connection[end]!r}")
                known = False
        if not known:
            return None
        return _Dependency(connection["source"], base, condition, f"{base}.condition")

    def _check_ids(self, raw_steps: Sequence[_RawStep]) -> None:
        self._check_id(self.data["id"], "id")
        first: dict[str, str] = {}
        for raw in raw_steps:
            path = f"{raw.path}.id"
            self._check_id(raw.id, path)
            if raw.id in first:
                self.problem(path, f"duplicate id {raw.id!r} (first at {first[raw.id]})")
            else:
                first[raw.id] = path

    def _check_id(self, value: str, path: str) -> None:
        if len(value) > self.limits.max_id_length:
            self.problem(
                path, f"{len(value)} characters, over the limit of {self.limits.max_id_length}"
            )
        elif not re.search(self.limits.id_pattern, value):
            self.problem(path, f"{value!r} is not an id: it must match {self.limits.id_pattern}")

    def _check_dependencies(self, raw_steps: Sequence[_RawStep]) -> dict[str, list[str]]:
        """The usable dependency graph (first declaration of each id wins); reports the rest."""
        ids = {raw.id for raw in raw_steps}
        deps: dict[str, list[str]] = {}
        for raw in raw_steps:
            if len(raw.dependencies) > self.limits.max_depends_on:
                self.problem(
                    raw.dependencies_path,
                    f"{len(raw.dependencies)} dependencies, over the limit of "
                    f"{self.limits.max_depends_on}",
                )
            usable: list[str] = []
            for dependency in raw.dependencies:
                message = _dependency_problem(raw.id, dependency.step_id, ids, usable)
                if message is None:
                    usable.append(dependency.step_id)
                else:
                    self.problem(dependency.path, message)
            deps.setdefault(raw.id, usable)
        return deps

    def _check_cycles(self, raw_steps: Sequence[_RawStep], deps: Mapping[str, list[str]]) -> bool:
        """Report one cycle per group of steps caught in one; True if there are none."""
        edge_paths: dict[tuple[str, str], str] = {}
        for raw in raw_steps:
            for dependency in raw.dependencies:
                edge_paths.setdefault((raw.id, dependency.step_id), dependency.path)
        remaining = list(deps)
        acyclic = True
        while (cycle := graph.find_cycle(remaining, deps)) is not None:
            acyclic = False
            # The edge closing the cycle: its last step depends on the one before it.
            self.problem(edge_paths[(cycle[-1], cycle[-2])], "cycle: " + " -> ".join(cycle))
            remaining = [step_id for step_id in remaining if step_id not in cycle]
        return acyclic

    def _step(self, raw: _RawStep) -> StepDefinition:
        data, path = raw.data, raw.path
        return StepDefinition(
            id=raw.id,
            action=data["action"],
            parameters=data.get("parameters", {}),
            depends_on=tuple(dict.fromkeys(d.step_id for d in raw.dependencies)),
            when=data.get("when", ""),
            retry=self._retry(data.get("retry", {}), f"{path}.retry"),
            timeout=self._optional_duration(data, "timeout", path),
            continue_on_error=data.get("continue_on_error", False),
            input_schema=self._json_schema(data, "input_schema", path),
            output_schema=self._json_schema(data, "output_schema", path),
            compensate=_action_call(data.get("compensate")),
            fallback=_action_call(data.get("fallback")),
            name=data.get("name", ""),
            description=data.get("description", ""),
            edge_conditions={d.step_id: d.condition for d in raw.dependencies if d.condition},
        )

    def _retry(self, data: Mapping[str, Any], path: str) -> RetryPolicy:
        """Zero and absent mean the defaults, as in the proto."""
        coefficient = float(data.get("backoff_coefficient", 0)) or 2.0
        if coefficient < 1:
            self.problem(
                f"{path}.backoff_coefficient",
                f"must be at least 1 (or 0 for the default 2.0), got {coefficient:g}",
            )
        initial = self._optional_duration(data, "initial_interval", path)
        initial = 1.0 if initial is None else initial
        maximum = self._optional_duration(data, "maximum_interval", path)
        if maximum is not None and maximum < initial:
            self.problem(
                f"{path}.maximum_interval",
                f"{format_duration(maximum)} is shorter than initial_interval "
                f"{format_duration(initial)}",
            )
        return RetryPolicy(
            max_attempts=data.get("max_attempts", 0) or 1,
            initial_interval=initial,
            backoff_coefficient=coefficient,
            maximum_interval=maximum,
            jitter=JitterMode(_JITTER_MODES[data.get("jitter", "")]),
            non_retryable_errors=tuple(data.get("non_retryable_errors", ())),
        )

    def _optional_duration(self, data: Mapping[str, Any], key: str, path: str) -> float | None:
        if key not in data:
            return None
        try:
            return parse_duration(data[key])
        except ValueError as exc:
            self.problem(format_path(path, key), str(exc))
            return None

    def _json_schema(self, data: Mapping[str, Any], key: str, path: str) -> JsonObject | None:
        if key not in data:
            return None
        schema: JsonObject = data[key]
        found = _schema_problem(schema)
        if found is not None:
            where, message = found
            self.problem(format_path(path, key, *where), message)
        return schema

    def _check_references(
        self,
        raw_steps: Sequence[_RawStep],
        steps: Sequence[StepDefinition],
        deps: Mapping[str, Sequence[str]],
        acyclic: bool,
    ) -> None:
        """A step may only read results of steps upstream of it: others may not have run."""
        upstream_of = _upstream_lookup(list(deps), deps, acyclic)
        known = frozenset(deps)
        for raw, step in zip(raw_steps, steps, strict=True):
            scope = _Scope(step.id, upstream_of(step.id), known)
            self._check_parameters(f"{raw.path}.parameters", step.parameters, scope, False)
            if step.compensate is not None:
                # Compensation undoes this step, so it may read this step's own output.
                base = f"{raw.path}.compensate.parameters"
                self._check_parameters(base, step.compensate.parameters, scope, True)
            if step.fallback is not None:
                base = f"{raw.path}.fallback.parameters"
                self._check_parameters(base, step.fallback.parameters, scope, False)
            self._check_expression(f"{raw.path}.when", step.when, scope, report_syntax=True)
            for dependency in raw.dependencies:
                self._check_expression(
                    dependency.condition_path, dependency.condition, scope, report_syntax=False
                )

    def _check_parameters(self, base: str, value: Any, scope: _Scope, allow_self: bool) -> None:
        for segments, text in iter_strings(value):
            path = format_path(base, *segments)
            try:
                references = template_references(text)
            except InvalidReference as exc:
                self.problem(path, exc.reason)
                continue
            for reference in references:
                if reference.step_id is None:
                    continue
                message = _step_reference_problem(reference.step_id, scope, allow_self)
                if message is not None:
                    self.problem(path, f"{reference}: {message}")

    def _check_expression(
        self, path: str, expression: str, scope: _Scope, *, report_syntax: bool
    ) -> None:
        error = compile_condition(expression)
        if error is not None:
            if report_syntax:
                self.problem(path, f"invalid CEL: {error}")
            return
        for step_id in sorted(referenced_steps(expression)):
            message = _step_reference_problem(step_id, scope, allow_self=False)
            if message is not None:
                self.problem(path, f"steps.{step_id}: {message}{_dash_hint(step_id, scope)}")

    def _workflow(self) -> WorkflowDefinition:
        data = self.data
        saved = self._optional_duration(data, "estimated_time_saved", "")
        return WorkflowDefinition(
            id=data["id"],
            steps=(),
            version=data.get("version", 0),
            tenant=data.get("tenant") or DEFAULT_TENANT,
            name=data.get("name", ""),
            description=data.get("description", ""),
            labels=data.get("labels", {}),
            estimated_time_saved=saved or 0.0,
            business_value=float(data.get("business_value", 0.0)),
            input_schema=self._json_schema(data, "input_schema", ""),
            max_concurrent_steps=data.get("max_concurrent_steps", 0),
            timeout=self._optional_duration(data, "timeout", ""),
            on_failure=FailurePolicy(_FAILURE_POLICIES[data.get("on_failure", "")]),
        )


def _dependency_problem(
    owner: str, step_id: str, ids: set[str], earlier: Sequence[str]
) -> str | None:
    if step_id == owner:
        return f"{owner!r} depends on itself"
    if step_id not in ids:
        return f"unknown step {step_id!r}"
    if step_id in earlier:
        return f"duplicate dependency on {step_id!r}"
    return None


def _step_reference_problem(step_id: str, scope: _Scope, allow_self: bool) -> str | None:
    if step_id == scope.owner:
        return None if allow_self else "a step cannot read its own result"
    if step_id not in scope.known:
        return f"unknown step {step_id!r}"
    if step_id not in scope.upstream:
        return (
            f"step {step_id!r} is not upstream of {scope.owner!r}, "
            "so it may not have run (add a dependency)"
        )
    return None


def _dash_hint(step_id: str, scope: _Scope) -> str:
    """In CEL `steps.my-step` is a subtraction; say how to write such ids instead."""
    if step_id in scope.known:
        return ""
    dashed = sorted(known for known in scope.known if known.startswith(f"{step_id}-"))
    return f' (in CEL, write steps["{dashed[0]}"] for ids with "-")' if dashed else ""


def _upstream_lookup(
    ids: Sequence[str], deps: Mapping[str, Sequence[str]], acyclic: bool
) -> Callable[[str], frozenset[str]]:
    """All ancestor sets in one pass when possible; per step (cycle-safe) otherwise."""
    if acyclic:
        return graph.upstream_sets(ids, deps).__getitem__
    return functools.cache(lambda step_id: graph.upstream(step_id, deps))


_KNOWN_DRAFTS: Final = frozenset(
    str(cls.META_SCHEMA.get("$id", cls.META_SCHEMA.get("id", ""))).rstrip("#")
    for cls in (
        jsonschema.Draft4Validator,
        jsonschema.Draft6Validator,
        jsonschema.Draft7Validator,
        jsonschema.Draft201909Validator,
        jsonschema.Draft202012Validator,
    )
)


def _schema_problem(schema: JsonObject) -> tuple[tuple[str | int, ...], str] | None:
    """Where and why `schema` is not a valid JSON Schema of the draft it names."""
    declared = schema.get("$schema")
    if declared is not None and (
        not isinstance(declared, str) or declared.rstrip("#") not in _KNOWN_DRAFTS
    ):
        return ("$schema",), f"unsupported JSON Schema draft {declared!r}"
    try:
        validator_for(schema).check_schema(dict(schema))
    except jsonschema.SchemaError as exc:
        return tuple(exc.absolute_path), f"invalid JSON Schema: {exc.message}"
    return None


def _action_call(data: Mapping[str, Any] | None) -> ActionCall | None:
    if data is None:
        return None
    return ActionCall(action=data["action"], parameters=data.get("parameters", {}))


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

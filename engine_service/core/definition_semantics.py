"""The semantic pass over a definition whose shape the JSON Schema already accepted.

Every semantic rule runs and every problem is reported at once, each with its path.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from engine_service.core import graph
from engine_service.core.conditions import compile_condition, referenced_steps
from engine_service.core.definition_format import (
    Form,
    definition_to_dict,
    format_duration,
    format_path,
    parse_duration,
    parse_failure_policy,
    parse_jitter_mode,
)
from engine_service.core.errors import DefinitionInvalid, InvalidReference, Problem
from engine_service.core.json_schemas import schema_problem
from engine_service.core.model import (
    DEFAULT_TENANT,
    ActionCall,
    JsonObject,
    RetryPolicy,
    StepDefinition,
    WorkflowDefinition,
)
from engine_service.core.references import iter_strings, template_references

if TYPE_CHECKING:
    from engine_service.core.definitions import DefinitionLimits


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
    ancestry: graph.Ancestry
    known: frozenset[str]

    def is_upstream(self, step_id: str) -> bool:
        return self.ancestry.is_upstream(step_id, self.owner)


class SemanticParser:
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
        self._check_cycles(raw_steps, deps)
        steps = [self._step(raw) for raw in raw_steps]
        self._check_references(raw_steps, steps, deps)
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
            self.problem(f"{base}.condition", error)
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

    def _check_cycles(self, raw_steps: Sequence[_RawStep], deps: Mapping[str, list[str]]) -> None:
        """Report one cycle per group of steps caught in one (strongly connected), in
        the order of their first declared members."""
        edge_paths: dict[tuple[str, str], str] = {}
        for raw in raw_steps:
            for dependency in raw.dependencies:
                edge_paths.setdefault((raw.id, dependency.step_id), dependency.path)
        position = {step_id: index for index, step_id in enumerate(deps)}
        groups = [
            group
            for group in graph.strongly_connected(list(deps), deps)
            if len(group) > 1 or group[0] in deps[group[0]]
        ]
        for group in sorted(groups, key=lambda members: position[members[0]]):
            cycle = graph.find_cycle(group, deps)
            if cycle is not None:
                # The edge closing the cycle: its last step depends on the one before it.
                self.problem(edge_paths[(cycle[-1], cycle[-2])], "cycle: " + " -> ".join(cycle))

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
            jitter=parse_jitter_mode(data.get("jitter", "")),
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
        found = schema_problem(schema)
        if found is not None:
            where, message = found
            self.problem(format_path(path, key, *where), message)
        return schema

    def _check_references(
        self,
        raw_steps: Sequence[_RawStep],
        steps: Sequence[StepDefinition],
        deps: Mapping[str, Sequence[str]],
    ) -> None:
        """A step may only read results of steps upstream of it: others may not have run."""
        ancestry = graph.Ancestry(list(deps), deps)
        known = frozenset(deps)
        for raw, step in zip(raw_steps, steps, strict=True):
            scope = _Scope(step.id, ancestry, known)
            calls = [(f"{raw.path}.parameters", ActionCall(step.action, step.parameters))]
            if step.compensate is not None:
                calls.append((f"{raw.path}.compensate.parameters", step.compensate))
            if step.fallback is not None:
                calls.append((f"{raw.path}.fallback.parameters", step.fallback))
            for base, call in calls:
                # Compensation undoes this step, so it may read this step's own output.
                allow_self = base.endswith(".compensate.parameters")
                self._check_parameters(base, call.parameters, scope, allow_self)
                self._check_transform(base, call, scope, allow_self)
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

    def _check_transform(
        self, base: str, call: ActionCall, scope: _Scope, allow_self: bool
    ) -> None:
        """A `transform` whose expression is written out is checked as a condition is;
        one built from references is checked when it runs."""
        expression = call.parameters.get("expression")
        if call.action == "transform" and isinstance(expression, str) and "${" not in expression:
            path = f"{base}.expression"
            self._check_expression(
                path, expression, scope, report_syntax=True, allow_self=allow_self
            )

    def _check_expression(
        self,
        path: str,
        expression: str,
        scope: _Scope,
        *,
        report_syntax: bool,
        allow_self: bool = False,
    ) -> None:
        error = compile_condition(expression)
        if error is not None:
            if report_syntax:
                self.problem(path, error)
            return
        for step_id in sorted(referenced_steps(expression)):
            message = _step_reference_problem(step_id, scope, allow_self)
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
            on_failure=parse_failure_policy(data.get("on_failure", "")),
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
    if not scope.is_upstream(step_id):
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


def _action_call(data: Mapping[str, Any] | None) -> ActionCall | None:
    if data is None:
        return None
    return ActionCall(action=data["action"], parameters=data.get("parameters", {}))

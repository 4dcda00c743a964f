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
import functools
import importlib.resources
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import jsonschema

from engine_service.core import graph
from engine_service.core.definition_format import format_path
from engine_service.core.definition_semantics import SemanticParser
from engine_service.core.errors import DefinitionInvalid, Problem
from engine_service.core.model import WorkflowDefinition

SCHEMA_FILE: Final = "workflow-definition.schema.json"
MAX_ATTEMPTS: Final = 100


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


# -- the entry points ---------------------------------------------------------------------


def parse_definition(
    data: Mapping[str, Any], *, limits: DefinitionLimits = DefinitionLimits()
) -> WorkflowDefinition:
    """A validated definition with steps in topological order, or DefinitionInvalid
    naming every problem."""
    problems = _shape_problems(data, limits)
    if problems:
        raise DefinitionInvalid(problems=problems)
    return SemanticParser(copy.deepcopy(dict(data)), limits).parse()


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

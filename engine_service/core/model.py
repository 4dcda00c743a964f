"""The workflow definition model: immutable values parsed from dicts or protobuf messages.

Durations are seconds as floats; JSON Schemas and parameters are plain JSON values.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

JsonValue = Any
JsonObject = Mapping[str, Any]

DEFAULT_TENANT = "default"


class FailurePolicy(enum.StrEnum):
    STOP = "STOP"
    CONTINUE = "CONTINUE"
    COMPENSATE = "COMPENSATE"


class JitterMode(enum.StrEnum):
    NONE = "NONE"
    FULL = "FULL"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 1
    initial_interval: float = 1.0
    backoff_coefficient: float = 2.0
    maximum_interval: float | None = None
    jitter: JitterMode = JitterMode.NONE
    non_retryable_errors: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ActionCall:
    """A compensation or fallback: an action with its parameters."""

    action: str
    parameters: JsonObject = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StepDefinition:
    id: str
    action: str
    parameters: JsonObject = field(default_factory=dict)
    depends_on: tuple[str, ...] = ()
    when: str = ""
    retry: RetryPolicy = RetryPolicy()
    timeout: float | None = None
    continue_on_error: bool = False
    input_schema: JsonObject | None = None
    output_schema: JsonObject | None = None
    compensate: ActionCall | None = None
    fallback: ActionCall | None = None
    name: str = ""
    description: str = ""
    # Graph form only: dependency id -> CEL condition of the connection from it.
    edge_conditions: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class WorkflowDefinition:
    """A validated workflow; `steps` are in deterministic topological order."""

    id: str
    steps: tuple[StepDefinition, ...]
    version: int = 0
    tenant: str = DEFAULT_TENANT
    name: str = ""
    description: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    estimated_time_saved: float = 0.0
    business_value: float = 0.0
    input_schema: JsonObject | None = None
    max_concurrent_steps: int = 0
    timeout: float | None = None
    on_failure: FailurePolicy = FailurePolicy.STOP
    # The definition as submitted (after defaults), kept for storage and GetWorkflow.
    source: JsonObject = field(default_factory=dict, compare=False)

    def step(self, step_id: str) -> StepDefinition:
        for step in self.steps:
            if step.id == step_id:
                return step
        raise KeyError(step_id)

    @property
    def step_ids(self) -> tuple[str, ...]:
        return tuple(step.id for step in self.steps)

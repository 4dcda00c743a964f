"""A schedule with faults against the fault-free run of the same workflows and commands.

Faults may delay a run but never change how it ends, except through what timing may
legitimately decide: a command (sent earlier or later in the run's life), a workflow
timeout (restarts delay runs; jitter draws differ), a step timeout around a child (how
long a child takes depends on the faults its processes suffer), or a step the engine gave
up on after too many lost attempts. Roots touched by one of those are not compared. A run
that failed is compared by its status only: which steps were cancelled rather than done
depends on timing.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from engine_service.core.model import WorkflowDefinition
from engine_service.core.state import ExecutionState, ExecutionStatus, StepState
from tests.sim.history import SUCCESSFUL, Violation, excerpt
from tests.sim.probe import LOST
from tests.sim.record import Record

ES = ExecutionStatus


def same_outcomes(
    record: Record, reference: Record, definitions: Mapping[str, WorkflowDefinition]
) -> Iterator[Violation]:
    for index in range(len(record.scenario.roots)):
        if not _comparable(record, reference, index, definitions):
            continue
        mine = record.executions[str(record.roots[index])]
        theirs = reference.executions[str(reference.roots[index])]
        differs = mine.status is not theirs.status
        if not differs and mine.status in SUCCESSFUL:
            differs = any(
                mine.steps[s].status is not theirs.steps[s].status
                or (_probe_output(mine.steps[s]) != _probe_output(theirs.steps[s]))
                for s in mine.steps
            )
        if differs:
            steps = ", ".join(
                f"{s} {theirs.steps[s].status} {_probe_output(theirs.steps[s])}->"
                f"{mine.steps[s].status} {_probe_output(mine.steps[s])}"
                for s in mine.steps
                if mine.steps[s].status is not theirs.steps[s].status
                or _probe_output(mine.steps[s]) != _probe_output(theirs.steps[s])
            )
            yield Violation(
                "the-same-outcome-as-without-faults",
                mine.id,
                f"root {index} ended {mine.status}, without faults {theirs.status} ({steps})",
                excerpt(record.events[mine.id]),
            )


def _comparable(
    record: Record, reference: Record, index: int, definitions: Mapping[str, WorkflowDefinition]
) -> bool:
    if any(c.root == index for c in record.scenario.commands):
        return False
    for run in (record, reference):
        root = run.roots[index]
        if not root:
            return False
        for state in _tree(run, root):
            if state.status is ES.TIMED_OUT or _timed_child(definitions.get(state.workflow_id)):
                return False
            if any(_given_up(step) for step in state.steps.values()):
                return False
    return True


def _probe_output(step: StepState) -> Any:
    """A probe's output (what its plan says it returns), not a child's (ids differ)."""
    output = step.output
    return output if isinstance(output, dict) and set(output) == {"v"} else None


def _given_up(step: StepState) -> bool:
    """Failed for having been lost too often: the engine's bound, not timing-free."""
    return step.error is not None and step.error.type == LOST


def _tree(record: Record, root: str) -> list[ExecutionState]:
    found, todo = [], [root]
    while todo:
        current = record.executions.get(todo.pop())
        if current is None:
            continue
        found.append(current)
        todo += [s.id for s in record.executions.values() if s.parent_execution_id == current.id]
    return found


def _timed_child(definition: WorkflowDefinition | None) -> bool:
    """A step timeout around a child: when it fires depends on the child's processes."""
    if definition is None:
        return False
    return any(
        step.timeout is not None
        and "workflow" in {step.action, *(c.action for c in (step.fallback, step.compensate) if c)}
        for step in definition.steps
    )

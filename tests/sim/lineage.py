"""The invariants between a parent execution and its children.

Each child is the one its step, fallback or compensation asked for, and is started no
more often than the step had attempts (a re-run of a lost attempt takes the lost one's
child over); a child success the parent recorded is real; a child is cancelled only for
a cause its parent's history shows (an ending, a stopped attempt, a cancel sent), never
because the parent's process stopped; and a parent that failed, timed out or was
cancelled leaves no child running on.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from engine_service.core.model import ActionCall, WorkflowDefinition
from engine_service.core.state import EventKind, ExecutionState, ExecutionStatus, StepStatus
from tests.sim.history import EPSILON, SUCCESSFUL, Violation, excerpt, read, seconds
from tests.sim.record import Record

ES = ExecutionStatus
SS = StepStatus


class Lineage:
    def __init__(self, record: Record, definitions: Mapping[str, WorkflowDefinition]) -> None:
        self.record = record
        self.definitions = definitions
        self.children: dict[str, list[ExecutionState]] = {}
        for state in record.executions.values():
            if state.parent_execution_id:
                self.children.setdefault(state.parent_execution_id, []).append(state)
        self.cancelled = {c.target for c in record.commands if c.kind == "cancel"}

    def check(self, parent: ExecutionState, definition: WorkflowDefinition) -> Iterator[Violation]:
        children = self.children.get(parent.id, [])
        yield from self._named_children(parent, definition, children)
        yield from self._counts(parent, definition, children)
        for child in children:
            yield from self._cancelled_for_a_cause(parent, child)
            yield from self._follows_the_ending(parent, child)

    def _named_children(
        self, parent: ExecutionState, definition: WorkflowDefinition, children: list[ExecutionState]
    ) -> Iterator[Violation]:
        events = self.record.events[parent.id]
        by_id = {c.id: c for c in children}
        for event in events:
            if not event.child_execution_id:
                continue
            child = by_id.get(event.child_execution_id)
            step = definition.step(event.step_id)
            handler = {
                EventKind.STEP_FALLBACK_FINISHED: step.fallback,
                EventKind.STEP_COMPENSATION_FINISHED: step.compensate,
            }.get(event.kind)
            wanted = (handler.parameters if handler else step.parameters).get("workflow_id")
            if child is None or child.workflow_id != wanted:
                got = child.workflow_id if child else "no such child"
                yield Violation(
                    "each-handler-runs-its-own-child",
                    parent.id,
                    f"{event.step_id} {event.kind.name} names child "
                    f"{event.child_execution_id[:8]} ({got}), but {wanted} was asked for",
                    excerpt(events, event.sequence - 1),
                )
            elif event.step_status is SS.COMPLETED and (
                child.status not in SUCCESSFUL
                or child.finished_at is None
                or child.finished_at > event.timestamp
            ):
                yield Violation(
                    "a-child-success-is-real",
                    parent.id,
                    f"{event.step_id} took child {child.id[:8]} as done, but it is {child.status}",
                )

    def _counts(
        self, parent: ExecutionState, definition: WorkflowDefinition, children: list[ExecutionState]
    ) -> Iterator[Violation]:
        reading = read(definition, self.record.events[parent.id])
        for step in definition.steps:
            mine = [c for c in children if c.parent_step_id == step.id]
            for label, call, limit in (
                ("fallback", step.fallback, 1),
                ("compensation", step.compensate, 1),
                (
                    "attempts",
                    ActionCall(step.action, step.parameters),
                    reading.fresh.get(step.id, 0),
                ),
            ):
                if call is None or call.action != "workflow":
                    continue
                started = [c for c in mine if c.workflow_id == call.parameters.get("workflow_id")]
                if len(started) > limit:
                    yield Violation(
                        "a-child-starts-once",
                        parent.id,
                        f"{step.id}'s {label} started {len(started)} children, "
                        f"at most {limit} expected",
                        excerpt(self.record.events[parent.id]),
                    )

    def _cancelled_for_a_cause(
        self, parent: ExecutionState, child: ExecutionState
    ) -> Iterator[Violation]:
        if child.status is not ES.CANCELLED or child.id in self.cancelled:
            return
        cause = self._cause(parent, child.parent_step_id)
        at = seconds(child.finished_at)
        if cause is None or at < cause - EPSILON:
            yield Violation(
                "only-a-parent-ending-cancels-a-child",
                child.id,
                f"child of {parent.id[:8]}/{child.parent_step_id} was cancelled at t={at:g}, "
                f"but its parent gave no cause by then (first cause at t={cause})",
                excerpt(self.record.events[parent.id]),
            )

    def _follows_the_ending(
        self, parent: ExecutionState, child: ExecutionState
    ) -> Iterator[Violation]:
        if parent.status in SUCCESSFUL or not parent.finished_at or child.status is ES.CANCELLED:
            return
        ended = seconds(parent.finished_at)
        # The cascade reaches a child driven elsewhere at that process's next lease round.
        reach = ended + self.record.scenario.lease[1] + EPSILON
        late = [
            e
            for e in self.record.events[child.id]
            if e.step_status is SS.RUNNING and seconds(e.timestamp) > reach
        ]
        finished = seconds(child.finished_at)
        decided = self._decided(child)  # its own ending, kept over the cascade's cancel
        ran_on = finished > reach and (decided is None or decided > reach)
        if (ran_on or late) and self._quiet(ended, finished):
            yield Violation(
                "children-follow-their-parents-ending",
                child.id,
                f"parent {parent.id[:8]} ended {parent.status} at t={ended:g}; the child ran on "
                f"to t={finished:g} and ended {child.status}",
                excerpt(self.record.events[child.id]),
            )

    def _decided(self, execution: ExecutionState) -> float | None:
        """When the execution's ending was decided (a fatal failure, a step cancelled)."""
        definition = self.definitions.get(execution.workflow_id)
        if definition is None:
            return None
        events = self.record.events[execution.id]
        reading = read(definition, events)
        found = [
            seconds(events[i].timestamp)
            for i in (reading.fatal, reading.cancelled)
            if i is not None
        ]
        return min(found, default=None)

    def _cause(self, parent: ExecutionState, step_id: str) -> float | None:
        """When the parent first gave its children (of `step_id`) a reason to be cancelled."""
        events = self.record.events[parent.id]
        reading = read(self.definitions[parent.workflow_id], events)
        times = [
            c.issued for c in self.record.commands if c.kind == "cancel" and c.target == parent.id
        ]
        times += [
            seconds(events[i].timestamp)
            for i in (reading.fatal, reading.cancelled)
            if i is not None
        ]
        if parent.status.is_terminal and parent.status not in SUCCESSFUL:
            times.append(seconds(parent.finished_at))
        timeout = self.definitions[parent.workflow_id].timeout
        if parent.status is ES.TIMED_OUT and timeout is not None and parent.started_at:
            # The deadline decides the ending by itself, recorded or not yet.
            times.append(seconds(parent.started_at) + timeout)
        times += [  # the attempt (or handler) that waited for the child was stopped
            seconds(e.timestamp)
            for e in events
            if e.step_id == step_id
            and (
                e.step_status in (SS.TIMED_OUT, SS.CANCELLED)
                or (e.error is not None and e.error.type == "TimeoutError")
            )
        ]
        grandparent = self.record.executions.get(parent.parent_execution_id)
        if grandparent is not None and parent.status is ES.CANCELLED:
            above = self._cause(grandparent, parent.parent_step_id)
            if above is not None:
                times.append(above)
        return min(times, default=None)

    def _quiet(self, start: float, end: float) -> bool:
        """No fault struck, and no process was partitioned or cut off, in [start, end]."""
        if any(start - EPSILON <= t <= end + EPSILON for t, _ in self.record.fault_log):
            return False
        return not any(
            fault.kind in ("partition", "outage", "stall")
            and fault.at <= end
            and fault.at + fault.seconds >= start
            for fault in self.record.faults
        )

"""The invariants checked after every schedule.

Per execution: its history is gap-free and replays to the stored state; nothing starts
after a fatal failure or a step's CANCELLED (the ending was decided), and a decided
ending is the one the run gets; lost attempts do not use the retry budget; a failed step
with a fallback gets its fallback before the run succeeds; the workflow timeout fires.
Per command: a cancel that was answered, or applied, ends the run CANCELLED, and nothing
starts after a cancel the driving process accepted. Between parents and children, see
`tests.sim.lineage`; against the fault-free run, `tests.sim.compare`; what the probes saw
as actions started, `tests.sim.probe`.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping

from engine_service.core.commands import CommandKind, CommandOutcome
from engine_service.core.engine import EngineConfig
from engine_service.core.errors import IllegalTransition
from engine_service.core.model import WorkflowDefinition
from engine_service.core.state import (
    FAILED_STEP_STATUSES,
    EventKind,
    ExecutionState,
    ExecutionStatus,
    StepStatus,
    blank,
    replay,
)
from tests.sim.compare import same_outcomes
from tests.sim.history import (
    EPSILON,
    SUCCESSFUL,
    Violation,
    excerpt,
    expected_attempt_rows,
    is_lost,
    read,
    seconds,
)
from tests.sim.lineage import Lineage
from tests.sim.probe import LOST
from tests.sim.record import CommandLog, Record
from tests.sim.workflows import Scenario, parsed_definitions

ES = ExecutionStatus
SS = StepStatus
# The failures the engine retries: the probes' planned ones, timeouts, a failed child.
RETRYABLE = frozenset({"Boom", "TimeoutError", "ChildWorkflowFailed"})
# What a command may answer besides its outcome: errors the transport maps to a code that
# tells the client to retry (UNAVAILABLE, ABORTED).
RETRY_LATER = ("raised StorageError", "raised ConcurrentModification")
# Lost attempts a step may have before the engine gives up on it (EngineConfig's bound).
LOST_LIMIT = int(getattr(EngineConfig(), "max_lost_attempts", 3))


def _definitions(scenario: Scenario) -> Mapping[str, WorkflowDefinition]:
    return {
        k: v for k, v in parsed_definitions(scenario).items() if isinstance(v, WorkflowDefinition)
    }


def check(record: Record, reference: Record | None = None) -> list[Violation]:
    found = [Violation(name, "", detail) for name, detail in record.problems]
    found += [
        Violation(b.invariant, b.execution_id, f"step {b.step_id}: {b.detail}")
        for b in record.ledger.breaches
    ]
    checker = _Checker(record)
    for state in record.executions.values():
        found += checker.execution(state)
    found += checker.commands()
    if reference is not None:
        found += same_outcomes(record, reference, checker.definitions)
    return found


class _Checker:
    def __init__(self, record: Record) -> None:
        self.record = record
        self.definitions = _definitions(record.scenario)
        self.lineage = Lineage(record, self.definitions)

    def execution(self, state: ExecutionState) -> list[Violation]:
        definition = self.definitions.get(state.workflow_id)
        if definition is None:
            return []
        found = list(self._history(state))
        if found:
            return found  # the rest reads the history: it must be sound first
        if not state.status.is_terminal:
            events = self.record.events[state.id]
            found.append(
                Violation("every-execution-ends", state.id, f"left {state.status}", excerpt(events))
            )
        found += self._ending(state, definition)
        found += self._attempts(state, definition)
        found += self._timeout(state, definition)
        found += self._attempt_rows(state)
        found += self.lineage.check(state, definition)
        return found

    # ---- one execution ---------------------------------------------------------------

    def _history(self, state: ExecutionState) -> Iterator[Violation]:
        events = self.record.events[state.id]
        if [e.sequence for e in events] != list(range(1, len(events) + 1)):
            numbers = [e.sequence for e in events]
            yield Violation("histories-are-gap-free", state.id, f"sequences {numbers}")
            return
        try:
            replayed = replay(blank(state), events)
        except IllegalTransition as exc:
            yield Violation("histories-replay", state.id, str(exc), excerpt(events))
            return
        if replayed != state:
            yield Violation(
                "histories-replay", state.id, "the replayed state differs from the stored one"
            )

    def _ending(self, state: ExecutionState, definition: WorkflowDefinition) -> Iterator[Violation]:
        events = self.record.events[state.id]
        reading = read(definition, events)
        for name, decided in (
            ("a-fatal-failure", reading.fatal),
            ("a-step-cancelled", reading.cancelled),
        ):
            if decided is None:
                continue
            late = [
                e
                for e in events[decided + 1 :]
                if e.kind is EventKind.STEP_STATUS_CHANGED and e.step_status is SS.RUNNING
            ]
            if late:
                yield Violation(
                    f"nothing-starts-after-{name}",
                    state.id,
                    f"{late[0].step_id} started after #{decided + 1}",
                    excerpt(events, decided),
                )
            if state.status in SUCCESSFUL:
                yield Violation(
                    "a-decided-ending-is-kept",
                    state.id,
                    f"{name} at #{decided + 1}, yet the run ended {state.status}",
                    excerpt(events, decided),
                )
        if state.status in SUCCESSFUL:
            for step in definition.steps:
                current = state.steps[step.id]
                if (
                    step.fallback is not None
                    and current.status in FAILED_STEP_STATUSES
                    and current.attempt > 0
                    and not current.fallback_used
                ):
                    yield Violation(
                        "a-failed-step-gets-its-fallback",
                        state.id,
                        f"{step.id} ended {current.status} without its fallback, "
                        f"the run {state.status}",
                        excerpt(events),
                    )

    def _attempts(
        self, state: ExecutionState, definition: WorkflowDefinition
    ) -> Iterator[Violation]:
        events = self.record.events[state.id]
        reading = read(definition, events)
        for step in definition.steps:
            attempts = reading.running.get(step.id, [])
            if any(b <= a for a, b in itertools.pairwise(attempts)):
                yield Violation("attempt-numbers-increase", state.id, f"{step.id}: {attempts}")
            current = state.steps[step.id]
            failures = [
                e
                for e in events
                if e.step_id == step.id
                and e.kind is EventKind.STEP_STATUS_CHANGED
                and e.step_status in FAILED_STEP_STATUSES
                and e.attempt > 0
                and not is_lost(e)
            ]
            if len(failures) > step.retry.max_attempts:
                yield Violation(
                    "attempts-stay-within-the-budget",
                    state.id,
                    f"{step.id}: {len(failures)} failed attempts, "
                    f"max_attempts {step.retry.max_attempts}",
                )
            if current.status not in FAILED_STEP_STATUSES or current.fallback_used or not failures:
                continue
            error = current.error
            if error is not None and error.type == LOST:
                lost = reading.lost.get(step.id, 0)
                if lost <= LOST_LIMIT:
                    yield Violation(
                        "a-restart-alone-never-fails-a-step",
                        state.id,
                        f"{step.id} FAILED with EngineRestarted after {lost} lost attempts",
                        excerpt(events),
                    )
                continue
            retryable = (
                error is not None
                and error.type in RETRYABLE
                and error.type not in step.retry.non_retryable_errors
            )
            if retryable and len(failures) < step.retry.max_attempts:
                yield Violation(
                    "lost-attempts-do-not-use-the-retry-budget",
                    state.id,
                    f"{step.id} ended {current.status} after {len(failures)} real failures of "
                    f"max_attempts {step.retry.max_attempts} ({reading.lost.get(step.id, 0)} lost)",
                    excerpt(events),
                )

    def _timeout(
        self, state: ExecutionState, definition: WorkflowDefinition
    ) -> Iterator[Violation]:
        if definition.timeout is None or state.started_at is None or state.finished_at is None:
            return
        events = self.record.events[state.id]
        started = seconds(state.started_at)
        deadline = started + definition.timeout
        if state.status is ES.TIMED_OUT:
            if seconds(state.finished_at) < deadline - EPSILON:
                yield Violation(
                    "the-workflow-timeout-fires-on-time",
                    state.id,
                    f"TIMED_OUT at t={seconds(state.finished_at):g}, "
                    f"before the deadline t={deadline:g}",
                )
            return
        reading = read(definition, events)
        if state.status in SUCCESSFUL and len(events) >= 2:
            decided = seconds(events[-2].timestamp)
        elif state.status is ES.FAILED and reading.fatal is not None:
            decided = seconds(events[reading.fatal].timestamp)
        else:
            return
        if decided > deadline + EPSILON:
            yield Violation(
                "the-workflow-timeout-fires",
                state.id,
                f"deadline t={deadline:g}, but the run went on to t={decided:g} "
                f"and ended {state.status}",
                excerpt(events),
            )

    def _attempt_rows(self, state: ExecutionState) -> Iterator[Violation]:
        """One `step_attempts` row per attempt, fallback and compensation, each with its
        own outcome (read independently of the store's own bookkeeping)."""
        stored = self.record.attempt_rows
        if stored is None:
            return
        mine = {key[1:]: status for key, status in stored.items() if key[0] == state.id}
        expected = expected_attempt_rows(self.record.events[state.id])
        if mine != expected:
            wrong = sorted(
                f"{step}#{attempt} {kind}: {mine.get((step, attempt, kind))} "
                f"(history: {expected.get((step, attempt, kind))})"
                for step, attempt, kind in mine.keys() | expected.keys()
                if mine.get((step, attempt, kind)) != expected.get((step, attempt, kind))
            )
            yield Violation(
                "step-attempts-rows-match-the-history",
                state.id,
                "; ".join(wrong),
                excerpt(self.record.events[state.id]),
            )

    # ---- commands ----------------------------------------------------------------------

    def commands(self) -> Iterator[Violation]:
        for command in self.record.commands:
            final = self.record.executions.get(command.target)
            if final is None:
                continue
            if command.kind == "cancel" and command.result.startswith("returned"):
                if command.status is not ES.CANCELLED or final.status is not ES.CANCELLED:
                    yield Violation(
                        "an-answered-cancel-ends-cancelled",
                        command.target,
                        f"cancel sent to {command.process} at t={command.issued:g} returned "
                        f"{command.status}; the run ended {final.status}",
                        excerpt(self.record.events[command.target]),
                    )
                elif command.local:
                    accepted = self._accepted(command)
                    yield from self._nothing_starts_after_cancel(command.target, accepted)
            if command.result.startswith("raised") and not command.result.startswith(RETRY_LATER):
                yield Violation(
                    "commands-answer-cleanly",
                    command.target,
                    f"{command.kind} sent to {command.process} at t={command.issued:g} "
                    f"{command.result}",
                )
        for stored in self.record.stored_commands:
            final = self.record.executions.get(stored.execution_id)
            if (
                stored.kind is CommandKind.CANCEL
                and stored.outcome is CommandOutcome.APPLIED
                and final is not None
                and final.status is not ES.CANCELLED
            ):
                yield Violation(
                    "an-applied-cancel-ends-cancelled",
                    stored.execution_id,
                    f"the cancel command was recorded APPLIED; the run ended {final.status}",
                    excerpt(self.record.events[stored.execution_id]),
                )

    def _accepted(self, command: CommandLog) -> float:
        """When a cancel took effect: once the process it was sent to stored it (the
        engine stores a cancel first: a slow store delays it), else when it was sent."""
        stored = []
        for c in self.record.stored_commands:
            at, tag = self.record.command_stored[c.id]
            if (
                c.execution_id == command.target
                and c.kind is CommandKind.CANCEL
                and tag == command.process
                and at >= command.issued
            ):
                stored.append(at)
        return min(stored, default=command.issued)

    def _nothing_starts_after_cancel(self, execution_id: str, issued: float) -> Iterator[Violation]:
        events = self.record.events[execution_id]
        late = [
            e
            for e in events
            if e.step_status is SS.RUNNING and seconds(e.timestamp) > issued + EPSILON
        ]
        if late:
            yield Violation(
                "nothing-starts-after-an-accepted-cancel",
                execution_id,
                f"{late[0].step_id} started at t={seconds(late[0].timestamp):g}, "
                f"after the cancel took effect at t={issued:g}",
                excerpt(events, late[0].sequence - 1),
            )

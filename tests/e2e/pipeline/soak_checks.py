"""What the process-fault test checks once every execution has ended.

Histories are read back through the engine's own API (ListExecutions, GetExecution,
WatchExecution from sequence 0) and, for the sequences, from its database as well. Each
check returns the violations it found rather than stopping at the first, so a failing
run reports all of them.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg
from stepstream.v1 import analytics_pb2, analytics_pb2_grpc, engine_pb2, engine_pb2_grpc, events_pb2

from tests.integration.engine.helpers import watch_all

STEP_CHANGED = events_pb2.EVENT_KIND_STEP_STATUS_CHANGED
EXECUTION_CHANGED = events_pb2.EVENT_KIND_EXECUTION_STATUS_CHANGED
RUNNING = events_pb2.STEP_STATUS_RUNNING
COMPLETED = events_pb2.STEP_STATUS_COMPLETED
# What analytics counts as a finished attempt (its facts).
FINISHED_STEP = frozenset(
    events_pb2.StepStatus.Value(f"STEP_STATUS_{s}")
    for s in ("COMPLETED", "FAILED", "TIMED_OUT", "SKIPPED", "CANCELLED")
)
TERMINAL = frozenset(
    events_pb2.ExecutionStatus.Value(f"EXECUTION_STATUS_{s}")
    for s in ("COMPLETED", "COMPLETED_WITH_ERRORS", "FAILED", "CANCELLED", "TIMED_OUT")
)


def execution_status_name(value: int) -> str:
    return events_pb2.ExecutionStatus.Name(value).removeprefix("EXECUTION_STATUS_")  # type: ignore[arg-type]


def step_status_name(value: int) -> str:
    return events_pb2.StepStatus.Name(value).removeprefix("STEP_STATUS_")  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class History:
    execution: engine_pb2.Execution
    events: list[events_pb2.ExecutionEvent]


async def every_execution(
    stub: engine_pb2_grpc.EngineServiceAsyncStub,
) -> list[engine_pb2.Execution]:
    """Every execution the engine holds, sub-workflow children included."""
    found: list[engine_pb2.Execution] = []
    token = ""
    for _ in range(1000):
        reply = await stub.ListExecutions(
            engine_pb2.ListExecutionsRequest(page_size=200, page_token=token)
        )
        found.extend(reply.executions)
        token = reply.next_page_token
        if not token:
            return found
    raise AssertionError("ListExecutions never ended")


async def read_histories(
    stub: engine_pb2_grpc.EngineServiceAsyncStub, ids: Iterable[str]
) -> dict[str, History]:
    histories = {}
    for execution_id in ids:
        reply = await stub.GetExecution(engine_pb2.GetExecutionRequest(execution_id=execution_id))
        histories[execution_id] = History(reply.execution, await watch_all(stub, execution_id))
    return histories


def history_violations(history: History) -> list[str]:
    """Gap-free from 1, ends with the execution's terminal status, and no step ran again
    once it had completed (each attempt started once, one COMPLETED at most)."""
    execution = history.execution
    events = history.events
    problems = []
    sequences = [e.sequence for e in events]
    if sequences != list(range(1, len(events) + 1)):
        problems.append(f"{execution.id}: sequences are not 1..{len(events)}: {sequences}")
    if execution.status not in TERMINAL:
        problems.append(f"{execution.id}: never ended ({execution_status_name(execution.status)})")
    last = events[-1] if events else None
    if last is None or last.kind != EXECUTION_CHANGED or last.execution_status != execution.status:
        problems.append(f"{execution.id}: the history does not end with its final status")
    return problems + _step_violations(execution.id, events)


def _step_violations(execution_id: str, events: list[events_pb2.ExecutionEvent]) -> list[str]:
    problems = []
    completed: Counter[str] = Counter()
    attempts: dict[str, list[int]] = defaultdict(list)
    for event in events:
        if event.kind != STEP_CHANGED:
            continue
        if event.step_status == RUNNING:
            if completed[event.step_id]:
                problems.append(
                    f"{execution_id}/{event.step_id}: RUNNING (attempt {event.attempt}, "
                    f"sequence {event.sequence}) after it COMPLETED"
                )
            attempts[event.step_id].append(event.attempt)
        if event.step_status == COMPLETED:
            completed[event.step_id] += 1
    for step_id, count in completed.items():
        if count != 1:
            problems.append(f"{execution_id}/{step_id}: COMPLETED {count} times")
    for step_id, numbers in attempts.items():
        if numbers != list(range(1, len(numbers) + 1)):
            problems.append(f"{execution_id}/{step_id}: attempts started as {numbers}")
    return problems


async def database_sequence_violations(connection: asyncpg.Connection) -> list[str]:
    """From the engine's tables: each execution's events are 1..last_sequence."""
    rows = await connection.fetch(
        """
        SELECT x.id, x.last_sequence, count(e.sequence) AS events,
               coalesce(min(e.sequence), 0) AS first, coalesce(max(e.sequence), 0) AS last
        FROM executions x LEFT JOIN execution_events e ON e.execution_id = x.id
        GROUP BY x.id, x.last_sequence
        """
    )
    return [
        f"{row['id']}: stored events {row['first']}..{row['last']} ({row['events']}), "
        f"last_sequence {row['last_sequence']}"
        for row in rows
        if not (row["first"] == 1 and row["last"] == row["events"] == row["last_sequence"])
    ]


@dataclass
class Tally:
    """Finished executions by (workflow, status) and finished step attempts by
    (workflow, step, status), with retries (finished attempts after the first)."""

    executions: Counter[tuple[str, str]] = field(default_factory=Counter)
    attempts: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    retries: Counter[tuple[str, str]] = field(default_factory=Counter)
    # Finished attempts by (workflow, step), whatever their status.
    finished: Counter[tuple[str, str]] = field(default_factory=Counter)

    @property
    def workflows(self) -> list[str]:
        return sorted({w for w, _ in self.executions} | {w for w, _, _ in self.attempts})

    def steps(self, workflow_id: str) -> list[str]:
        return sorted({s for w, s, _ in self.attempts if w == workflow_id})

    def total_attempts(self) -> int:
        return sum(self.attempts.values())


def engine_tally(histories: Iterable[History]) -> Tally:
    tally = Tally()
    for history in histories:
        for event in history.events:
            workflow_id = event.workflow_id
            if event.kind == EXECUTION_CHANGED and event.execution_status in TERMINAL:
                tally.executions[(workflow_id, execution_status_name(event.execution_status))] += 1
            if event.kind == STEP_CHANGED and event.step_status in FINISHED_STEP:
                status = step_status_name(event.step_status)
                tally.attempts[(workflow_id, event.step_id, status)] += 1
                tally.finished[(workflow_id, event.step_id)] += 1
                if max(event.attempt, 1) > 1:
                    tally.retries[(workflow_id, event.step_id)] += 1
    return tally


def _window() -> analytics_pb2.TimeRange:
    now = datetime.now(UTC)
    window = analytics_pb2.TimeRange()
    window.start.FromDatetime(now - timedelta(hours=1))
    window.end.FromDatetime(now + timedelta(hours=1))
    return window


EXECUTION_FIELDS = {
    "COMPLETED": "completed",
    "COMPLETED_WITH_ERRORS": "completed_with_errors",
    "FAILED": "failed",
    "CANCELLED": "cancelled",
    "TIMED_OUT": "timed_out",
}
STEP_FIELDS = {
    "COMPLETED": "completed",
    "FAILED": "failed",
    "TIMED_OUT": "timed_out",
    "SKIPPED": "skipped",
    "CANCELLED": "cancelled",
}


async def analytics_tally(
    stub: analytics_pb2_grpc.AnalyticsServiceAsyncStub, workflows: Iterable[str]
) -> tuple[Tally, int, int]:
    """The same figures as analytics answers them (GetWorkflowMetrics, GetStepMetrics),
    with its executions total (GetSystemOverview) and per-workflow retry total."""
    window = _window()
    tally = Tally()
    retries_by_workflow = 0
    for workflow_id in workflows:
        metrics = (
            await stub.GetWorkflowMetrics(
                analytics_pb2.GetWorkflowMetricsRequest(workflow_id=workflow_id, range=window)
            )
        ).metrics
        for status, name in EXECUTION_FIELDS.items():
            if getattr(metrics, name):
                tally.executions[(workflow_id, status)] = getattr(metrics, name)
        retries_by_workflow += metrics.retries
        steps = await stub.GetStepMetrics(
            analytics_pb2.GetStepMetricsRequest(workflow_id=workflow_id, range=window)
        )
        for step in steps.steps:
            for status, name in STEP_FIELDS.items():
                if getattr(step, name):
                    tally.attempts[(workflow_id, step.step_id, status)] = getattr(step, name)
            if step.retries:
                tally.retries[(workflow_id, step.step_id)] = step.retries
            if step.attempts:
                tally.finished[(workflow_id, step.step_id)] = step.attempts
    overview = await stub.GetSystemOverview(analytics_pb2.GetSystemOverviewRequest(range=window))
    return tally, overview.executions, retries_by_workflow


def tally_differences(engine: Tally, analytics: Tally) -> list[str]:
    problems = []
    for name in ("executions", "attempts", "retries", "finished"):
        ours: Counter[tuple[str, ...]] = getattr(engine, name)
        theirs: Counter[tuple[str, ...]] = getattr(analytics, name)
        for key in sorted(set(ours) | set(theirs)):
            if ours[key] != theirs[key]:
                problems.append(
                    f"{name} {'/'.join(key)}: engine {ours[key]}, analytics {theirs[key]}"
                )
    return problems


def describe(history: History) -> str:
    """One line per event: what a finding needs to show."""
    execution = history.execution
    lines = [
        f"execution {execution.id} {execution.workflow_id} "
        f"{execution_status_name(execution.status)} parent={execution.parent_execution_id} "
        f"key={execution.idempotency_key} created={execution.created_at.ToJsonString()}"
    ]
    for e in history.events:
        what = (
            step_status_name(e.step_status)
            if e.kind == STEP_CHANGED
            else execution_status_name(e.execution_status)
        )
        lines.append(
            f"  {e.sequence:4} {e.timestamp.ToJsonString()} {e.step_id or '-':6} {what:10} "
            f"attempt={e.attempt} {e.error.type} {e.child_execution_id}"
        )
    return "\n".join(lines)

"""GetExecution(at_sequence=N) against what a live watch of the same run reported.

The run is watched through RunAndWatch and paused and resumed midway. Afterwards, for every
event the stream delivered, the state rebuilt at that event's sequence must agree with what
the stream had said by then: the execution's status, each step's status, attempt and
output. The snapshots the server returned live (RunAndWatch's first message, the Pause and
Resume responses) must equal the rebuilt states at their sequences field for field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from google.protobuf import struct_pb2
from stepstream.v1 import engine_pb2, events_pb2

from tests.integration.engine.conftest import Harness
from tests.integration.engine.helpers import (
    EOF,
    bad_fields,
    bounded,
    definition,
    execution_status,
    register,
    rpc_error,
    step_status,
    struct,
)

STEP_EVENT = events_pb2.EventKind.Value("EVENT_KIND_STEP_STATUS_CHANGED")
EXECUTION_EVENT = events_pb2.EventKind.Value("EVENT_KIND_EXECUTION_STATUS_CHANGED")
WORKFLOW: dict[str, Any] = {
    "id": "history",
    "steps": [
        {"id": "greet", "action": "echo", "parameters": {"n": "${inputs.n}"}},
        {
            "id": "flaky",
            "action": "fail",
            "parameters": {"times": 1},
            "retry": {"max_attempts": 2, "initial_interval": "0.01s"},
        },
        {"id": "skipped", "action": "noop", "when": "inputs.n > 100"},
        {
            "id": "slow",
            "action": "delay",
            "parameters": {"seconds": 0.5},
            "depends_on": ["greet", "flaky"],
        },
        {
            "id": "last",
            "action": "echo",
            "parameters": {"slept": "${steps.slow.output.slept}"},
            "depends_on": ["slow"],
        },
    ],
}


@dataclass
class StepReport:
    """The last thing the stream said about one step."""

    status: int
    attempt: int
    output: struct_pb2.Struct


@dataclass
class LiveRun:
    """Everything the client saw while the execution ran."""

    events: list[events_pb2.ExecutionEvent] = field(default_factory=list)
    snapshots: list[engine_pb2.Execution] = field(default_factory=list)


async def test_states_at_each_sequence_agree_with_the_live_watch(harness: Harness) -> None:
    await register(harness.stub, definition(WORKFLOW))
    live = await bounded(_run_pausing_midway(harness))
    sequences = [e.sequence for e in live.events]
    assert sequences == list(range(1, len(sequences) + 1)), "the stream is gap-free"
    assert live.events[-1].execution_status == execution_status("COMPLETED")
    execution_id = live.snapshots[0].id
    said: dict[str, StepReport] = {}
    status = execution_status("UNSPECIFIED")
    for event in live.events:
        if event.kind == EXECUTION_EVENT:
            status = event.execution_status
        elif event.kind == STEP_EVENT:
            said[event.step_id] = StepReport(event.step_status, event.attempt, event.output)
        past = await _at(harness, execution_id, event.sequence)
        assert past.last_sequence == event.sequence
        assert past.status == status, event.sequence
        _assert_steps_agree(past, said, event.sequence)
    for snapshot in live.snapshots:
        rebuilt = await _at(harness, execution_id, snapshot.last_sequence)
        assert _steps_sorted(rebuilt) == _steps_sorted(snapshot)
    assert said["skipped"].status == step_status("SKIPPED")
    assert said["flaky"].attempt == 2, "the retry is part of the history"
    assert said["last"].output == struct({"slept": 0.5})


async def test_the_last_sequence_is_the_current_state_and_beyond_it_is_invalid(
    harness: Harness,
) -> None:
    await register(harness.stub, definition(WORKFLOW))
    live = await bounded(_run_pausing_midway(harness))
    execution_id = live.snapshots[0].id
    last = live.events[-1].sequence
    current = await harness.stub.GetExecution(
        engine_pb2.GetExecutionRequest(execution_id=execution_id)
    )
    assert await _at(harness, execution_id, last) == current.execution
    assert current.execution.status == execution_status("COMPLETED")
    for beyond in (last + 1, 10**9):
        request = engine_pb2.GetExecutionRequest(execution_id=execution_id, at_sequence=beyond)
        error = await rpc_error(harness.stub.GetExecution(request))
        assert bad_fields(error) == ["at_sequence"]
        assert str(last) in (error.details() or "")


async def _run_pausing_midway(harness: Harness) -> LiveRun:
    """Run the workflow through RunAndWatch; pause while `slow` runs, resume once it ends."""
    start = engine_pb2.StartExecutionRequest(workflow_id="history", inputs=struct({"n": 7}))
    call = harness.stub.RunAndWatch(engine_pb2.RunAndWatchRequest(start=start))
    live = LiveRun()
    paused = False
    message: Any
    while (message := await call.read()) is not EOF:
        if message.HasField("execution"):
            live.snapshots.append(message.execution)
            continue
        for event in message.batch.events:
            live.events.append(event)
            if _is(event, "slow", "RUNNING") and not paused:
                live.snapshots.append(await _command(harness, event.execution_id, pause=True))
                paused = True
            elif _is(event, "slow", "COMPLETED"):
                live.snapshots.append(await _command(harness, event.execution_id, pause=False))
    assert len(live.snapshots) == 3, "the run was paused and resumed"
    assert live.snapshots[1].status == execution_status("PAUSED")
    return live


async def _command(harness: Harness, execution_id: str, *, pause: bool) -> engine_pb2.Execution:
    if pause:
        request = engine_pb2.PauseExecutionRequest(execution_id=execution_id)
        return (await harness.stub.PauseExecution(request)).execution
    resume = engine_pb2.ResumeExecutionRequest(execution_id=execution_id)
    return (await harness.stub.ResumeExecution(resume)).execution


def _is(event: events_pb2.ExecutionEvent, step_id: str, status: str) -> bool:
    return (
        event.kind == STEP_EVENT
        and event.step_id == step_id
        and event.step_status == step_status(status)
    )


async def _at(harness: Harness, execution_id: str, sequence: int) -> engine_pb2.Execution:
    request = engine_pb2.GetExecutionRequest(execution_id=execution_id, at_sequence=sequence)
    return (await harness.stub.GetExecution(request)).execution


def _steps_sorted(execution: engine_pb2.Execution) -> engine_pb2.Execution:
    """The execution with its steps by id: their order is not part of the state.

    (States read back from Postgres list steps in jsonb key order, live ones in the
    definition's order.)
    """
    copy = engine_pb2.Execution()
    copy.CopyFrom(execution)
    del copy.steps[:]
    copy.steps.extend(sorted(execution.steps, key=lambda step: step.step_id))
    return copy


def _assert_steps_agree(
    past: engine_pb2.Execution, said: dict[str, StepReport], sequence: int
) -> None:
    steps = {step.step_id: step for step in past.steps}
    assert set(steps) == {s["id"] for s in WORKFLOW["steps"]}, sequence
    for step_id, step in steps.items():
        report = said.get(step_id, StepReport(step_status("PENDING"), 0, struct_pb2.Struct()))
        where = f"step {step_id} at sequence {sequence}"
        assert (step.status, step.attempt) == (report.status, report.attempt), where
        assert step.output == report.output, where
        if report.status == step_status("COMPLETED"):
            assert past.outputs[step_id] == report.output, where
        else:
            assert step_id not in past.outputs, where

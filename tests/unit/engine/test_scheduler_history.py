"""Event history, sequences, idempotency, and recovery by a second engine."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from engine_service.core.engine import Engine
from engine_service.core.errors import InvalidArgument
from engine_service.core.memory_store import InMemoryStore
from engine_service.core.state import (
    EventKind,
    ExecutionEvent,
    ExecutionState,
    ExecutionStatus,
    StepStatus,
)
from tests.unit.engine.conftest import EngineFactory
from tests.unit.engine.scheduler_harness import (
    TENANT,
    FailingStore,
    Probe,
    replayed,
    restart,
    run,
    seconds,
    settle,
    start,
    statuses,
)

pytestmark = pytest.mark.looptime

ES = ExecutionStatus
SS = StepStatus

CHAIN = {
    "id": "chain",
    "steps": [
        {"id": "a", "action": "probe", "parameters": {"seconds": 1}},
        {
            "id": "b",
            "action": "probe",
            "depends_on": ["a"],
            "parameters": {"seconds": 10},
            "retry": {"max_attempts": 3, "initial_interval": "2s"},
        },
        {"id": "c", "action": "probe", "depends_on": ["b"]},
    ],
}


async def test_sequences_are_gap_free_from_one_and_replay_to_the_stored_state(
    engine: Engine,
) -> None:
    final, events = await run(engine, CHAIN)
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert final.last_sequence == len(events)
    assert len({e.event_id for e in events}) == len(events)
    assert replayed(final, events) == final


async def test_get_execution_at_a_sequence_replays_the_state_at_that_point(
    engine: Engine,
) -> None:
    final, events = await run(engine, CHAIN)
    (a_done,) = [e for e in events if e.step_id == "a" and e.step_status is SS.COMPLETED]
    then = await engine.get_execution(final.id, at_sequence=a_done.sequence)
    assert then.last_sequence == a_done.sequence
    assert then.status is ES.RUNNING
    assert then.steps["a"].status is SS.COMPLETED
    assert then.steps["b"].status is SS.PENDING
    assert (await engine.get_execution(final.id, at_sequence=0)) == final
    with pytest.raises(InvalidArgument) as caught:
        await engine.get_execution(final.id, at_sequence=len(events) + 1)
    assert caught.value.problems[0].path == "at_sequence"


async def test_an_idempotency_key_returns_the_first_execution(engine: Engine) -> None:
    await engine.register_workflow({"id": "wf", "steps": [{"id": "a", "action": "noop"}]}, TENANT)
    first, created = await engine.start_execution(TENANT, "wf", idempotency_key="k1")
    again, created_again = await engine.start_execution(
        TENANT, "wf", idempotency_key="k1", inputs={"other": 1}
    )
    other, created_other = await engine.start_execution(TENANT, "wf", idempotency_key="k2")
    assert (created, created_again, created_other) == (True, False, True)
    assert again.id == first.id
    assert other.id != first.id
    await engine.wait_for(first.id)
    assert len(await engine.read_events(first.id)) == 5


async def test_a_second_engine_continues_the_run_and_never_reruns_completed_steps(
    engines: EngineFactory, probe: Probe
) -> None:
    store = InMemoryStore()
    first = engines(store)
    state = await start(first, CHAIN)
    await asyncio.sleep(5)
    second = await restart(engines, first, store)
    final = await second.wait_for(state.id)
    assert final.status is ES.COMPLETED
    assert probe.calls == [("a", 1), ("b", 1), ("b", 2), ("c", 1)]
    events = await second.read_events(state.id)
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert statuses(events, "a") == [SS.RUNNING, SS.COMPLETED]
    # The interrupted attempt ends FAILED and the step runs again at once, as a new attempt.
    assert statuses(events, "b") == [
        SS.RUNNING,
        SS.FAILED,
        SS.RETRYING,
        SS.RUNNING,
        SS.COMPLETED,
    ]
    lost = [e for e in events if e.step_id == "b" and e.step_status is SS.FAILED]
    assert lost[0].error is not None
    assert lost[0].error.type == "EngineRestarted"
    b_runs = [e for e in events if e.step_id == "b" and e.step_status is SS.RUNNING]
    assert [e.attempt for e in b_runs] == [1, 2]
    assert seconds(b_runs[1], lost[0]) == 0.0
    assert replayed(final, events) == final


async def test_a_step_interrupted_on_its_last_attempt_still_runs_again(
    engines: EngineFactory,
) -> None:
    # The engine's death is not the step's failure: it does not use up the retry budget.
    store = InMemoryStore()
    first = engines(store)
    state = await start(
        first, {"id": "wf", "steps": [{"id": "a", "action": "delay", "parameters": {"seconds": 9}}]}
    )
    await asyncio.sleep(1)
    second = await restart(engines, first, store)
    final = await second.wait_for(state.id)
    assert final.status is ES.COMPLETED
    assert final.steps["a"].attempt == 2
    events = await second.read_events(state.id)
    assert statuses(events, "a") == [
        SS.RUNNING,
        SS.FAILED,
        SS.RETRYING,
        SS.RUNNING,
        SS.COMPLETED,
    ]
    assert asyncio.get_running_loop().time() == 10.0


async def test_a_retrying_step_runs_at_its_next_attempt_time_after_a_restart(
    engines: EngineFactory,
) -> None:
    store = InMemoryStore()
    first = engines(store)
    state = await start(
        first,
        {
            "id": "wf",
            "steps": [
                {
                    "id": "a",
                    "action": "fail",
                    "parameters": {"times": 1},
                    "retry": {"max_attempts": 2, "initial_interval": "30s"},
                }
            ],
        },
    )
    await asyncio.sleep(10)
    second = await restart(engines, first, store)
    final = await second.wait_for(state.id)
    assert final.status is ES.COMPLETED
    assert final.steps["a"].attempt == 2
    assert asyncio.get_running_loop().time() == 30.0


async def test_a_paused_run_stays_paused_after_a_restart_and_resumes(
    engines: EngineFactory,
) -> None:
    store = InMemoryStore()
    first = engines(store)
    state = await start(
        first,
        {"id": "wf", "steps": [{"id": "a", "action": "echo", "parameters": {"x": "${inputs.x}"}}]},
    )
    await settle()
    second = await restart(engines, first, store)
    await asyncio.sleep(10)
    assert (await second.get_execution(state.id)).status is ES.PAUSED
    await second.resume_execution(state.id, inputs={"x": 1})
    assert (await second.wait_for(state.id)).status is ES.COMPLETED


async def test_a_fallback_cut_off_by_a_restart_runs_after_it(
    engines: EngineFactory, probe: Probe
) -> None:
    store = InMemoryStore()
    first = engines(store)
    state = await start(
        first,
        {
            "id": "wf",
            "steps": [
                {
                    "id": "a",
                    "action": "fail",
                    "fallback": {"action": "probe", "parameters": {"seconds": 10}},
                }
            ],
        },
    )
    await asyncio.sleep(1)
    assert probe.running == 1
    second = await restart(engines, first, store)
    final = await second.wait_for(state.id)
    assert final.status is ES.COMPLETED
    assert final.steps["a"].fallback_used
    assert len(probe.calls) == 2


async def test_a_tolerated_failure_before_a_restart_still_counts_after_it(
    engines: EngineFactory,
) -> None:
    store = InMemoryStore()
    first = engines(store)
    state = await start(
        first,
        {
            "id": "wf",
            "steps": [
                {"id": "bad", "action": "fail", "continue_on_error": True},
                {"id": "slow", "action": "delay", "parameters": {"seconds": 5}},
                {"id": "after", "action": "noop", "depends_on": ["bad", "slow"]},
            ],
        },
    )
    await asyncio.sleep(1)
    second = await restart(engines, first, store)
    final = await second.wait_for(state.id)
    assert final.status is ES.COMPLETED_WITH_ERRORS
    assert final.steps["after"].status is SS.COMPLETED


async def test_the_workflow_deadline_survives_a_restart(engines: EngineFactory) -> None:
    store = InMemoryStore()
    first = engines(store)
    state = await start(
        first,
        {
            "id": "wf",
            "timeout": "10s",
            "steps": [
                {
                    "id": "a",
                    "action": "delay",
                    "parameters": {"seconds": 60},
                    "retry": {"max_attempts": 2, "initial_interval": "1ms"},
                }
            ],
        },
    )
    await asyncio.sleep(4)
    second = await restart(engines, first, store)
    final = await second.wait_for(state.id)
    assert final.status is ES.TIMED_OUT
    assert asyncio.get_running_loop().time() == 10.0


async def test_engine_start_continues_every_unfinished_run(engines: EngineFactory) -> None:
    store = InMemoryStore()
    first = engines(store)
    definition = {
        "id": "wf",
        "steps": [{"id": "a", "action": "delay", "parameters": {"seconds": 5}}],
    }
    done, _ = await run(first, {"id": "quick", "steps": [{"id": "a", "action": "noop"}]})
    one = await start(first, definition)
    two, _ = await first.start_execution(TENANT, "wf")
    # Stopped before its runner ever ran: waiting for it must not hang.
    await first.stop()
    assert not (await first.wait_for(one.id)).status.is_terminal
    assert first.active_executions == 0
    second = engines(store)
    assert await second.start() == 2
    assert second.active_executions == 2
    assert (await second.wait_for(one.id)).status is ES.COMPLETED
    assert (await second.wait_for(two.id)).status is ES.COMPLETED
    assert (await second.get_execution(done.id)).status is ES.COMPLETED


async def test_a_listener_sees_every_commit_in_order(engine: Engine) -> None:
    seen: list[tuple[ExecutionState, Sequence[ExecutionEvent]]] = []
    engine.add_listener(lambda state, events: seen.append((state, events)))
    final, events = await run(engine, CHAIN)
    assert [e for _, batch in seen for e in batch] == events
    assert seen[-1][0] == final
    assert all(state.last_sequence == batch[-1].sequence for state, batch in seen)


async def test_a_store_failure_in_a_step_stops_the_runner_and_a_restart_recovers(
    engines: EngineFactory, caplog: pytest.LogCaptureFixture
) -> None:
    store = FailingStore("a", SS.COMPLETED)
    first = engines(store)
    state = await start(
        first,
        {
            "id": "wf",
            "steps": [
                {
                    "id": "a",
                    "action": "delay",
                    "parameters": {"seconds": 1},
                    "retry": {"max_attempts": 2},
                },
                {"id": "b", "action": "delay", "parameters": {"seconds": 100}},
            ],
        },
    )
    stopped = await first.wait_for(state.id)
    assert stopped.status is ES.RUNNING
    assert stopped.steps["a"].status is SS.RUNNING
    assert asyncio.get_running_loop().time() == 1.0
    assert "stopped driving execution" in caplog.text
    await settle()
    assert first.active_executions == 0
    second = await restart(engines, first, store)
    final = await second.wait_for(state.id)
    assert final.status is ES.COMPLETED
    assert final.steps["a"].attempt == 2


async def test_wait_for_a_run_not_driven_here_reads_the_store(engines: EngineFactory) -> None:
    store = InMemoryStore()
    first = engines(store)
    state = await start(
        first, {"id": "wf", "steps": [{"id": "a", "action": "delay", "parameters": {"seconds": 5}}]}
    )
    await asyncio.sleep(1)
    await first.stop()
    other = engines(store)
    assert (await other.wait_for(state.id)).status is ES.RUNNING


async def test_terminal_events_carry_the_run_summary(engine: Engine) -> None:
    definition: dict[str, Any] = {
        "id": "wf",
        "estimated_time_saved": "90s",
        "business_value": 2.5,
        "steps": [{"id": "a", "action": "delay", "parameters": {"seconds": 3}}],
    }
    final, events = await run(engine, definition)
    last = events[-1]
    assert last.kind is EventKind.EXECUTION_STATUS_CHANGED
    assert last.execution_status is ES.COMPLETED
    assert last.duration == 3.0
    assert last.output == {"a": {"slept": 3.0}}
    assert (last.estimated_time_saved, last.business_value) == (90.0, 2.5)
    assert final.finished_at == last.timestamp

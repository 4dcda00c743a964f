"""Scheduling: failure policies, compensation and cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest

from engine_service.core.actions import ActionContext
from engine_service.core.engine import Engine
from engine_service.core.errors import IllegalTransition
from engine_service.core.state import EventKind, ExecutionStatus, StepStatus
from tests.unit.engine.conftest import EngineFactory
from tests.unit.engine.scheduler_harness import (
    Probe,
    registry_with,
    run,
    settle,
    start,
    started_order,
    statuses,
)

pytestmark = pytest.mark.looptime

ES = ExecutionStatus
SS = StepStatus


async def test_a_failed_step_fails_the_execution_cancels_running_steps_and_starts_no_more(
    engine: Engine, probe: Probe
) -> None:
    final, events = await run(
        engine,
        {
            "id": "wf",
            "steps": [
                {"id": "bad", "action": "probe", "parameters": {"seconds": 1, "fail": "Boom"}},
                {"id": "long", "action": "probe", "parameters": {"seconds": 100}},
                {"id": "after_bad", "action": "probe", "depends_on": ["bad"]},
                {"id": "after_long", "action": "probe", "depends_on": ["long"]},
            ],
        },
    )
    assert final.status is ES.FAILED
    assert final.error is not None
    assert (final.error.type, final.error.message) == ("Boom", "step bad: probe failed")
    assert final.steps["long"].status is SS.CANCELLED
    assert final.steps["after_bad"].status is SS.CANCELLED
    assert final.steps["after_long"].status is SS.CANCELLED
    assert sorted(started_order(events)) == ["bad", "long"]
    assert probe.running == 0


async def test_continue_on_error_lets_dependents_run_and_ends_completed_with_errors(
    engine: Engine,
) -> None:
    final, _ = await run(
        engine,
        {
            "id": "wf",
            "steps": [
                {"id": "bad", "action": "fail", "continue_on_error": True},
                {
                    "id": "next",
                    "action": "echo",
                    "depends_on": ["bad"],
                    "parameters": {"upstream": "${steps.bad.status}"},
                },
            ],
        },
    )
    assert final.status is ES.COMPLETED_WITH_ERRORS
    assert final.steps["next"].output == {"upstream": "FAILED"}
    assert final.error is None


async def test_on_failure_continue_applies_to_every_step(engine: Engine) -> None:
    final, _ = await run(
        engine,
        {
            "id": "wf",
            "on_failure": "CONTINUE",
            "steps": [
                {"id": "bad", "action": "fail"},
                {"id": "next", "action": "noop", "depends_on": ["bad"]},
            ],
        },
    )
    assert final.status is ES.COMPLETED_WITH_ERRORS
    assert final.steps["next"].status is SS.COMPLETED


async def test_a_failing_step_without_continue_on_error_fails_the_run_even_beside_one_with(
    engine: Engine,
) -> None:
    final, _ = await run(
        engine,
        {
            "id": "wf",
            "steps": [
                {"id": "tolerated", "action": "fail", "continue_on_error": True},
                {"id": "fatal", "action": "fail", "depends_on": ["tolerated"]},
            ],
        },
    )
    assert final.status is ES.FAILED
    assert final.error is not None
    assert final.error.message.startswith("step fatal:")


async def test_compensation_runs_in_reverse_completion_order_and_the_result_says_which_ran(
    engine: Engine, probe: Probe
) -> None:
    def undoable(step_id: str, seconds: float, *deps: str) -> dict[str, Any]:
        return {
            "id": step_id,
            "action": "delay",
            "parameters": {"seconds": seconds},
            "depends_on": list(deps),
            "compensate": {
                "action": "probe",
                "parameters": {"undo": step_id, "slept": f"${{steps.{step_id}.output.slept}}"},
            },
        }

    final, events = await run(
        engine,
        {
            "id": "wf",
            "on_failure": "COMPENSATE",
            "steps": [
                undoable("first", 2),
                undoable("second", 1),
                {"id": "plain", "action": "noop"},
                undoable("third", 1, "first"),
                {"id": "boom", "action": "fail", "depends_on": ["third", "second"]},
            ],
        },
    )
    assert final.status is ES.FAILED
    # Completed: plain (0s), second (1s), first (2s), third (3s); undone backwards.
    assert [step for step, _ in probe.calls] == ["third", "first", "second"]
    assert probe.seen_parameters["first"] == [{"undo": "first", "slept": 2.0}]
    assert final.compensated_steps == ("third", "first", "second")
    assert final.steps["plain"].compensated is False
    assert final.steps["third"].compensated is True
    compensations = [e for e in events if e.kind is EventKind.STEP_COMPENSATION_FINISHED]
    assert [e.step_id for e in compensations] == ["third", "first", "second"]


async def test_a_failed_compensation_is_recorded_but_not_listed_as_compensated(
    engine: Engine,
) -> None:
    final, events = await run(
        engine,
        {
            "id": "wf",
            "on_failure": "COMPENSATE",
            "steps": [
                {"id": "a", "action": "noop", "compensate": {"action": "fail"}},
                {
                    "id": "b",
                    "action": "noop",
                    "compensate": {"action": "echo", "parameters": {"x": "${inputs.missing}"}},
                },
                {"id": "boom", "action": "fail", "depends_on": ["a", "b"]},
            ],
        },
    )
    assert final.status is ES.FAILED
    assert final.compensated_steps == ()
    compensations = [e for e in events if e.kind is EventKind.STEP_COMPENSATION_FINISHED]
    assert {e.step_id: e.step_status for e in compensations} == {"a": SS.FAILED, "b": SS.FAILED}


async def test_compensation_does_not_run_under_the_stop_policy(
    engine: Engine, probe: Probe
) -> None:
    final, _ = await run(
        engine,
        {
            "id": "wf",
            "steps": [
                {"id": "a", "action": "noop", "compensate": {"action": "probe"}},
                {"id": "boom", "action": "fail", "depends_on": ["a"]},
            ],
        },
    )
    assert final.status is ES.FAILED
    assert probe.calls == []


async def test_cancel_cancels_running_steps_cooperatively_and_starts_nothing_new(
    engine: Engine, probe: Probe
) -> None:
    state = await start(
        engine,
        {
            "id": "wf",
            "steps": [
                {"id": "a", "action": "probe", "parameters": {"seconds": 100}},
                {"id": "b", "action": "probe", "depends_on": ["a"]},
            ],
        },
    )
    await asyncio.sleep(1)
    assert probe.running == 1
    cancelled = await engine.cancel_execution(state.id, reason="operator said so")
    assert cancelled.status is ES.CANCELLED
    assert cancelled.error is not None
    assert cancelled.error.message == "operator said so"
    assert cancelled.steps["a"].status is SS.CANCELLED
    assert cancelled.steps["b"].status is SS.CANCELLED
    assert probe.running == 0
    await asyncio.sleep(200)
    assert probe.calls == [("a", 1)]
    events = await engine.read_events(state.id)
    assert statuses(events, "b") == [SS.CANCELLED]


async def test_cancel_of_a_paused_execution_cancels_it(engine: Engine) -> None:
    state = await start(
        engine,
        {"id": "wf", "steps": [{"id": "a", "action": "echo", "parameters": {"x": "${inputs.x}"}}]},
    )
    await settle()
    cancelled = await engine.cancel_execution(state.id)
    assert cancelled.status is ES.CANCELLED
    assert cancelled.steps["a"].status is SS.CANCELLED


async def test_cancel_of_a_retrying_step_ends_it_cancelled(engine: Engine) -> None:
    state = await start(
        engine,
        {
            "id": "wf",
            "steps": [
                {
                    "id": "a",
                    "action": "fail",
                    "retry": {"max_attempts": 3, "initial_interval": "1m"},
                }
            ],
        },
    )
    await asyncio.sleep(1)
    cancelled = await engine.cancel_execution(state.id)
    events = await engine.read_events(state.id)
    assert statuses(events, "a")[-2:] == [SS.RETRYING, SS.CANCELLED]
    assert cancelled.status is ES.CANCELLED


async def test_cancel_of_a_finished_execution_is_an_illegal_transition(engine: Engine) -> None:
    final, _ = await run(engine, {"id": "wf", "steps": [{"id": "a", "action": "noop"}]})
    with pytest.raises(IllegalTransition):
        await engine.cancel_execution(final.id)


@pytest.mark.parametrize("yields", range(30))
async def test_a_cancel_racing_the_last_step_finishing_ends_cancelled_if_accepted(
    engines: EngineFactory, probe: Probe, yields: int
) -> None:
    # Cancel at every scheduling point around the step's end and the run's completion:
    # a cancel that is accepted always ends the run CANCELLED; after completion it is
    # refused.
    engine = engines()
    state = await start(engine, {"id": "wf", "steps": [{"id": "a", "action": "probe"}]})
    for _ in range(yields):
        await asyncio.sleep(0)
    try:
        result = await engine.cancel_execution(state.id)
    except IllegalTransition:
        final = await engine.wait_for(state.id)
        assert final.status is ES.COMPLETED
    else:
        assert result.status is ES.CANCELLED
        assert (await engine.get_execution(state.id)).status is ES.CANCELLED


async def test_a_cancelled_action_sees_cancellation(engines: EngineFactory, probe: Probe) -> None:
    seen: list[str] = []

    async def careful(parameters: Mapping[str, Any], context: ActionContext) -> Any:
        try:
            await asyncio.sleep(100)
        except asyncio.CancelledError:
            seen.append(context.step_id)
            raise
        return {}

    engine = engines(actions=registry_with(probe, careful=careful))
    state = await start(engine, {"id": "wf", "steps": [{"id": "a", "action": "careful"}]})
    await asyncio.sleep(1)
    await engine.cancel_execution(state.id)
    assert seen == ["a"]

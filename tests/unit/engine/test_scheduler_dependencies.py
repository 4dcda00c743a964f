"""Scheduling: dependencies, concurrency limits, `when` conditions and joins."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from engine_service.core.engine import Engine, EngineConfig
from engine_service.core.state import ExecutionStatus, StepStatus
from tests.unit.engine.conftest import EngineFactory
from tests.unit.engine.scheduler_harness import (
    Probe,
    run,
    seconds,
    start,
    started_order,
    statuses,
    step_events,
)

pytestmark = pytest.mark.looptime

ES = ExecutionStatus
SS = StepStatus


def probe_step(step_id: str, *deps: str, **parameters: Any) -> dict[str, Any]:
    step: dict[str, Any] = {"id": step_id, "action": "probe", "parameters": parameters}
    if deps:
        step["depends_on"] = list(deps)
    return step


async def test_a_step_starts_only_after_every_dependency_completed(engine: Engine) -> None:
    final, events = await run(
        engine,
        {
            "id": "wf",
            "steps": [
                probe_step("slow", seconds=3),
                probe_step("fast", seconds=1),
                probe_step("after", "slow", "fast"),
            ],
        },
    )
    assert final.status is ES.COMPLETED
    origin = events[0]
    (after_started,) = [e for e in step_events(events, "after") if e.step_status is SS.RUNNING]
    assert seconds(after_started, origin) == 3.0
    slow_done = [e for e in step_events(events, "slow") if e.step_status is SS.COMPLETED]
    assert slow_done[0].sequence < after_started.sequence


async def test_independent_steps_run_concurrently(engine: Engine, probe: Probe) -> None:
    final, _ = await run(
        engine,
        {"id": "wf", "steps": [probe_step(s, seconds=5) for s in ("a", "b", "c")]},
    )
    assert final.status is ES.COMPLETED
    assert probe.peak == 3
    assert asyncio.get_running_loop().time() == 5.0


async def test_running_steps_never_exceed_max_concurrent_steps(
    engine: Engine, probe: Probe
) -> None:
    definition = {
        "id": "wf",
        "max_concurrent_steps": 2,
        "steps": [probe_step(f"s{i}", seconds=5) for i in range(6)],
    }
    final, events = await run(engine, definition)
    assert final.status is ES.COMPLETED
    assert probe.peak == 2
    # Three waves of two five-second steps.
    assert seconds(events[-1], events[0]) == 15.0


async def test_engine_per_execution_limit_applies_when_the_definition_sets_none(
    engines: EngineFactory, probe: Probe
) -> None:
    engine = engines(config=EngineConfig(max_steps_per_execution=3))
    definition = {"id": "wf", "steps": [probe_step(f"s{i}", seconds=1) for i in range(7)]}
    final, _ = await run(engine, definition)
    assert final.status is ES.COMPLETED
    assert probe.peak == 3


async def test_engine_wide_limit_bounds_steps_across_executions(
    engines: EngineFactory, probe: Probe
) -> None:
    engine = engines(config=EngineConfig(max_concurrent_steps=2))
    definition = {"id": "wf", "steps": [probe_step(f"s{i}", seconds=1) for i in range(3)]}
    first = await start(engine, definition)
    second, _ = await engine.start_execution("default", "wf")
    assert (await engine.wait_for(first.id)).status is ES.COMPLETED
    assert (await engine.wait_for(second.id)).status is ES.COMPLETED
    assert probe.peak == 2
    assert len(probe.calls) == 6


async def test_a_false_when_condition_skips_the_step_and_steps_that_only_follow_it(
    engine: Engine, probe: Probe
) -> None:
    final, _ = await run(
        engine,
        {
            "id": "wf",
            "steps": [
                probe_step("a"),
                {**probe_step("b", "a"), "when": "inputs.go"},
                probe_step("c", "b"),
                probe_step("d", "a"),
            ],
        },
        inputs={"go": False},
    )
    assert final.status is ES.COMPLETED
    assert {s: final.steps[s].status for s in "abcd"} == {
        "a": SS.COMPLETED,
        "b": SS.SKIPPED,
        "c": SS.SKIPPED,
        "d": SS.COMPLETED,
    }
    assert sorted(step for step, _ in probe.calls) == ["a", "d"]


async def test_when_condition_sees_inputs_upstream_output_and_status(engine: Engine) -> None:
    final, _ = await run(
        engine,
        {
            "id": "wf",
            "steps": [
                {"id": "a", "action": "echo", "parameters": {"n": 3}},
                {
                    "id": "b",
                    "action": "noop",
                    "depends_on": ["a"],
                    "when": "steps.a.output.n == inputs.n && steps.a.status == 'COMPLETED'",
                },
                {
                    "id": "c",
                    "action": "noop",
                    "depends_on": ["a"],
                    "when": "steps.a.output.n > inputs.n",
                },
            ],
        },
        inputs={"n": 3},
    )
    assert final.steps["b"].status is SS.COMPLETED
    assert final.steps["c"].status is SS.SKIPPED


@pytest.mark.parametrize(
    ("condition", "reason"),
    [("inputs.absent == 1", "no such key"), ("inputs.n", "must evaluate to a bool")],
)
async def test_a_condition_that_cannot_be_evaluated_fails_the_step(
    engine: Engine, probe: Probe, condition: str, reason: str
) -> None:
    final, events = await run(
        engine,
        {"id": "wf", "steps": [{**probe_step("a"), "when": condition}]},
        inputs={"n": 1},
    )
    assert final.status is ES.FAILED
    assert statuses(events, "a") == [SS.FAILED]
    error = final.steps["a"].error
    assert error is not None
    assert error.type == "ConditionError"
    assert reason in error.message
    assert probe.calls == []


async def test_join_runs_when_one_branch_completed_and_the_other_was_skipped(
    engine: Engine,
) -> None:
    final, _ = await run(
        engine,
        {
            "id": "wf",
            "steps": [
                {"id": "left", "action": "noop", "when": "true"},
                {"id": "right", "action": "noop", "when": "false"},
                {"id": "join", "action": "noop", "depends_on": ["left", "right"]},
            ],
        },
    )
    assert final.steps["right"].status is SS.SKIPPED
    assert final.steps["join"].status is SS.COMPLETED
    assert final.status is ES.COMPLETED


async def test_join_is_skipped_when_every_upstream_was_skipped(engine: Engine) -> None:
    final, _ = await run(
        engine,
        {
            "id": "wf",
            "steps": [
                {"id": "left", "action": "noop", "when": "false"},
                {"id": "right", "action": "noop", "when": "false"},
                {"id": "join", "action": "noop", "depends_on": ["left", "right"]},
            ],
        },
    )
    assert final.steps["join"].status is SS.SKIPPED
    assert final.status is ES.COMPLETED


async def test_join_waits_for_the_slowest_branch(engine: Engine) -> None:
    final, events = await run(
        engine,
        {
            "id": "wf",
            "steps": [
                probe_step("quick", seconds=1),
                probe_step("slow", seconds=4),
                probe_step("join", "quick", "slow"),
            ],
        },
    )
    assert final.status is ES.COMPLETED
    assert started_order(events)[-1] == "join"
    (join_started,) = [e for e in step_events(events, "join") if e.step_status is SS.RUNNING]
    assert seconds(join_started, events[0]) == 4.0


async def test_a_join_after_a_failed_branch_with_continue_on_error_runs_and_sees_the_failure(
    engine: Engine,
) -> None:
    final, _ = await run(
        engine,
        {
            "id": "wf",
            "steps": [
                {"id": "bad", "action": "fail", "continue_on_error": True},
                {"id": "off", "action": "noop", "when": "false"},
                {
                    "id": "join",
                    "action": "echo",
                    "depends_on": ["bad", "off"],
                    "parameters": {"bad": "${steps.bad.status}", "off": "${steps.off.status}"},
                },
            ],
        },
    )
    assert final.steps["join"].output == {"bad": "FAILED", "off": "SKIPPED"}
    assert final.status is ES.COMPLETED_WITH_ERRORS


async def test_graph_form_does_not_take_a_connection_whose_condition_is_false(
    engine: Engine,
) -> None:
    final, _ = await run(
        engine,
        {
            "id": "wf",
            "nodes": [
                {"id": "start", "action": "echo", "parameters": {"route": "${inputs.route}"}},
                {"id": "left", "action": "noop"},
                {"id": "right", "action": "noop"},
                {"id": "join", "action": "noop"},
            ],
            "connections": [
                {
                    "source": "start",
                    "target": "left",
                    "condition": "steps.start.output.route == 'L'",
                },
                {
                    "source": "start",
                    "target": "right",
                    "condition": "steps.start.output.route == 'R'",
                },
                {"source": "left", "target": "join"},
                {"source": "right", "target": "join"},
            ],
        },
        inputs={"route": "L"},
    )
    assert final.steps["left"].status is SS.COMPLETED
    assert final.steps["right"].status is SS.SKIPPED
    assert final.steps["join"].status is SS.COMPLETED


async def test_graph_form_skips_a_node_whose_every_incoming_connection_is_false(
    engine: Engine,
) -> None:
    final, _ = await run(
        engine,
        {
            "id": "wf",
            "nodes": [
                {"id": "a", "action": "noop"},
                {"id": "b", "action": "noop"},
                {"id": "target", "action": "noop"},
            ],
            "connections": [
                {"source": "a", "target": "target", "condition": "inputs.x > 10"},
                {"source": "b", "target": "target", "condition": "inputs.x > 20"},
            ],
        },
        inputs={"x": 5},
    )
    assert final.steps["target"].status is SS.SKIPPED
    assert final.status is ES.COMPLETED


async def test_graph_form_runs_independent_nodes_in_parallel(engine: Engine, probe: Probe) -> None:
    final, events = await run(
        engine,
        {
            "id": "wf",
            "nodes": [
                {"id": "root", "action": "probe"},
                {"id": "x", "action": "probe", "parameters": {"seconds": 2}},
                {"id": "y", "action": "probe", "parameters": {"seconds": 2}},
            ],
            "connections": [
                {"source": "root", "target": "x"},
                {"source": "root", "target": "y"},
            ],
        },
    )
    assert final.status is ES.COMPLETED
    assert probe.peak == 2
    assert seconds(events[-1], events[0]) == 2.0


async def test_a_dependent_of_a_step_with_a_fallback_waits_for_the_fallback(
    engine: Engine,
) -> None:
    # `other` finishing wakes the scheduler while `flaky`'s fallback is still running; the
    # dependent must not treat the failed attempt as the step's outcome.
    final, _ = await run(
        engine,
        {
            "id": "wf",
            "steps": [
                {
                    "id": "flaky",
                    "action": "fail",
                    "fallback": {"action": "delay", "parameters": {"seconds": 5}},
                },
                probe_step("other", seconds=1),
                {"id": "after", "action": "noop", "depends_on": ["flaky"]},
            ],
        },
    )
    assert final.steps["flaky"].status is SS.COMPLETED
    assert final.steps["flaky"].fallback_used
    assert final.steps["after"].status is SS.COMPLETED
    assert final.status is ES.COMPLETED

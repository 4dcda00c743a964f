"""Scheduling: retries and backoff, step and workflow timeouts, fallbacks."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import pytest

from engine_service.core.actions import ActionContext
from engine_service.core.engine import Engine
from engine_service.core.model import JitterMode, RetryPolicy
from engine_service.core.retry import backoff_delay, is_retryable
from engine_service.core.state import EventKind, ExecutionStatus, StepStatus
from tests.unit.engine.conftest import EngineFactory
from tests.unit.engine.scheduler_harness import (
    Probe,
    registry_with,
    run,
    seconds,
    start,
    statuses,
    step_events,
)

pytestmark = pytest.mark.looptime

ES = ExecutionStatus
SS = StepStatus


def flaky(times: int, retry: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "id": "wf",
        "steps": [
            {"id": "a", "action": "fail", "parameters": {"times": times}, "retry": retry, **extra}
        ],
    }


async def test_retries_back_off_exponentially_up_to_the_maximum_interval(engine: Engine) -> None:
    retry = {
        "max_attempts": 5,
        "initial_interval": "1s",
        "backoff_coefficient": 2,
        "maximum_interval": "5s",
    }
    final, events = await run(engine, flaky(4, retry))
    assert final.status is ES.COMPLETED
    assert final.steps["a"].attempt == 5
    running = [e for e in step_events(events, "a") if e.step_status is SS.RUNNING]
    assert [seconds(e, events[0]) for e in running] == [0, 1, 3, 7, 12]
    retrying = [e for e in step_events(events, "a") if e.step_status is SS.RETRYING]
    assert [
        (e.next_attempt_at - e.timestamp).total_seconds() for e in retrying if e.next_attempt_at
    ] == [1, 2, 4, 5]
    assert [e.attempt for e in running] == [1, 2, 3, 4, 5]


async def test_between_attempts_the_step_is_retrying(engine: Engine) -> None:
    _, events = await run(engine, flaky(1, {"max_attempts": 2}))
    assert statuses(events, "a") == [
        SS.RUNNING,
        SS.FAILED,
        SS.RETRYING,
        SS.RUNNING,
        SS.COMPLETED,
    ]


async def test_full_jitter_draws_each_delay_uniformly_below_the_backoff(
    engines: EngineFactory,
) -> None:
    engine = engines(seed=7)
    retry = {"max_attempts": 4, "initial_interval": "2s", "jitter": "FULL"}
    _, events = await run(engine, flaky(3, retry))
    expected_rng = random.Random(7)
    expected = [expected_rng.uniform(0, cap) for cap in (2.0, 4.0, 8.0)]
    retrying = [e for e in step_events(events, "a") if e.step_status is SS.RETRYING]
    delays = [
        (e.next_attempt_at - e.timestamp).total_seconds() for e in retrying if e.next_attempt_at
    ]
    assert delays == pytest.approx(expected, abs=1e-6)
    assert all(0 <= d <= cap for d, cap in zip(delays, (2, 4, 8), strict=True))


async def test_attempts_never_exceed_max_attempts(engine: Engine, probe: Probe) -> None:
    final, events = await run(
        engine,
        {
            "id": "wf",
            "steps": [
                {
                    "id": "a",
                    "action": "probe",
                    "parameters": {"fail": "Boom"},
                    "retry": {"max_attempts": 3, "initial_interval": "10ms"},
                }
            ],
        },
    )
    assert final.status is ES.FAILED
    assert probe.attempts("a") == [1, 2, 3]
    assert statuses(events, "a")[-1] is SS.FAILED
    assert final.steps["a"].attempt == 3


async def test_a_non_retryable_error_type_is_not_retried(engine: Engine, probe: Probe) -> None:
    final, _ = await run(
        engine,
        {
            "id": "wf",
            "steps": [
                {
                    "id": "a",
                    "action": "probe",
                    "parameters": {"fail": "Forbidden"},
                    "retry": {"max_attempts": 5, "non_retryable_errors": ["Forbidden"]},
                }
            ],
        },
    )
    assert final.status is ES.FAILED
    assert probe.attempts("a") == [1]


async def test_an_error_the_action_marks_permanent_is_not_retried(engine: Engine) -> None:
    final, events = await run(
        engine,
        {
            "id": "wf",
            "steps": [
                {
                    "id": "a",
                    "action": "fail",
                    "parameters": {"retryable": False, "error_type": "Permanent"},
                    "retry": {"max_attempts": 5},
                }
            ],
        },
    )
    assert statuses(events, "a") == [SS.RUNNING, SS.FAILED]
    error = final.steps["a"].error
    assert error is not None
    assert error.type == "Permanent"


async def test_an_unknown_action_fails_the_step_without_retrying(engine: Engine) -> None:
    final, events = await run(
        engine,
        {"id": "wf", "steps": [{"id": "a", "action": "nope", "retry": {"max_attempts": 3}}]},
    )
    assert final.status is ES.FAILED
    assert statuses(events, "a") == [SS.RUNNING, SS.FAILED]
    error = final.steps["a"].error
    assert error is not None
    assert error.type == "UnknownAction"


async def test_an_unexpected_exception_fails_the_step_with_its_type(
    engines: EngineFactory, probe: Probe
) -> None:
    async def buggy(parameters: Mapping[str, Any], context: ActionContext) -> Any:
        raise KeyError("oops")

    engine = engines(actions=registry_with(probe, buggy=buggy))
    final, _ = await run(engine, {"id": "wf", "steps": [{"id": "a", "action": "buggy"}]})
    error = final.steps["a"].error
    assert error is not None
    assert error.type == "KeyError"
    assert final.status is ES.FAILED


async def test_a_step_timeout_ends_the_attempt_timed_out_and_retries_it(engine: Engine) -> None:
    final, events = await run(
        engine,
        {
            "id": "wf",
            "steps": [
                {
                    "id": "a",
                    "action": "delay",
                    "parameters": {"seconds": 10},
                    "timeout": "2s",
                    "retry": {"max_attempts": 2, "initial_interval": "1s"},
                }
            ],
        },
    )
    assert statuses(events, "a") == [
        SS.RUNNING,
        SS.TIMED_OUT,
        SS.RETRYING,
        SS.RUNNING,
        SS.TIMED_OUT,
    ]
    assert final.status is ES.FAILED
    assert final.steps["a"].status is SS.TIMED_OUT
    assert seconds(events[-1], events[0]) == 5.0
    timed_out = [e for e in step_events(events, "a") if e.step_status is SS.TIMED_OUT]
    assert [e.duration for e in timed_out] == [2.0, 2.0]


async def test_a_timeout_listed_as_non_retryable_is_not_retried(engine: Engine) -> None:
    final, events = await run(
        engine,
        {
            "id": "wf",
            "steps": [
                {
                    "id": "a",
                    "action": "delay",
                    "parameters": {"seconds": 10},
                    "timeout": "1s",
                    "retry": {"max_attempts": 3, "non_retryable_errors": ["TimeoutError"]},
                }
            ],
        },
    )
    assert statuses(events, "a") == [SS.RUNNING, SS.TIMED_OUT]
    assert final.status is ES.FAILED


async def test_a_workflow_timeout_times_out_the_execution_and_cancels_running_steps(
    engine: Engine, probe: Probe
) -> None:
    final, events = await run(
        engine,
        {
            "id": "wf",
            "timeout": "3s",
            "steps": [
                {"id": "long", "action": "probe", "parameters": {"seconds": 60}},
                {"id": "later", "action": "probe", "depends_on": ["long"]},
            ],
        },
    )
    assert final.status is ES.TIMED_OUT
    assert final.error is not None
    assert final.error.type == "WorkflowTimeout"
    assert final.steps["long"].status is SS.CANCELLED
    assert final.steps["later"].status is SS.CANCELLED
    assert seconds(events[-1], events[0]) == 3.0
    assert probe.running == 0
    assert [step for step, _ in probe.calls] == ["long"]


async def test_the_workflow_timeout_keeps_running_while_paused(engine: Engine) -> None:
    state = await start(
        engine,
        {
            "id": "wf",
            "timeout": "10s",
            "steps": [{"id": "a", "action": "echo", "parameters": {"x": "${inputs.x}"}}],
        },
    )
    final = await engine.wait_for(state.id)
    assert final.status is ES.TIMED_OUT
    assert final.steps["a"].status is SS.CANCELLED
    assert asyncio.get_running_loop().time() == 10.0


async def test_a_fallback_runs_once_after_attempts_are_exhausted_and_its_result_stands(
    engine: Engine, probe: Probe
) -> None:
    final, events = await run(
        engine,
        {
            "id": "wf",
            "steps": [
                {
                    "id": "a",
                    "action": "fail",
                    "retry": {"max_attempts": 2, "initial_interval": "1s"},
                    "fallback": {"action": "probe", "parameters": {"output": {"cached": True}}},
                },
                {
                    "id": "b",
                    "action": "echo",
                    "depends_on": ["a"],
                    "parameters": {"got": "${steps.a.output.cached}"},
                },
            ],
        },
    )
    assert final.status is ES.COMPLETED
    assert final.steps["a"].status is SS.COMPLETED
    assert final.steps["a"].fallback_used
    assert final.steps["b"].output == {"got": True}
    assert probe.calls == [("a", 2)]
    (fallback,) = [e for e in events if e.kind is EventKind.STEP_FALLBACK_FINISHED]
    assert fallback.step_status is SS.COMPLETED
    assert fallback.output == {"cached": True}


async def test_a_failed_fallback_leaves_the_step_failed(engine: Engine) -> None:
    final, events = await run(
        engine,
        {
            "id": "wf",
            "steps": [
                {
                    "id": "a",
                    "action": "fail",
                    "fallback": {"action": "fail", "parameters": {"error_type": "AlsoBroken"}},
                }
            ],
        },
    )
    assert final.status is ES.FAILED
    assert final.steps["a"].status is SS.FAILED
    assert final.steps["a"].fallback_used
    assert final.error is not None
    assert final.error.type == "AlsoBroken"
    (fallback,) = [e for e in events if e.kind is EventKind.STEP_FALLBACK_FINISHED]
    assert fallback.step_status is SS.FAILED


async def test_a_fallback_with_an_unresolvable_input_fails(engine: Engine) -> None:
    final, _ = await run(
        engine,
        {
            "id": "wf",
            "steps": [
                {
                    "id": "a",
                    "action": "fail",
                    "fallback": {"action": "echo", "parameters": {"x": "${inputs.absent}"}},
                }
            ],
        },
    )
    assert final.status is ES.FAILED
    error = final.steps["a"].error
    assert error is not None
    assert (error.type, error.message) == ("MissingInput", "needs inputs.absent")


def test_backoff_delay_grows_by_the_coefficient_and_is_capped() -> None:
    policy = RetryPolicy(initial_interval=0.5, backoff_coefficient=3, maximum_interval=10)
    rng = random.Random(0)
    assert [backoff_delay(policy, n, rng) for n in (1, 2, 3, 4)] == [0.5, 1.5, 4.5, 10]


def test_full_jitter_stays_within_zero_and_the_capped_delay() -> None:
    policy = RetryPolicy(initial_interval=1, maximum_interval=3, jitter=JitterMode.FULL)
    rng = random.Random(1)
    delays = [backoff_delay(policy, 5, rng) for _ in range(200)]
    assert all(0 <= d <= 3 for d in delays)
    assert len(set(delays)) > 1


def test_an_error_type_is_retryable_unless_listed_or_the_action_says_not() -> None:
    policy = RetryPolicy(non_retryable_errors=("Bad",))
    assert is_retryable(policy, "Other", True)
    assert not is_retryable(policy, "Bad", True)
    assert not is_retryable(policy, "Other", False)


async def test_next_attempt_at_is_the_failure_time_plus_the_delay(engine: Engine) -> None:
    state = await start(engine, flaky(1, {"max_attempts": 2, "initial_interval": "30s"}))
    await asyncio.sleep(1)
    waiting = await engine.get_execution(state.id)
    step = waiting.steps["a"]
    assert step.status is SS.RETRYING
    assert step.finished_at is not None
    assert step.next_attempt_at == step.finished_at + timedelta(seconds=30)
    final = await engine.wait_for(state.id)
    assert final.status is ES.COMPLETED
    assert asyncio.get_running_loop().time() == 30.0

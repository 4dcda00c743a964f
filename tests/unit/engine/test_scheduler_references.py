"""Scheduling: references, missing inputs, pause and resume, secrets, step schemas."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import pytest

from engine_service.core.actions import ActionContext
from engine_service.core.engine import Engine, EngineConfig
from engine_service.core.errors import IllegalTransition, InvalidArgument
from engine_service.core.state import EventKind, ExecutionStatus, StepStatus
from tests.unit.engine.conftest import EngineFactory
from tests.unit.engine.scheduler_harness import (
    SECRETS,
    Probe,
    registry_with,
    run,
    settle,
    start,
    statuses,
    wait_until_step,
)

pytestmark = pytest.mark.looptime

ES = ExecutionStatus
SS = StepStatus


async def test_a_value_that_is_exactly_one_reference_keeps_its_type(engine: Engine) -> None:
    final, _ = await run(
        engine,
        {
            "id": "wf",
            "steps": [
                {"id": "a", "action": "echo", "parameters": {"items": [{"id": 7}, {"id": 8}]}},
                {
                    "id": "b",
                    "action": "echo",
                    "depends_on": ["a"],
                    "parameters": {
                        "n": "${inputs.n}",
                        "flag": "${inputs.flag}",
                        "first": "${steps.a.output.items[0].id}",
                        "whole": "${inputs.obj}",
                    },
                },
            ],
        },
        inputs={"n": 42, "flag": True, "obj": {"k": [1, 2]}},
    )
    assert final.steps["b"].output == {"n": 42, "flag": True, "first": 7, "whole": {"k": [1, 2]}}


async def test_references_inside_a_string_interpolate(engine: Engine) -> None:
    final, _ = await run(
        engine,
        {
            "id": "wf",
            "steps": [
                {
                    "id": "a",
                    "action": "echo",
                    "parameters": {"text": "n=${inputs.n} obj=${inputs.obj} name=${inputs.name}"},
                }
            ],
        },
        inputs={"n": 3, "obj": {"b": 1, "a": 2}, "name": "x"},
    )
    assert final.steps["a"].output == {"text": 'n=3 obj={"a":2,"b":1} name=x'}


async def test_a_missing_input_pauses_the_step_and_the_execution_naming_each_variable(
    engine: Engine, probe: Probe
) -> None:
    state = await start(
        engine,
        {
            "id": "wf",
            "steps": [
                {
                    "id": "a",
                    "action": "probe",
                    "parameters": {"x": "${inputs.customer.id}", "y": "${inputs.region}"},
                }
            ],
        },
    )
    await settle()
    paused = await engine.get_execution(state.id)
    assert paused.status is ES.PAUSED
    assert paused.steps["a"].status is SS.PAUSED
    assert paused.missing_inputs == ("inputs.customer.id", "inputs.region")
    events = await engine.read_events(state.id)
    (pause_event,) = [e for e in events if e.execution_status is ES.PAUSED]
    assert pause_event.missing_inputs == ("inputs.customer.id", "inputs.region")
    assert probe.calls == []


async def test_the_pause_for_inputs_names_the_variables_of_every_waiting_step(
    engine: Engine,
) -> None:
    state = await start(
        engine,
        {
            "id": "wf",
            "steps": [
                {"id": "a", "action": "echo", "parameters": {"x": "${inputs.first}"}},
                {"id": "b", "action": "echo", "parameters": {"y": "${inputs.second}"}},
            ],
        },
    )
    await settle()
    paused = await engine.get_execution(state.id)
    assert paused.status is ES.PAUSED
    assert paused.missing_inputs == ("inputs.first", "inputs.second")
    resumed = await engine.resume_execution(state.id, inputs={"first": 1, "second": 2})
    assert resumed.inputs == {"first": 1, "second": 2}
    final = await engine.wait_for(state.id)
    assert final.status is ES.COMPLETED
    assert final.outputs == {"a": {"x": 1}, "b": {"y": 2}}


async def test_resume_with_the_values_continues_from_the_paused_step(
    engine: Engine, probe: Probe
) -> None:
    state = await start(
        engine,
        {
            "id": "wf",
            "steps": [
                {"id": "before", "action": "probe"},
                {
                    "id": "a",
                    "action": "echo",
                    "depends_on": ["before"],
                    "parameters": {"x": "${inputs.x}"},
                },
            ],
        },
    )
    await settle()
    assert (await engine.get_execution(state.id)).status is ES.PAUSED
    await engine.resume_execution(state.id, inputs={"x": "given"})
    final = await engine.wait_for(state.id)
    assert final.status is ES.COMPLETED
    assert final.steps["a"].output == {"x": "given"}
    assert probe.calls == [("before", 1)]
    events = await engine.read_events(state.id)
    assert statuses(events, "a") == [SS.PAUSED, SS.PENDING, SS.RUNNING, SS.COMPLETED]
    (resume_event,) = [e for e in events if e.execution_status is ES.RUNNING and e.inputs]
    assert resume_event.inputs == {"x": "given"}


async def test_resume_without_the_missing_value_pauses_again(engine: Engine) -> None:
    state = await start(
        engine,
        {"id": "wf", "steps": [{"id": "a", "action": "echo", "parameters": {"x": "${inputs.x}"}}]},
    )
    await settle()
    await engine.resume_execution(state.id, inputs={"unrelated": 1})
    await settle()
    again = await engine.get_execution(state.id)
    assert again.status is ES.PAUSED
    assert again.missing_inputs == ("inputs.x",)
    await engine.resume_execution(state.id, inputs={"x": 2})
    assert (await engine.wait_for(state.id)).status is ES.COMPLETED


async def test_an_unresolved_step_reference_fails_the_step_with_a_clear_error(
    engine: Engine,
) -> None:
    final, _ = await run(
        engine,
        {
            "id": "wf",
            "steps": [
                {"id": "a", "action": "echo", "parameters": {"v": 1}},
                {
                    "id": "b",
                    "action": "echo",
                    "depends_on": ["a"],
                    "parameters": {"x": "${steps.a.output.nope}"},
                },
            ],
        },
    )
    assert final.status is ES.FAILED
    error = final.steps["b"].error
    assert error is not None
    assert error.type == "UnresolvedReference"
    assert "steps.a.output.nope" in error.message


async def test_secrets_resolve_at_run_time_and_never_reach_events_or_state(
    engines: EngineFactory, probe: Probe
) -> None:
    engine = engines()
    final, events = await run(
        engine,
        {
            "id": "wf",
            "steps": [
                {
                    "id": "a",
                    "action": "echo",
                    "parameters": {
                        "token": "${secrets.API_KEY}",
                        "header": "Bearer ${secrets.API_KEY}",
                    },
                },
                {
                    "id": "b",
                    "action": "probe",
                    "parameters": {"output": {"raw": "${secrets.OTHER}"}},
                },
            ],
        },
    )
    assert final.status is ES.COMPLETED
    # The action itself received the real value ...
    assert probe.seen_parameters["b"] == [{"output": {"raw": SECRETS["OTHER"]}}]
    # ... but nothing committed holds it.
    assert final.steps["a"].output == {"token": "***", "header": "Bearer ***"}
    stored = repr(final) + repr(events)
    for value in SECRETS.values():
        assert value not in stored


async def test_a_secret_in_an_error_is_redacted_in_events_and_logs(
    engines: EngineFactory, probe: Probe, caplog: pytest.LogCaptureFixture
) -> None:
    async def leaky(parameters: Mapping[str, Any], context: ActionContext) -> Any:
        raise ValueError(f"server rejected token {parameters['token']}")

    engine = engines(actions=registry_with(probe, leaky=leaky))
    caplog.set_level(logging.DEBUG)
    final, events = await run(
        engine,
        {
            "id": "wf",
            "steps": [
                {"id": "a", "action": "leaky", "parameters": {"token": "${secrets.API_KEY}"}}
            ],
        },
    )
    error = final.steps["a"].error
    assert error is not None
    assert error.type == "ValueError"
    assert error.message == "server rejected token ***"
    assert SECRETS["API_KEY"] not in repr(events)
    assert "leaky" in caplog.text
    assert SECRETS["API_KEY"] not in caplog.text


async def test_a_missing_secret_fails_the_step(engine: Engine, probe: Probe) -> None:
    final, _ = await run(
        engine,
        {
            "id": "wf",
            "steps": [{"id": "a", "action": "probe", "parameters": {"k": "${secrets.NOPE}"}}],
        },
    )
    assert final.status is ES.FAILED
    error = final.steps["a"].error
    assert error is not None
    assert (error.type, error.message) == ("SecretNotFound", "no secret for secrets.NOPE")
    assert probe.calls == []


async def test_invalid_step_input_fails_before_running_and_is_not_retried(
    engine: Engine, probe: Probe
) -> None:
    final, events = await run(
        engine,
        {
            "id": "wf",
            "steps": [
                {
                    "id": "a",
                    "action": "probe",
                    "parameters": {"count": "${inputs.count}", "key": "${secrets.API_KEY}"},
                    "input_schema": {
                        "type": "object",
                        "properties": {"count": {"type": "integer"}, "key": {"maxLength": 3}},
                    },
                    "retry": {"max_attempts": 3},
                }
            ],
        },
        inputs={"count": 1},
    )
    assert final.status is ES.FAILED
    assert statuses(events, "a") == [SS.FAILED]
    error = final.steps["a"].error
    assert error is not None
    assert error.type == "InputValidationError"
    assert error.message.startswith("key: ")
    assert SECRETS["API_KEY"] not in error.message
    assert probe.calls == []


async def test_invalid_step_output_fails_after_running_and_is_not_retried(
    engine: Engine, probe: Probe
) -> None:
    final, events = await run(
        engine,
        {
            "id": "wf",
            "steps": [
                {
                    "id": "a",
                    "action": "probe",
                    "parameters": {"output": {"n": "not a number"}},
                    "output_schema": {"type": "object", "properties": {"n": {"type": "number"}}},
                    "retry": {"max_attempts": 3},
                }
            ],
        },
    )
    assert final.status is ES.FAILED
    assert statuses(events, "a") == [SS.RUNNING, SS.FAILED]
    error = final.steps["a"].error
    assert error is not None
    assert error.type == "OutputValidationError"
    assert error.message.startswith("n: ")
    assert probe.calls == [("a", 1)]


async def test_inputs_that_break_the_workflow_input_schema_are_rejected_at_start(
    engine: Engine,
) -> None:
    await engine.register_workflow(
        {
            "id": "wf",
            "input_schema": {"type": "object", "required": ["n"]},
            "steps": [{"id": "a", "action": "noop"}],
        },
        "default",
    )
    with pytest.raises(InvalidArgument) as caught:
        await engine.start_execution("default", "wf", inputs={})
    assert [p.path for p in caught.value.problems] == ["inputs"]


async def test_pause_lets_running_steps_finish_and_starts_nothing_new(
    engine: Engine, probe: Probe
) -> None:
    state = await start(
        engine,
        {
            "id": "wf",
            "steps": [
                {"id": "a", "action": "probe", "parameters": {"seconds": 5}},
                {"id": "b", "action": "probe", "depends_on": ["a"]},
            ],
        },
    )
    await settle()
    paused = await engine.pause_execution(state.id)
    assert paused.status is ES.PAUSED
    await asyncio.sleep(100)
    during = await engine.get_execution(state.id)
    assert during.steps["a"].status is SS.COMPLETED
    assert during.steps["b"].status is SS.PENDING
    assert during.status is ES.PAUSED
    assert probe.calls == [("a", 1)]
    await engine.resume_execution(state.id)
    final = await engine.wait_for(state.id)
    assert final.status is ES.COMPLETED
    assert probe.calls == [("a", 1), ("b", 1)]


async def test_pause_holds_a_step_still_waiting_for_an_engine_slot(
    engines: EngineFactory, probe: Probe
) -> None:
    engine = engines(config=EngineConfig(max_concurrent_steps=1))
    definition = {
        "id": "wf",
        "steps": [{"id": "a", "action": "probe", "parameters": {"seconds": 5}}],
    }
    first = await start(engine, definition)
    second, _ = await engine.start_execution("default", "wf")
    await settle()
    assert probe.running == 1
    await engine.pause_execution(second.id)
    assert (await engine.wait_for(first.id)).status is ES.COMPLETED
    await asyncio.sleep(50)
    held = await engine.get_execution(second.id)
    assert held.status is ES.PAUSED
    assert held.steps["a"].status is SS.PENDING
    assert len(probe.calls) == 1
    await engine.resume_execution(second.id)
    assert (await engine.wait_for(second.id)).status is ES.COMPLETED


async def test_a_retry_waits_while_the_execution_is_paused(engine: Engine) -> None:
    state = await start(
        engine,
        {
            "id": "wf",
            "steps": [
                {
                    "id": "a",
                    "action": "fail",
                    "parameters": {"times": 1},
                    "retry": {"max_attempts": 2, "initial_interval": "1s"},
                }
            ],
        },
    )
    await wait_until_step(engine, state.id, "a", SS.RETRYING)
    await engine.pause_execution(state.id)
    await asyncio.sleep(30)
    assert (await engine.get_execution(state.id)).steps["a"].status is SS.RETRYING
    await engine.resume_execution(state.id)
    final = await engine.wait_for(state.id)
    assert final.status is ES.COMPLETED
    assert final.steps["a"].attempt == 2


async def test_pause_and_resume_refuse_the_wrong_states(engine: Engine) -> None:
    state = await start(
        engine,
        {"id": "wf", "steps": [{"id": "a", "action": "delay", "parameters": {"seconds": 5}}]},
    )
    await settle()
    with pytest.raises(IllegalTransition):
        await engine.resume_execution(state.id)
    await engine.pause_execution(state.id)
    with pytest.raises(IllegalTransition):
        await engine.pause_execution(state.id)
    await engine.resume_execution(state.id)
    await engine.wait_for(state.id)
    for command in (engine.pause_execution, engine.resume_execution, engine.cancel_execution):
        with pytest.raises(IllegalTransition):
            await command(state.id)


async def test_resume_events_move_paused_steps_back_to_pending(engine: Engine) -> None:
    state = await start(
        engine,
        {"id": "wf", "steps": [{"id": "a", "action": "echo", "parameters": {"x": "${inputs.x}"}}]},
    )
    await settle()
    await engine.resume_execution(state.id, inputs={"x": 1})
    await engine.wait_for(state.id)
    kinds = [
        (e.kind, e.execution_status or e.step_status) for e in await engine.read_events(state.id)
    ]
    assert kinds[2:6] == [
        (EventKind.STEP_STATUS_CHANGED, SS.PAUSED),
        (EventKind.EXECUTION_STATUS_CHANGED, ES.PAUSED),
        (EventKind.EXECUTION_STATUS_CHANGED, ES.RUNNING),
        (EventKind.STEP_STATUS_CHANGED, SS.PENDING),
    ]


@pytest.mark.parametrize("yields", range(30))
async def test_a_pause_racing_the_last_step_finishing_never_breaks_the_run(
    engine: Engine, yields: int
) -> None:
    # Pause at every scheduling point around the step's end and the run's completion:
    # either the pause is refused because the run completed, or the run is paused and
    # completes after resume.
    state = await start(engine, {"id": "wf", "steps": [{"id": "a", "action": "noop"}]})
    for _ in range(yields):
        await asyncio.sleep(0)
    try:
        paused = await engine.pause_execution(state.id)
    except IllegalTransition:
        assert (await engine.wait_for(state.id)).status is ES.COMPLETED
        return
    assert paused.status is ES.PAUSED
    await asyncio.sleep(10)
    assert (await engine.get_execution(state.id)).status is ES.PAUSED
    await engine.resume_execution(state.id)
    assert (await engine.wait_for(state.id)).status is ES.COMPLETED

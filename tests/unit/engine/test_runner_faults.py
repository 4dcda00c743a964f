"""The runner under stops, failed writes, slot pressure and commands: each test is one way
the engine's promise broke (a cancel lost, a step run twice or with stale inputs, a
handler's child never run, a deadlock), kept so it cannot come back."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from typing import Any

import pytest

from engine_service.core.engine import Engine, EngineConfig
from engine_service.core.errors import StorageError
from engine_service.core.memory_store import InMemoryStore
from engine_service.core.state import (
    EventKind,
    ExecutionEvent,
    ExecutionState,
    ExecutionStatus,
    StepStatus,
)
from engine_service.core.store import ExecutionQuery
from tests.unit.engine.conftest import EngineFactory
from tests.unit.engine.scheduler_harness import (
    TENANT,
    FailingStore,
    Probe,
    new_engine,
    restart,
    run,
    settle,
    start,
)

pytestmark = pytest.mark.looptime

ES = ExecutionStatus
SS = StepStatus


async def children_of(engine: Engine, parent_id: str) -> list[ExecutionState]:
    page = await engine.list_executions(ExecutionQuery(parent_execution_id=parent_id))
    return list(page.items)


class FailsTerminalWrite(InMemoryStore):
    """The first write of a run's ending fails, as if the process died just before it."""

    def __init__(self) -> None:
        super().__init__()
        self.failed = False

    async def append(
        self, state: ExecutionState, events: Sequence[ExecutionEvent], *, epoch: int = 0
    ) -> None:
        ending = any(
            e.execution_status is not None and e.execution_status.is_terminal for e in events
        )
        if ending and not self.failed:
            self.failed = True
            raise StorageError("the process died before this write")
        await super().append(state, events, epoch=epoch)


class DiesAfterFallback(InMemoryStore):
    """Every write after the one carrying a fallback's outcome fails until `revive`."""

    def __init__(self) -> None:
        super().__init__()
        self.dead = False

    async def append(
        self, state: ExecutionState, events: Sequence[ExecutionEvent], *, epoch: int = 0
    ) -> None:
        if self.dead:
            raise StorageError("process died")
        await super().append(state, events, epoch=epoch)
        if any(e.kind is EventKind.STEP_FALLBACK_FINISHED for e in events):
            self.dead = True


SLOW_THEN_SHIP = {
    "id": "order",
    "steps": [
        {"id": "charge", "action": "probe", "parameters": {"seconds": 100}},
        {"id": "ship", "action": "probe", "depends_on": ["charge"]},
    ],
}


# ---- a decided ending is final ---------------------------------------------------------


async def test_a_cancel_whose_ending_write_failed_ends_cancelled(
    engines: EngineFactory, probe: Probe
) -> None:
    store = FailsTerminalWrite()
    first = engines(store)
    state = await start(first, SLOW_THEN_SHIP)
    await asyncio.sleep(1)
    answer = await first.cancel_execution(state.id, reason="user said stop")
    assert answer.status is ES.CANCELLED
    second = await restart(engines, first, store)
    final = await second.wait_for(state.id)
    assert final.status is ES.CANCELLED
    assert final.error is not None
    assert final.error.message == "user said stop"
    assert probe.attempts("ship") == []


async def test_a_timed_out_run_whose_ending_write_failed_ends_timed_out(
    engines: EngineFactory, probe: Probe
) -> None:
    store = FailsTerminalWrite()
    first = engines(store)
    state = await start(first, {**SLOW_THEN_SHIP, "timeout": "5s"})
    stopped = await first.wait_for(state.id)
    # Nothing of the ending was written: the steps' CANCELLED travels with it.
    assert stopped.status is ES.RUNNING
    assert stopped.steps["charge"].status is SS.RUNNING
    second = await restart(engines, first, store)
    final = await second.wait_for(state.id)
    assert final.status is ES.TIMED_OUT
    # The deadline had passed: the lost attempt is not started again.
    assert probe.attempts("charge") == [1]
    assert probe.attempts("ship") == []


async def test_a_failed_fallback_then_a_restart_ends_failed_and_compensates(
    engines: EngineFactory, probe: Probe
) -> None:
    definition = {
        "id": "saga",
        "on_failure": "COMPENSATE",
        "steps": [
            {
                "id": "book",
                "action": "probe",
                "compensate": {"action": "probe", "parameters": {"output": "unbooked"}},
            },
            {
                "id": "a",
                "action": "probe",
                "depends_on": ["book"],
                "parameters": {"fail": "Boom"},
                "fallback": {"action": "probe", "parameters": {"fail": "AlsoBoom"}},
            },
            {"id": "b", "action": "probe", "depends_on": ["a"]},
        ],
    }
    store = DiesAfterFallback()
    first = engines(store)
    state = await start(first, definition)
    stopped = await first.wait_for(state.id)
    assert stopped.status is ES.RUNNING
    assert stopped.steps["a"].fallback_used
    store.dead = False
    second = await restart(engines, first, store)
    final = await second.wait_for(state.id)
    assert final.status is ES.FAILED
    assert final.error is not None
    assert final.error.type == "AlsoBoom"
    assert final.steps["book"].compensated
    assert final.steps["b"].status is SS.CANCELLED


# ---- handlers' children ------------------------------------------------------------------


async def _register_children(engine: Engine) -> None:
    for workflow_id, step_id, output in [
        ("book", "b", {"booked": True}),
        ("unbook", "u", {"unbooked": True}),
        ("primary", "p", None),
        ("backup", "k", {"ok": True}),
    ]:
        parameters: dict[str, Any] = {"output": output} if output else {"fail": "Down"}
        definition = {
            "id": workflow_id,
            "steps": [{"id": step_id, "action": "probe", "parameters": parameters}],
        }
        await engine.register_workflow(definition, TENANT)


async def test_a_compensation_through_a_workflow_runs_its_own_child(
    engines: EngineFactory, probe: Probe
) -> None:
    engine = engines()
    await _register_children(engine)
    final, events = await run(
        engine,
        {
            "id": "saga",
            "on_failure": "COMPENSATE",
            "steps": [
                {
                    "id": "reserve",
                    "action": "workflow",
                    "parameters": {"workflow_id": "book"},
                    "compensate": {"action": "workflow", "parameters": {"workflow_id": "unbook"}},
                },
                {
                    "id": "pay",
                    "action": "probe",
                    "depends_on": ["reserve"],
                    "parameters": {"fail": "No"},
                },
            ],
        },
    )
    assert final.status is ES.FAILED
    assert probe.attempts("u") == [1]
    (compensation,) = [e for e in events if e.kind is EventKind.STEP_COMPENSATION_FINISHED]
    assert compensation.output["outputs"] == {"u": {"unbooked": True}}
    kids = {c.workflow_id: c for c in await children_of(engine, final.id)}
    assert sorted(kids) == ["book", "unbook"]
    assert compensation.child_execution_id == kids["unbook"].id


async def test_a_fallback_through_a_workflow_runs_its_own_child(
    engines: EngineFactory, probe: Probe
) -> None:
    engine = engines()
    await _register_children(engine)
    final, _ = await run(
        engine,
        {
            "id": "wf",
            "steps": [
                {
                    "id": "fetch",
                    "action": "workflow",
                    "parameters": {"workflow_id": "primary"},
                    "fallback": {"action": "workflow", "parameters": {"workflow_id": "backup"}},
                }
            ],
        },
    )
    assert final.status is ES.COMPLETED
    assert final.steps["fetch"].output["outputs"] == {"k": {"ok": True}}
    kids = sorted((c.workflow_id, c.status) for c in await children_of(engine, final.id))
    assert kids == [("backup", ES.COMPLETED), ("primary", ES.FAILED)]


async def test_a_fallback_child_survives_a_restart_without_starting_twice(
    engines: EngineFactory, probe: Probe
) -> None:
    first = engines()
    await first.register_workflow(
        {
            "id": "slow_backup",
            "steps": [{"id": "k", "action": "probe", "parameters": {"seconds": 10}}],
        },
        TENANT,
    )
    state = await start(
        first,
        {
            "id": "wf",
            "steps": [
                {
                    "id": "fetch",
                    "action": "probe",
                    "parameters": {"fail": "Down"},
                    "fallback": {
                        "action": "workflow",
                        "parameters": {"workflow_id": "slow_backup"},
                    },
                }
            ],
        },
    )
    await asyncio.sleep(1)
    second = await restart(engines, first, first.store)
    final = await second.wait_for(state.id)
    assert final.status is ES.COMPLETED
    (child,) = await children_of(second, state.id)
    assert child.status is ES.COMPLETED
    assert final.steps["fetch"].child_execution_id == child.id


# ---- slots and children ------------------------------------------------------------------


CHILD = {"id": "child", "steps": [{"id": "work", "action": "noop"}]}
PARENT = {
    "id": "parent",
    "steps": [{"id": "sub", "action": "workflow", "parameters": {"workflow_id": "child"}}],
}


async def test_parents_waiting_for_children_hold_no_engine_slot(engines: EngineFactory) -> None:
    engine = engines(config=EngineConfig(max_concurrent_steps=2))
    await engine.register_workflow(CHILD, TENANT)
    await engine.register_workflow(PARENT, TENANT)
    ids = [(await engine.start_execution(TENANT, "parent"))[0].id for _ in range(4)]
    async with asyncio.timeout(3600):
        finals = [await engine.wait_for(i) for i in ids]
    assert [f.status for f in finals] == [ES.COMPLETED] * 4


# Four times the default 256 slots here; `make soak` runs 10,000 (about 45 s).
WAITING_PARENTS = int(os.environ.get("STEPSTREAM_SOAK_WAITING_PARENTS", "1000"))


async def test_many_more_waiting_parents_than_slots_complete_on_the_default_settings(
    engines: EngineFactory,
) -> None:
    engine = engines()
    assert engine.config.max_concurrent_steps < WAITING_PARENTS
    await engine.register_workflow(CHILD, TENANT)
    await engine.register_workflow(PARENT, TENANT)
    ids = [(await engine.start_execution(TENANT, "parent"))[0].id for _ in range(WAITING_PARENTS)]
    async with asyncio.timeout(3600):
        finals = [await engine.wait_for(i) for i in ids]
    assert {f.status for f in finals} == {ES.COMPLETED}


async def test_a_parent_stopped_by_a_failed_write_leaves_its_child_running(
    engines: EngineFactory, probe: Probe
) -> None:
    store = FailingStore("quick", SS.COMPLETED)
    first = engines(store)
    await first.register_workflow(
        {
            "id": "child",
            "steps": [{"id": "wait", "action": "probe", "parameters": {"seconds": 100}}],
        },
        TENANT,
    )
    parent = await start(
        first,
        {
            "id": "parent",
            "steps": [
                {"id": "sub", "action": "workflow", "parameters": {"workflow_id": "child"}},
                {"id": "quick", "action": "probe", "parameters": {"seconds": 1}},
            ],
        },
    )
    await asyncio.sleep(2)
    (child,) = await children_of(first, parent.id)
    assert (await first.get_execution(child.id)).status is ES.RUNNING
    second = await restart(engines, first, store)
    final = await second.wait_for(parent.id)
    assert final.status is ES.COMPLETED
    assert (await second.get_execution(child.id)).status is ES.COMPLETED
    # The re-run step took over the same child rather than a cancelled one or a second.
    assert [c.id for c in await children_of(second, parent.id)] == [child.id]
    assert final.steps["sub"].child_execution_id == child.id


async def test_a_cancel_reaches_a_child_another_engine_drives(
    engines: EngineFactory, probe: Probe
) -> None:
    store = InMemoryStore()
    config = EngineConfig(commands_across_processes=True)
    first = engines(store, config=config)
    await first.register_workflow(
        {
            "id": "child",
            "steps": [{"id": "wait", "action": "probe", "parameters": {"seconds": 100}}],
        },
        TENANT,
    )
    parent = await start(first, PARENT)
    await asyncio.sleep(1)
    (child,) = await children_of(first, parent.id)
    await first.stop()
    b, c = engines(store, config=config), engines(store, config=config)
    await b.adopt(await store.get_execution(parent.id))
    await c.adopt(await store.get_execution(child.id))
    await asyncio.sleep(1)
    assert (await b.cancel_execution(parent.id)).status is ES.CANCELLED
    loop = asyncio.get_running_loop()
    cancelled_at = loop.time()
    ended = await c.wait_for(child.id)
    assert ended.status is ES.CANCELLED
    assert loop.time() - cancelled_at < 1.0


# ---- recovery drives like any run -----------------------------------------------------


async def test_a_recovered_fallback_does_not_hold_up_dispatch_or_a_cancel(
    engines: EngineFactory, probe: Probe
) -> None:
    definition = {
        "id": "wf",
        "timeout": "30s",
        "steps": [
            {
                "id": "a",
                "action": "probe",
                "parameters": {"fail": "Boom"},
                "fallback": {"action": "probe", "parameters": {"seconds": 100}},
            },
            {"id": "b", "action": "probe", "parameters": {"seconds": 1}},
            {"id": "c", "action": "probe", "parameters": {"seconds": 2}, "depends_on": ["b"]},
        ],
    }
    first = engines()
    state = await start(first, definition)
    await asyncio.sleep(0.5)
    second = await restart(engines, first, first.store)
    await asyncio.sleep(2)
    during = await second.get_execution(state.id)
    assert during.steps["b"].status is SS.COMPLETED
    assert during.steps["c"].status is SS.RUNNING
    loop = asyncio.get_running_loop()
    asked = loop.time()
    assert (await second.cancel_execution(state.id)).status is ES.CANCELLED
    assert loop.time() - asked < 1.0


async def test_a_recovered_fallback_does_not_hold_up_the_workflow_timeout(
    engines: EngineFactory,
) -> None:
    definition = {
        "id": "wf",
        "timeout": "30s",
        "steps": [
            {
                "id": "a",
                "action": "probe",
                "parameters": {"fail": "Boom"},
                "fallback": {"action": "probe", "parameters": {"seconds": 100}},
            }
        ],
    }
    first = engines()
    state = await start(first, definition)
    await asyncio.sleep(0.5)
    second = await restart(engines, first, first.store)
    final = await second.wait_for(state.id)
    assert final.status is ES.TIMED_OUT
    assert final.finished_at is not None
    assert final.started_at is not None
    assert (final.finished_at - final.started_at).total_seconds() == pytest.approx(30)


# ---- restarts and the retry budget ----------------------------------------------------


FLAKY = {
    "id": "wf",
    "steps": [
        {
            "id": "a",
            "action": "probe",
            "parameters": {"seconds": 5, "fail": "Flaky"},
            "retry": {"max_attempts": 2, "initial_interval": "1s"},
        }
    ],
}


async def test_an_attempt_lost_to_a_restart_uses_none_of_the_retry_budget(
    engines: EngineFactory, probe: Probe
) -> None:
    first = engines()
    state = await start(first, FLAKY)
    await asyncio.sleep(1)
    second = await restart(engines, first, first.store)
    final = await second.wait_for(state.id)
    assert final.status is ES.FAILED
    # The lost attempt 1, then two genuine attempts, as without the restart.
    assert probe.attempts("a") == [1, 2, 3]
    assert final.steps["a"].lost_attempts == 1


async def test_a_single_attempt_step_lost_mid_run_runs_again(
    engines: EngineFactory, probe: Probe
) -> None:
    definition = {
        "id": "wf",
        "steps": [{"id": "a", "action": "probe", "parameters": {"seconds": 5}}],
    }
    first = engines()
    state = await start(first, definition)
    await asyncio.sleep(1)
    second = await restart(engines, first, first.store)
    final = await second.wait_for(state.id)
    assert final.status is ES.COMPLETED
    assert probe.attempts("a") == [1, 2]


async def test_a_step_that_keeps_killing_the_engine_fails_after_the_lost_attempt_limit(
    engines: EngineFactory, probe: Probe
) -> None:
    definition = {
        "id": "wf",
        "steps": [{"id": "a", "action": "probe", "parameters": {"seconds": 5}}],
    }
    config = EngineConfig(max_lost_attempts=2)
    engine = engines(config=config)
    state = await start(engine, definition)
    for _ in range(3):
        await asyncio.sleep(1)
        engine = await restart(lambda s: engines(s, config=config), engine, engine.store)
    final = await engine.wait_for(state.id)
    assert final.status is ES.FAILED
    assert final.error is not None
    assert final.error.type == "EngineRestarted"
    assert probe.attempts("a") == [1, 2, 3]


# ---- parameters resolve when the attempt starts ---------------------------------------


async def test_a_step_decided_before_a_pause_runs_with_the_resumed_inputs() -> None:
    engine = new_engine()
    state = await start(
        engine,
        {
            "id": "wf",
            "steps": [
                {"id": "a", "action": "echo", "parameters": {"x": "${inputs.x}"}},
                {"id": "b", "action": "echo", "parameters": {"y": "${inputs.y}"}},
            ],
        },
        inputs={"x": 1},
    )
    await settle()
    paused = await engine.get_execution(state.id)
    assert paused.status is ES.PAUSED
    await engine.resume_execution(state.id, inputs={"y": 2, "x": 99})
    final = await engine.wait_for(state.id)
    assert final.steps["a"].output == {"x": 99}
    assert final.steps["b"].output == {"y": 2}
    await engine.stop()


# ---- an accepted command survives the runner ------------------------------------------


async def test_an_accepted_cancel_survives_a_runner_that_died_on_an_unexpected_error(
    engines: EngineFactory, probe: Probe
) -> None:
    class BreaksOnCancel(InMemoryStore):
        """The first write of a CANCELLED raises what no store should (a bug)."""

        broke = False

        async def append(
            self, state: ExecutionState, events: Sequence[ExecutionEvent], *, epoch: int = 0
        ) -> None:
            if not self.broke and any(e.execution_status is ES.CANCELLED for e in events):
                self.broke = True
                raise ValueError("unexpected")
            await super().append(state, events, epoch=epoch)

    store = BreaksOnCancel()
    engine = engines(store)
    state = await start(engine, SLOW_THEN_SHIP)
    await asyncio.sleep(1)
    cancel = asyncio.create_task(engine.cancel_execution(state.id, reason="stop"))
    await asyncio.sleep(10)
    assert store.broke
    # The runner died; the next lease round (here: the engine's own) drives it again.
    assert await engine.resume_stopped(None) == 1
    answer = await cancel
    assert answer.status is ES.CANCELLED
    assert (await store.get_execution(state.id)).status is ES.CANCELLED
    assert probe.attempts("ship") == []


# ---- found by the fault simulator -----------------------------------------------------


class FailsOneWrite(InMemoryStore):
    """Fails the first append (once `armed`) with `step_id` reaching `status`."""

    def __init__(self, step_id: str, status: StepStatus) -> None:
        super().__init__()
        self.step_id, self.status = step_id, status
        self.armed = False

    async def append(
        self, state: ExecutionState, events: Sequence[ExecutionEvent], *, epoch: int = 0
    ) -> None:
        hit = any(e.step_id == self.step_id and e.step_status is self.status for e in events)
        if self.armed and hit:
            self.armed = False
            raise StorageError("the process died before this write")
        await super().append(state, events, epoch=epoch)


SLOW_CHILD = {
    "id": "child",
    "steps": [{"id": "wait", "action": "probe", "parameters": {"seconds": 10}}],
}


async def test_a_lost_attempts_child_is_taken_over_by_whichever_process_reruns_it(
    engines: EngineFactory,
) -> None:
    """Sim seed 142: the process that recorded the lost attempt died before re-running it;
    the next one must still take over the lost attempt's child, not start a second."""
    store = FailsOneWrite("sub", SS.RUNNING)
    first = engines(store)
    await first.register_workflow(SLOW_CHILD, TENANT)
    parent = await start(first, PARENT)
    await asyncio.sleep(1)
    await first.stop()
    store.armed = True  # the recovering process records the lost attempt, then dies
    second = engines(store)
    await second.start()
    await settle()
    assert (await store.get_execution(parent.id)).steps["sub"].status is SS.RETRYING
    await second.stop()
    third = engines(store)
    await third.start()
    final = await third.wait_for(parent.id)
    assert final.status is ES.COMPLETED
    children = await children_of(third, parent.id)
    assert len(children) == 1
    assert final.steps["sub"].child_execution_id == children[0].id


async def test_a_timed_out_attempts_child_is_cancelled_only_once_the_timeout_is_durable(
    engines: EngineFactory,
) -> None:
    """Sim seed 1971: cancelling the child before the attempt's TIMED_OUT was stored left a
    cancelled child for a cause the history did not show."""
    store = FailsOneWrite("sub", SS.TIMED_OUT)
    store.armed = True
    engine = engines(store)
    await engine.register_workflow(SLOW_CHILD, TENANT)
    definition = {
        "id": "parent",
        "steps": [
            {
                "id": "sub",
                "action": "workflow",
                "timeout": "2s",
                "parameters": {"workflow_id": "child"},
            }
        ],
    }
    parent = await start(engine, definition)
    await asyncio.sleep(2.5)
    assert not store.armed  # the TIMED_OUT write failed
    (child,) = await children_of(engine, parent.id)
    assert (await store.get_execution(child.id)).status is ES.RUNNING

"""The simulation's clients: they start the runs, send the commands, and resume what
waits for inputs, calling a live process's engine as the gRPC servicer would."""

from __future__ import annotations

import asyncio
import functools
import random
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from engine_service.core.commands import CommandNotTaken
from engine_service.core.engine import Engine
from engine_service.core.errors import IllegalTransition, NotFound
from engine_service.core.state import ExecutionState, ExecutionStatus
from tests.sim.record import CommandLog
from tests.sim.tasks import Tasks
from tests.sim.workflows import LATE_VALUE, CommandPlan, Scenario


class Live(Protocol):
    tag: str
    engine: Engine


class Cluster(Protocol):
    """What clients see of the world."""

    scenario: Scenario
    seed: int
    tenant: str
    tasks: Tasks
    roots: list[str | None]
    commands: list[CommandLog]
    problems: list[tuple[str, str]]

    def live(self, preferred: int) -> Live | None: ...

    async def call(
        self,
        process: Any,
        call: Callable[[], Awaitable[Any]],
        within: float | None = None,
        deadline: tuple[float, int] | None = None,
    ) -> Any: ...

    async def states(self) -> list[ExecutionState]: ...


async def start_root(world: Cluster, index: int) -> None:
    plan = world.scenario.roots[index]
    for _ in range(200):
        process = world.live(plan.process)
        if process is not None:
            started = await world.call(
                process,
                functools.partial(
                    process.engine.start_execution,
                    world.tenant,
                    plan.workflow_id,
                    inputs=plan.inputs,
                    idempotency_key=f"sim{world.seed}-root-{index}",
                ),
            )
            if isinstance(started, tuple):
                world.roots[index] = started[0].id
                return
            if isinstance(started, NotFound):
                world.roots[index] = ""  # its definition was refused
                return
        await asyncio.sleep(0.5)
    world.problems.append(("every-run-starts", f"root {index} could not be started"))
    world.roots[index] = ""


async def send_command(world: Cluster, plan: CommandPlan) -> None:
    target = world.roots[plan.root]
    if target and plan.child:
        target = await _descendant(world, target, plan)
    process = world.live(plan.process)
    if not target or process is None:
        return
    log = CommandLog(
        plan.kind,
        target,
        plan.root,
        process.tag,
        _now(),
        local=target in process.engine.driven_executions,
    )
    world.commands.append(log)
    engine = process.engine
    call = (
        functools.partial(engine.cancel_execution, target, reason="the simulation cancels")
        if plan.kind == "cancel"
        else functools.partial(engine.pause_execution, target)
        if plan.kind == "pause"
        else functools.partial(engine.resume_execution, target, inputs=plan.inputs)
    )
    deadline = (plan.give_up, plan.give_up_turns) if plan.give_up >= 0 else None
    outcome = await world.call(process, call, deadline=deadline)
    log.returned = _now()
    log.result = _describe(outcome)
    if isinstance(outcome, ExecutionState):
        log.status = outcome.status


async def operator(world: Cluster) -> None:
    """Resumes runs paused for inputs, and runs a pause left paused once every
    planned command was sent: someone always answers a paused run."""
    last_command = max((c.at for c in world.scenario.commands), default=0.0)
    busy: set[str] = set()
    while True:
        await asyncio.sleep(2.0)
        for state in await world.states():
            if state.status is not ExecutionStatus.PAUSED or state.id in busy:
                continue
            if not state.missing_inputs and _now() < last_command + 3:
                continue
            process = world.live(0)
            if process is None:
                continue
            busy.add(state.id)
            # Missing inputs are named as referenced: `inputs.late`.
            inputs = {name.split(".")[1]: LATE_VALUE for name in state.missing_inputs}
            call = functools.partial(process.engine.resume_execution, state.id, inputs=inputs)
            task = world.tasks.spawn_driver(world.call(process, call))
            task.add_done_callback(functools.partial(_done, busy, state.id))


async def _descendant(world: Cluster, root: str, plan: CommandPlan) -> str:
    """An unfinished descendant of `root`, drawn from the plan (so the same each run)."""
    states = await world.states()
    found, frontier = [], [root]
    while frontier:
        parent = frontier.pop()
        children = sorted(s.id for s in states if s.parent_execution_id == parent)
        frontier += children
        found += [s for s in states if s.id in children and not s.status.is_terminal]
    if not found:
        return ""
    found.sort(key=lambda s: (s.depth, s.created_at, s.workflow_id, s.parent_step_id))
    return random.Random(f"{world.seed}-{plan.at}").choice(found).id


def _done(busy: set[str], execution_id: str, _task: object) -> None:
    busy.discard(execution_id)


def _now() -> float:
    return asyncio.get_running_loop().time()


def _describe(outcome: Any) -> str:
    if isinstance(outcome, ExecutionState):
        return f"returned {outcome.status}"
    if isinstance(outcome, asyncio.CancelledError):
        return "lost (its process died, or its client gave up)"
    if isinstance(outcome, IllegalTransition):
        return f"refused ({outcome.current})"
    if isinstance(outcome, CommandNotTaken):
        return "not taken in time"
    return f"raised {type(outcome).__name__}: {outcome}"

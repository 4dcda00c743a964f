"""Helpers for the scheduler tests: a probe action, running a workflow, reading its events.

Tests run on virtual time (looptime), so `asyncio.sleep` inside actions and the engine's
backoff and timeouts complete instantly and at exact loop times.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from engine_service.core.actions import ActionContext, ActionError, ActionRegistry, builtin_actions
from engine_service.core.clock import LoopClock
from engine_service.core.engine import Engine, EngineConfig
from engine_service.core.errors import StorageError
from engine_service.core.memory_store import InMemoryStore
from engine_service.core.state import (
    EventKind,
    ExecutionEvent,
    ExecutionState,
    StepStatus,
    blank,
    replay,
)
from engine_service.core.store import ExecutionStore

TENANT = "default"
SECRETS: Mapping[str, str] = {"API_KEY": "s3cr3t-value", "OTHER": "hunter2"}


@dataclass
class Probe:
    """An action that records its calls and how many run at once.

    Parameters: `seconds` to sleep, `fail` (an error type) to raise, `output` to return.
    A step whose id is in `gates` blocks until its gate is set.
    """

    running: int = 0
    peak: int = 0
    calls: list[tuple[str, int]] = field(default_factory=list)
    gates: dict[str, asyncio.Event] = field(default_factory=dict)
    seen_parameters: dict[str, list[Any]] = field(default_factory=dict)

    async def __call__(self, parameters: Mapping[str, Any], context: ActionContext) -> Any:
        self.running += 1
        self.peak = max(self.peak, self.running)
        self.calls.append((context.step_id, context.attempt))
        self.seen_parameters.setdefault(context.step_id, []).append(parameters)
        try:
            gate = self.gates.get(context.step_id)
            if gate is not None:
                await gate.wait()
            await asyncio.sleep(float(parameters.get("seconds", 0)))
            if parameters.get("fail"):
                raise ActionError("probe failed", error_type=str(parameters["fail"]))
            return parameters.get("output", {"step": context.step_id})
        finally:
            self.running -= 1

    def gate(self, step_id: str) -> asyncio.Event:
        return self.gates.setdefault(step_id, asyncio.Event())

    def attempts(self, step_id: str) -> list[int]:
        return [attempt for called, attempt in self.calls if called == step_id]


def registry_with(probe: Probe, **extra: Any) -> ActionRegistry:
    registry = builtin_actions()
    registry.register("probe", probe)
    for name, action in extra.items():
        registry.register(name, action)
    return registry


def new_engine(
    store: ExecutionStore | None = None,
    *,
    actions: ActionRegistry | None = None,
    config: EngineConfig | None = None,
    secrets: Mapping[str, str] = SECRETS,
    seed: int = 0,
) -> Engine:
    return Engine(
        store if store is not None else InMemoryStore(),
        actions=actions,
        config=config,
        clock=LoopClock(),
        secrets=secrets,
        rng=random.Random(seed),
    )


async def start(
    engine: Engine,
    definition: Mapping[str, Any],
    inputs: Mapping[str, Any] | None = None,
) -> ExecutionState:
    await engine.register_workflow(definition, TENANT)
    state, created = await engine.start_execution(TENANT, str(definition["id"]), inputs=inputs)
    assert created
    return state


async def run(
    engine: Engine,
    definition: Mapping[str, Any],
    inputs: Mapping[str, Any] | None = None,
) -> tuple[ExecutionState, list[ExecutionEvent]]:
    """Register `definition`, run it to the end; the final state and every event."""
    state = await start(engine, definition, inputs)
    final = await engine.wait_for(state.id)
    return final, await engine.read_events(state.id)


async def settle(rounds: int = 20) -> None:
    """Let every ready task run (virtual time does not advance)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


async def wait_until_step(
    engine: Engine, execution_id: str, step_id: str, status: StepStatus
) -> None:
    """Advance (virtual) time until the step reaches `status`."""
    for _ in range(10_000):
        state = await engine.get_execution(execution_id)
        if state.steps[step_id].status is status:
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"step {step_id} never reached {status}")


def step_events(events: Sequence[ExecutionEvent], step_id: str = "") -> list[ExecutionEvent]:
    return [
        e
        for e in events
        if e.kind is EventKind.STEP_STATUS_CHANGED and (not step_id or e.step_id == step_id)
    ]


def statuses(events: Sequence[ExecutionEvent], step_id: str) -> list[StepStatus]:
    return [e.step_status for e in step_events(events, step_id) if e.step_status is not None]


def started_order(events: Sequence[ExecutionEvent]) -> list[str]:
    return [e.step_id for e in step_events(events) if e.step_status is StepStatus.RUNNING]


def seconds(event: ExecutionEvent, origin: ExecutionEvent) -> float:
    return (event.timestamp - origin.timestamp).total_seconds()


def replayed(final: ExecutionState, events: Sequence[ExecutionEvent]) -> ExecutionState:
    """Fold every event from a blank state: raises IllegalTransition on a forbidden move."""
    return replay(blank(final), list(events))


class FailingStore(InMemoryStore):
    """Fails the first append whose events include `step_id` reaching `status`."""

    def __init__(self, step_id: str, status: StepStatus) -> None:
        super().__init__()
        self.step_id = step_id
        self.status = status
        self.failed = False

    async def append(
        self, state: ExecutionState, events: Sequence[ExecutionEvent], *, epoch: int = 0
    ) -> None:
        if not self.failed and any(
            e.step_id == self.step_id and e.step_status is self.status for e in events
        ):
            self.failed = True
            raise StorageError("disk full")
        await super().append(state, events, epoch=epoch)


async def restart(engines: Callable[..., Engine], first: Engine, store: ExecutionStore) -> Engine:
    """Stop `first` and start a new engine on the same store, as after a process restart."""
    await first.stop()
    second = engines(store)
    await second.start()
    return second

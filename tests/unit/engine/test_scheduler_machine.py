"""A RuleBasedStateMachine drives start / pause / resume / cancel / step outcomes against
the real engine and a small model of the rules; after every rule they must agree, and
commands the model forbids must raise IllegalTransition."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

import looptime
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from engine_service.core.errors import IllegalTransition
from engine_service.core.state import ExecutionStatus, StepStatus
from tests.unit.engine.scheduler_harness import TENANT, Probe, new_engine, registry_with

ES = ExecutionStatus
SS = StepStatus
T = TypeVar("T")

# a -> b, and c on its own; every step waits for the machine to release it.
DEPENDS_ON = {"a": (), "b": ("a",), "c": ()}
DEFINITION = {
    "id": "wf",
    "steps": [
        {"id": step, "action": "probe", "depends_on": list(deps)}
        for step, deps in DEPENDS_ON.items()
    ],
}


class SchedulerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = looptime.new_event_loop(start=0.0)
        self.probe = Probe()
        for step in DEPENDS_ON:
            self.probe.gate(step)
        self.engine = new_engine(actions=registry_with(self.probe))
        self.execution_id = ""
        self.released: set[str] = set()
        self.status: ExecutionStatus | None = None
        self.steps = dict.fromkeys(DEPENDS_ON, SS.PENDING)
        self.ran: set[str] = set()

    def run(self, awaitable: Awaitable[T]) -> T:
        return self.loop.run_until_complete(awaitable)

    async def _settle(self) -> None:
        for _ in range(50):
            await asyncio.sleep(0)

    def settle(self) -> None:
        self.run(self._settle())
        self.propagate()

    # -- the model -------------------------------------------------------------------

    def propagate(self) -> None:
        """What the rules say happens next, until nothing changes."""
        changed = True
        while changed:
            changed = False
            if self.status is ES.RUNNING:
                for step, deps in DEPENDS_ON.items():
                    if self.steps[step] is SS.PENDING and all(
                        self.steps[d] is SS.COMPLETED for d in deps
                    ):
                        self.steps[step] = SS.RUNNING
                        self.ran.add(step)
                        changed = True
            for step, status in self.steps.items():
                if status is SS.RUNNING and step in self.released:
                    self.steps[step] = SS.COMPLETED
                    changed = True
            if self.status is ES.RUNNING and all(s is SS.COMPLETED for s in self.steps.values()):
                self.status = ES.COMPLETED
                changed = True

    @property
    def started(self) -> bool:
        return self.status is not None

    @property
    def ended(self) -> bool:
        return self.status is not None and self.status.is_terminal

    def expect_refusal(self, command: Any) -> None:
        with pytest.raises(IllegalTransition):
            self.run(command(self.execution_id))

    # -- rules -----------------------------------------------------------------------

    @precondition(lambda self: not self.started)
    @rule()
    def start(self) -> None:
        async def begin() -> str:
            await self.engine.register_workflow(DEFINITION, TENANT)
            state, _ = await self.engine.start_execution(TENANT, "wf")
            return state.id

        self.execution_id = self.run(begin())
        self.status = ES.RUNNING
        self.settle()

    @precondition(lambda self: self.started)
    @rule()
    def pause(self) -> None:
        if self.status is ES.RUNNING:
            state = self.run(self.engine.pause_execution(self.execution_id))
            assert state.status is ES.PAUSED
            self.status = ES.PAUSED
        else:
            self.expect_refusal(self.engine.pause_execution)
        self.settle()

    @precondition(lambda self: self.started)
    @rule()
    def resume(self) -> None:
        if self.status is ES.PAUSED:
            state = self.run(self.engine.resume_execution(self.execution_id))
            assert state.status is ES.RUNNING
            self.status = ES.RUNNING
        else:
            self.expect_refusal(self.engine.resume_execution)
        self.settle()

    @precondition(lambda self: self.started)
    @rule()
    def cancel(self) -> None:
        if self.ended:
            self.expect_refusal(self.engine.cancel_execution)
        else:
            state = self.run(self.engine.cancel_execution(self.execution_id))
            assert state.status is ES.CANCELLED
            self.status = ES.CANCELLED
            for step, status in self.steps.items():
                if status in (SS.PENDING, SS.RUNNING):
                    self.steps[step] = SS.CANCELLED
        self.settle()

    @rule(step=st.sampled_from(sorted(DEPENDS_ON)))
    def release(self, step: str) -> None:
        """The step's action may finish (now, or as soon as it starts)."""
        self.released.add(step)
        self.probe.gate(step).set()
        self.settle()

    @rule(seconds=st.integers(1, 30))
    def time_passes(self, seconds: int) -> None:
        self.run(asyncio.sleep(seconds))
        self.settle()

    # -- agreement -------------------------------------------------------------------

    @invariant()
    def engine_agrees_with_the_model(self) -> None:
        if not self.started:
            return
        state = self.run(self.engine.get_execution(self.execution_id))
        assert state.status is self.status
        assert {step: s.status for step, s in state.steps.items()} == self.steps
        assert {step for step, _ in self.probe.calls} == self.ran
        assert self.probe.running == sum(s is SS.RUNNING for s in self.steps.values())

    def teardown(self) -> None:
        try:
            self.run(self.engine.stop())
        finally:
            self.loop.close()


SchedulerMachine.TestCase.settings = settings(
    max_examples=40, stateful_step_count=25, deadline=None
)
TestSchedulerMachine = SchedulerMachine.TestCase

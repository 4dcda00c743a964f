"""A settable clock, a gated action and an engine for the schedule tests."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from engine_service.core.actions import ActionContext, builtin_actions
from engine_service.core.engine import Engine
from engine_service.core.schedules import Schedule
from engine_service.core.state import ExecutionState
from engine_service.core.store import ExecutionQuery, ExecutionStore

TENANT = "default"
GATED = {"id": "gated", "steps": [{"id": "wait", "action": "gate"}]}
QUICK = {"id": "quick", "steps": [{"id": "only", "action": "noop"}]}


class FakeClock:
    """Wall-clock time that moves only when a test says so."""

    def __init__(self, now: datetime) -> None:
        self._now = now

    def now(self) -> datetime:
        return self._now

    def set(self, now: datetime) -> None:
        self._now = now

    def advance(self, **delta: float) -> datetime:
        self._now += timedelta(**delta)
        return self._now


@dataclass
class Gate:
    """An action that holds every run until the test opens the gate."""

    opened: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(self, parameters: Mapping[str, Any], context: ActionContext) -> Any:
        await self.opened.wait()
        return {}


def engine_on(store: ExecutionStore, clock: FakeClock, gate: Gate) -> Engine:
    actions = builtin_actions()
    actions.register("gate", gate)
    return Engine(store, actions=actions, clock=clock)


def spec(workflow_id: str, cron: str, **fields: Any) -> Schedule:
    """What a client asks for; the service fills in the id and the times."""
    return Schedule(
        id="", tenant=TENANT, workflow_id=workflow_id, cron=cron, created_at=datetime.min, **fields
    )


async def executions_of(engine: Engine, schedule_id: str) -> list[ExecutionState]:
    page = await engine.list_executions(ExecutionQuery(tenant=TENANT, page_size=1000))
    return sorted(
        (s for s in page.items if s.schedule_id == schedule_id), key=lambda s: s.created_at
    )


async def settle(rounds: int = 20) -> None:
    for _ in range(rounds):
        await asyncio.sleep(0)

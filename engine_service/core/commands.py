"""Cancel, pause and resume for an execution another engine process drives.

Only the process that holds an execution's lease may write its events, so a replica that
receives a command for an execution it does not drive stores the command; the driving
process applies it (woken by a notice, or on its next lease round, or right after it
claims the execution from a dead one) and records the outcome, which the receiving
replica waits for.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from engine_service.core.errors import EngineError


class CommandKind(enum.StrEnum):
    CANCEL = "CANCEL"
    PAUSE = "PAUSE"
    RESUME = "RESUME"


class CommandOutcome(enum.StrEnum):
    PENDING = "PENDING"
    APPLIED = "APPLIED"
    # The run could not take it (it ended meanwhile, say); `detail` names its status.
    REFUSED = "REFUSED"


@dataclass(frozen=True, slots=True)
class Command:
    id: str
    execution_id: str
    kind: CommandKind
    requested_at: datetime
    reason: str = ""
    inputs: Mapping[str, Any] = field(default_factory=dict)
    outcome: CommandOutcome = CommandOutcome.PENDING
    detail: str = ""


class CommandNotTaken(EngineError):
    """No process took the command in time; it stays stored and is applied once one
    drives the execution (e.g. after a dead replica's lease expires)."""

    def __init__(self, *, execution_id: str, kind: CommandKind, seconds: float) -> None:
        self.execution_id = execution_id
        super().__init__(
            f"{kind.value.lower()} of execution {execution_id} was recorded, but no engine "
            f"process applied it within {seconds:g}s; it will be applied once one drives it"
        )


async def until_decided(read: Callable[[], Awaitable[Command]]) -> Command:
    """Reads the command (`read()`) until it is decided; the caller bounds the wait."""
    delay = 0.01
    while (command := await read()).outcome is CommandOutcome.PENDING:
        await asyncio.sleep(delay)
        delay = min(2 * delay, 0.25)
    return command

"""Cancel, pause and resume for an execution another engine process drives.

Only the process that holds an execution's lease may write its events, so a replica that
receives a command for an execution it does not drive stores the command; the driving
process applies it (woken by a notice, or on its next lease round, or right after it
claims the execution from a dead one) and records the outcome, which the receiving
replica waits for.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from engine_service.core.clock import Clock
from engine_service.core.errors import (
    ConcurrentModification,
    EngineError,
    IllegalTransition,
    LeaseLost,
)
from engine_service.core.state import ExecutionStatus

if TYPE_CHECKING:
    from engine_service.core.runner import ExecutionRunner
    from engine_service.core.store import ExecutionStore


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


class CommandDesk:
    """Both ends of a command: builds one and waits for its outcome (the receiving
    process), and applies the stored ones to the runs this process drives."""

    def __init__(self, store: ExecutionStore, clock: Clock, *, timeout: float) -> None:
        self._store = store
        self._clock = clock
        self._timeout = timeout
        self._lock = asyncio.Lock()
        # Cancels applied here, by command id, waiting for their run to end.
        self._deciding: dict[str, asyncio.Task[None]] = {}

    def command(
        self,
        execution_id: str,
        kind: CommandKind,
        *,
        reason: str = "",
        inputs: Mapping[str, Any] | None = None,
    ) -> Command:
        return Command(
            id=str(uuid.uuid4()),
            execution_id=execution_id,
            kind=kind,
            requested_at=self._clock.now(),
            reason=reason,
            inputs=dict(inputs or {}),
        )

    async def outcome(self, command: Command) -> None:
        """Waits until the stored `command` is applied; IllegalTransition if the run
        refused it, CommandNotTaken if no process decided it in time."""
        try:
            async with asyncio.timeout(self._timeout):
                deciding = self._deciding.get(command.id)
                if deciding is not None:  # applied here: no need to poll the store meanwhile
                    await asyncio.shield(deciding)
                decided = await _until_decided(lambda: self._store.get_command(command.id))
        except TimeoutError:
            raise CommandNotTaken(
                execution_id=command.execution_id, kind=command.kind, seconds=self._timeout
            ) from None
        if decided.outcome is CommandOutcome.REFUSED:
            raise IllegalTransition(
                subject=f"execution {command.execution_id}",
                current=decided.detail,
                requested=_REQUESTED[command.kind],
            )

    async def apply(self, runners: Mapping[str, ExecutionRunner]) -> int:
        """Apply the pending commands for the executions in `runners`; how many."""
        async with self._lock:
            applied = 0
            for command in await self._store.pending_commands():
                runner = runners.get(command.execution_id)
                if runner is not None and command.id not in self._deciding:
                    await self._apply(runner, command)
                    applied += 1
            return applied

    async def deliver(self, runner: ExecutionRunner, command: Command) -> None:
        """Apply one stored command to a run this process drives, unless it is already
        being applied. A cancel takes effect at once, before anything else is awaited:
        no attempt starts once the cancel is stored."""
        if command.kind is CommandKind.CANCEL:
            with contextlib.suppress(IllegalTransition):  # refused below, with the store
                runner.request_cancel(command.reason)
        async with self._lock:
            if command.id not in self._deciding:
                await self._apply(runner, command)

    async def _apply(self, runner: ExecutionRunner, command: Command) -> None:
        try:
            if command.kind is CommandKind.CANCEL:
                runner.request_cancel(command.reason)
                # Applied once the run has ended: should this process die first, the
                # command is still pending for the one that takes the run over.
                task = asyncio.create_task(self._decide_when_ended(runner, command))
                self._deciding[command.id] = task
                task.add_done_callback(lambda _task: self._deciding.pop(command.id, None))
                return
            if command.kind is CommandKind.PAUSE:
                await runner.pause()
            else:
                await runner.resume(command.inputs)
        except (LeaseLost, ConcurrentModification):
            return  # another process drives the run now: the command waits for it
        except IllegalTransition as exc:
            await self._store.decide_command(command.id, CommandOutcome.REFUSED, str(exc.current))
        else:
            await self._store.decide_command(command.id, CommandOutcome.APPLIED)

    async def _decide_when_ended(self, runner: ExecutionRunner, command: Command) -> None:
        await runner.finished.wait()
        if (await self._store.get_execution(command.execution_id)).status.is_terminal:
            await self._store.decide_command(command.id, CommandOutcome.APPLIED)

    async def stop(self) -> None:
        tasks = list(self._deciding.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


# The status each command asks for, as a refusal names it.
_REQUESTED = {
    CommandKind.CANCEL: ExecutionStatus.CANCELLED,
    CommandKind.PAUSE: ExecutionStatus.PAUSED,
    CommandKind.RESUME: ExecutionStatus.RUNNING,
}


async def _until_decided(read: Callable[[], Awaitable[Command]]) -> Command:
    """Reads the command (`read()`) until it is decided; the caller bounds the wait."""
    delay = 0.01
    while (command := await read()).outcome is CommandOutcome.PENDING:
        await asyncio.sleep(delay)
        delay = min(2 * delay, 0.25)
    return command

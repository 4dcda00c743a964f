"""The command half of `SqlExecutionStore`: cancel, pause and resume requests for the
process that drives an execution (see `core.commands`).

On Postgres, storing a command also sends a notice on `COMMANDS_CHANNEL` (delivered at
commit), so the driving process applies it at once rather than on its next lease round.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from engine_service.core.commands import Command, CommandKind, CommandOutcome
from engine_service.core.errors import NotFound
from engine_service.storage.codec import as_utc
from engine_service.storage.models import execution_commands
from engine_service.storage.notices import COMMANDS_CHANNEL

_NOTIFY = text(f"SELECT pg_notify('{COMMANDS_CHANNEL}', :execution_id)")


class SqlCommandStore:
    """Mixed into `SqlExecutionStore`; uses its engine."""

    _engine: AsyncEngine

    async def add_command(self, command: Command) -> None:
        async with self._engine.begin() as connection:
            await connection.execute(
                insert(execution_commands).values(
                    id=command.id,
                    execution_id=command.execution_id,
                    kind=command.kind.value,
                    requested_at=command.requested_at,
                    reason=command.reason,
                    inputs=dict(command.inputs),
                    outcome=command.outcome.value,
                    detail=command.detail,
                )
            )
            if self._engine.dialect.name == "postgresql":
                await connection.execute(_NOTIFY, {"execution_id": command.execution_id})

    async def pending_commands(self) -> list[Command]:
        query = (
            select(execution_commands)
            .where(execution_commands.c.outcome == CommandOutcome.PENDING.value)
            .order_by(execution_commands.c.requested_at)
        )
        async with self._engine.connect() as connection:
            return [_command(row) for row in await connection.execute(query)]

    async def get_command(self, command_id: str) -> Command:
        query = select(execution_commands).where(execution_commands.c.id == command_id)
        async with self._engine.connect() as connection:
            row = (await connection.execute(query)).first()
        if row is None:
            raise NotFound(kind="command", key=command_id)
        return _command(row)

    async def decide_command(
        self, command_id: str, outcome: CommandOutcome, detail: str = ""
    ) -> bool:
        statement = (
            update(execution_commands)
            .where(
                execution_commands.c.id == command_id,
                execution_commands.c.outcome == CommandOutcome.PENDING.value,
            )
            .values(outcome=outcome.value, detail=detail)
        )
        async with self._engine.begin() as connection:
            return (await connection.execute(statement)).rowcount == 1


def _command(row: Any) -> Command:
    return Command(
        id=row.id,
        execution_id=row.execution_id,
        kind=CommandKind(row.kind),
        requested_at=as_utc(row.requested_at) or row.requested_at,
        reason=row.reason,
        inputs=row.inputs,
        outcome=CommandOutcome(row.outcome),
        detail=row.detail,
    )

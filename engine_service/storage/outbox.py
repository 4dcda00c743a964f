"""The outbox side of `execution_events`: committed events not yet shipped to analytics.

`Outbox.claim` opens a transaction, locks up to `limit` undelivered events (on Postgres
with SKIP LOCKED, so several replicas relay disjoint batches) and yields them; the
caller ships them and marks what analytics acknowledged `delivered()` and what it refused
for good `set_aside()`. Leaving the block with an error rolls back: the events stay
undelivered and are claimed again later.

An event set aside gets a row in `outbox_dead_letters` (with the refusal) and leaves the
outbox (its `delivered_at` is set); `DeadLetters` lists them and puts them back.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from engine_service.core.state import ExecutionEvent
from engine_service.storage.codec import event_from_json
from engine_service.storage.models import execution_events, outbox_dead_letters

# Long enough for a BadRequest's field violations; a reason is for a person to read.
MAX_REASON_CHARS = 4000


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why analytics will never accept an event: a gRPC code name and its message."""

    code: str
    reason: str


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An event set aside, and why."""

    event_id: str
    execution_id: str
    sequence: int
    tenant: str
    code: str
    reason: str
    set_aside_at: datetime


@dataclass
class OutboxBatch:
    events: list[ExecutionEvent]
    _connection: AsyncConnection = field(repr=False)

    async def delivered(self, events: Sequence[ExecutionEvent] | None = None) -> None:
        """Mark `events` (the whole batch by default) delivered; committed when the
        `claim` block ends."""
        chosen = self.events if events is None else events
        if not chosen:
            return
        await self._connection.execute(
            update(execution_events)
            .where(execution_events.c.event_id.in_([e.event_id for e in chosen]))
            .values(delivered_at=datetime.now(UTC))
        )

    async def set_aside(self, refused: Sequence[tuple[ExecutionEvent, Refusal]]) -> None:
        """Take `refused` events out of the outbox, each with its refusal, durably (when
        the `claim` block ends); `DeadLetters.replay` puts them back."""
        if not refused:
            return
        now = datetime.now(UTC)
        await self._connection.execute(
            insert(outbox_dead_letters),
            [
                {
                    "event_id": event.event_id,
                    "execution_id": event.execution_id,
                    "sequence": event.sequence,
                    "tenant": event.tenant,
                    "code": refusal.code[:32],
                    "reason": refusal.reason[:MAX_REASON_CHARS],
                    "set_aside_at": now,
                }
                for event, refusal in refused
            ],
        )
        await self.delivered([event for event, _ in refused])


class Outbox:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    @asynccontextmanager
    async def claim(self, limit: int) -> AsyncIterator[OutboxBatch]:
        async with self._engine.begin() as connection:
            statement = (
                select(execution_events.c.payload)
                .where(execution_events.c.delivered_at.is_(None))
                .order_by(execution_events.c.created_at)
                .limit(limit)
            )
            if self._engine.dialect.name == "postgresql":
                statement = statement.with_for_update(skip_locked=True)
            payloads = list(await connection.scalars(statement))
            yield OutboxBatch([event_from_json(p) for p in payloads], connection)

    async def backlog(self) -> int:
        """Committed events not yet delivered (set-aside events are not counted)."""
        async with self._engine.connect() as connection:
            count = await connection.scalar(
                select(func.count()).where(execution_events.c.delivered_at.is_(None))
            )
        return int(count or 0)


class DeadLetters:
    """The events the relay set aside: listed oldest first, and put back on demand."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def list(self, limit: int = 100) -> list[DeadLetter]:
        statement = (
            select(outbox_dead_letters)
            .order_by(outbox_dead_letters.c.set_aside_at, outbox_dead_letters.c.event_id)
            .limit(limit)
        )
        async with self._engine.connect() as connection:
            rows = (await connection.execute(statement)).mappings().all()
        return [DeadLetter(**row) for row in rows]

    async def count(self) -> int:
        async with self._engine.connect() as connection:
            count = await connection.scalar(select(func.count()).select_from(outbox_dead_letters))
        return int(count or 0)

    async def replay(self, event_ids: Sequence[str] | None = None) -> int:
        """Put set-aside events back in the outbox (every one when `event_ids` is None);
        how many went back. The relay ships them first (they are the oldest) and sets aside
        again, with the new reason, any that analytics still refuses."""
        chosen = select(outbox_dead_letters.c.event_id)
        if event_ids is not None:
            chosen = chosen.where(outbox_dead_letters.c.event_id.in_(list(event_ids)))
        async with self._engine.begin() as connection:
            await connection.execute(
                update(execution_events)
                .where(execution_events.c.event_id.in_(chosen.scalar_subquery()))
                .values(delivered_at=None)
            )
            removed = await connection.execute(
                delete(outbox_dead_letters).where(
                    outbox_dead_letters.c.event_id.in_(chosen.scalar_subquery())
                )
            )
        return int(removed.rowcount or 0)

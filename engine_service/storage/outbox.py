"""The outbox side of `execution_events`: committed events not yet shipped to analytics.

`Outbox.claim` opens a transaction, locks up to `limit` undelivered events (on Postgres
with SKIP LOCKED, so several replicas relay disjoint batches) and yields them; the
caller ships them and calls `delivered()`. Leaving the block without that, or with an
error, rolls back: the events stay undelivered and are claimed again later.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from engine_service.core.state import ExecutionEvent
from engine_service.storage.codec import event_from_json
from engine_service.storage.models import execution_events


@dataclass
class OutboxBatch:
    events: list[ExecutionEvent]
    _connection: AsyncConnection = field(repr=False)

    async def delivered(self) -> None:
        """Mark the batch delivered; committed when the `claim` block ends."""
        if not self.events:
            return
        await self._connection.execute(
            update(execution_events)
            .where(execution_events.c.event_id.in_([e.event_id for e in self.events]))
            .values(delivered_at=datetime.now(UTC))
        )


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
        """Committed events not yet delivered."""
        async with self._engine.connect() as connection:
            count = await connection.scalar(
                select(func.count()).where(execution_events.c.delivered_at.is_(None))
            )
        return int(count or 0)

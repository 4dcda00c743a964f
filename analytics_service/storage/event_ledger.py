"""The ledger of accepted event ids."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncSession

from analytics_service.core.events import ExecutionEvent
from analytics_service.storage.bulk import insert_new
from analytics_service.storage.models import ingested_events


class SqlEventLedger:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def record_new(self, events: Sequence[ExecutionEvent], now: datetime) -> set[str]:
        columns: dict[str, list[Any]] = {
            "event_id": [event.event_id for event in events],
            "tenant": [event.tenant for event in events],
            "workflow_id": [event.workflow_id for event in events],
            "occurred_at": [event.occurred_at for event in events],
            "ingested_at": [now] * len(events),
        }
        inserted = await insert_new(self._session, ingested_events, columns, ["event_id"])
        return {event_id for (event_id,) in inserted}

    async def prune(self, before: datetime) -> int:
        result = await self._session.execute(
            delete(ingested_events).where(ingested_events.c.occurred_at < before)
        )
        return int(result.rowcount)  # type: ignore[attr-defined]

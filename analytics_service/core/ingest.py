"""The write side: a batch of engine events becomes facts and rollups in one transaction."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from analytics_service.core.events import ExecutionEvent, unique_by_id
from analytics_service.core.ports import Clock, Database
from analytics_service.core.rollups import IngestLag, minute_of


@dataclass(frozen=True)
class IngestResult:
    accepted: int
    duplicates: int
    # Older than the fact retention: their facts would already have been pruned.
    expired: int
    lags: dict[tuple[str, str], IngestLag]

    @property
    def scopes(self) -> frozenset[tuple[str, str]]:
        """The (tenant, workflow) pairs that received new events."""
        return frozenset(self.lags)


def ingest_lags(
    events: Sequence[ExecutionEvent], now: datetime
) -> dict[tuple[str, str], IngestLag]:
    lags: dict[tuple[str, str], IngestLag] = {}
    for event in events:
        seconds = max((now - event.occurred_at).total_seconds(), 0.0)
        lag = IngestLag(count=1, total_seconds=seconds, max_seconds=seconds)
        scope = (event.tenant, event.workflow_id)
        lags[scope] = lags[scope].merge(lag) if scope in lags else lag
    return lags


class Ingestor:
    """Stores each event once, whatever the batching, order or redelivery."""

    def __init__(self, database: Database, clock: Clock, retention: timedelta | None) -> None:
        self._database = database
        self._clock = clock
        self._retention = retention

    async def ingest(self, events: Sequence[ExecutionEvent]) -> IngestResult:
        now = self._clock()
        unique = unique_by_id(tuple(events))
        current = tuple(e for e in unique if not self._expired(e, now))
        async with self._database.transaction() as uow:
            new_ids = await uow.ingest.store_new(current, now)
            new = tuple(e for e in current if e.event_id in new_ids)
            lags = ingest_lags(new, now)
            if lags:
                await uow.rollups.record_ingest_lag(minute_of(now), lags)
        expired = len(unique) - len(current)
        return IngestResult(
            accepted=len(new),
            duplicates=len(events) - len(new) - expired,
            expired=expired,
            lags=lags,
        )

    def _expired(self, event: ExecutionEvent, now: datetime) -> bool:
        return self._retention is not None and event.occurred_at < now - self._retention

    async def prune(self) -> int:
        """Delete facts and remembered event ids older than the retention; rollups stay."""
        if self._retention is None:
            return 0
        cutoff = self._clock() - self._retention
        async with self._database.transaction() as uow:
            pruned = await uow.facts.prune(cutoff)
            await uow.events.prune(cutoff)
        return pruned

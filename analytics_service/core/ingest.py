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
    # Grouped first and summed per scope: no IngestLag per event, the same sums in the same
    # order as merging them one by one.
    moments: dict[tuple[str, str], list[datetime]] = {}
    for event in events:
        scope = (event.tenant, event.workflow_id)
        if scope in moments:
            moments[scope].append(event.occurred_at)
        else:
            moments[scope] = [event.occurred_at]
    lags: dict[tuple[str, str], IngestLag] = {}
    for scope, occurred in moments.items():
        seconds = [max((now - moment).total_seconds(), 0.0) for moment in occurred]
        lags[scope] = IngestLag(
            count=len(seconds), total_seconds=sum(seconds), max_seconds=max(seconds)
        )
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

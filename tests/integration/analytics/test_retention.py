"""Fact retention: old facts and event ids go, rollups stay, late old events are refused."""

from __future__ import annotations

from datetime import timedelta

from analytics_service.core.ingest import Ingestor
from analytics_service.core.queries import AnalyticsQueries, QueryLimits, Selection
from analytics_service.core.reports import TimeRange
from analytics_service.storage.database import SqlDatabase, create_engine
from analytics_service.storage.migrate import upgrade
from tests.integration.analytics.conftest import ManualClock
from tests.unit.analytics.builders import T0, execution_event


async def test_pruning_keeps_rollups_and_refuses_expired_events(
    database_url: str, clock: ManualClock
) -> None:
    engine = create_engine(database_url)
    await upgrade(engine)
    database = SqlDatabase(engine)
    ingestor = Ingestor(database, clock, timedelta(days=1))
    queries = AnalyticsQueries(database, QueryLimits())
    everything = Selection(
        "default", "orders", TimeRange(T0 - timedelta(days=1), T0 + timedelta(days=9))
    )
    try:
        first = await ingestor.ingest([execution_event("old"), execution_event("also-old")])
        assert first.accepted == 2

        clock.advance(days=2)
        await ingestor.ingest([execution_event("new", finished_at=clock.now)])
        assert await ingestor.prune() == 2

        metrics = await queries.workflow_metrics(everything)
        assert metrics.executions == 3  # rollups are kept
        exported = [f async for page in queries.export_executions(everything, ()) for f in page]
        assert [f.execution_id for f in exported] == ["new"]

        late = await ingestor.ingest([execution_event("old"), execution_event("older")])
        assert (late.accepted, late.expired, late.duplicates) == (0, 2, 0)
        assert (await queries.workflow_metrics(everything)).executions == 3
    finally:
        await database.close()

"""Both dialects bucket durations exactly as core.histogram does, edges included."""

from __future__ import annotations

import random
from datetime import timedelta

from analytics_service.core.histogram import GAMMA, MIN_TRACKED_SECONDS, Histogram
from analytics_service.core.ingest import Ingestor
from analytics_service.core.ports import Level, MinuteRange, RollupQuery
from analytics_service.core.rollups import minute_of
from analytics_service.storage.database import SqlDatabase, create_engine
from analytics_service.storage.migrate import upgrade
from tests.unit.analytics.builders import T0, step_event


def durations() -> list[float]:
    rng = random.Random(7)
    edges = [0.0, MIN_TRACKED_SECONDS, 2 * MIN_TRACKED_SECONDS, 1.0]
    edges += [GAMMA**index for index in range(-300, 300, 7)]
    edges += [value * (1 + 1e-15) for value in edges]
    return edges + [rng.lognormvariate(0, 3) for _ in range(500)]


async def test_the_stored_histogram_is_the_histogram_of_the_durations(database_url: str) -> None:
    engine = create_engine(database_url)
    await upgrade(engine)
    database = SqlDatabase(engine)
    values = durations()
    events = [
        step_event(
            f"e{index}", "charge", seconds=seconds, finished_at=T0 + timedelta(minutes=index % 90)
        )
        for index, seconds in enumerate(values)
    ]
    try:
        ingestor = Ingestor(database, lambda: T0 + timedelta(hours=3), None)
        for offset in range(0, len(events), 100):
            await ingestor.ingest(events[offset : offset + 100])
        query = RollupQuery(
            tenant="default",
            minutes=MinuteRange(minute_of(T0), minute_of(T0) + 120),
            level=Level.STEP,
            workflow_id="orders",
            step_id="charge",
        )
        async with database.transaction() as uow:
            stored = await uow.rollups.histograms(query)
        assert list(stored.values()) == [Histogram.of(values)]
    finally:
        await database.close()

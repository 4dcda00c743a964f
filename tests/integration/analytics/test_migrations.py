"""Migrations: one head, up and down and up again with data, and the schema the models declare."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from analytics_service.core.ingest import Ingestor
from analytics_service.core.queries import AnalyticsQueries, QueryLimits, Selection
from analytics_service.core.reports import TimeRange
from analytics_service.storage.database import SqlDatabase, create_engine
from analytics_service.storage.migrate import (
    alembic_config,
    current_revision,
    downgrade,
    head_revisions,
    upgrade,
)
from analytics_service.storage.models import metadata, rollups
from tests.integration.analytics import scenario
from tests.unit.analytics.builders import T0


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url)
    yield engine
    await engine.dispose()


async def table_names(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as connection:
        names = await connection.run_sync(lambda c: set(inspect(c).get_table_names()))
    return names - {"alembic_version"}


async def executions_in(database: SqlDatabase) -> int:
    queries = AnalyticsQueries(database, QueryLimits())
    window = TimeRange(T0, T0 + timedelta(hours=1))
    return (await queries.workflow_metrics(Selection("default", "orders", window))).executions


def test_the_chain_has_a_single_head_and_no_branches() -> None:
    scripts = ScriptDirectory.from_config(alembic_config())
    assert len(head_revisions()) == 1
    revisions = list(scripts.walk_revisions())
    assert [r.down_revision for r in revisions][-1] is None
    assert all(not r.is_merge_point and not r.is_branch_point for r in revisions)


async def test_upgrade_downgrade_upgrade_with_data(engine: AsyncEngine) -> None:
    await upgrade(engine)
    assert await current_revision(engine) == head_revisions()[0]
    database = SqlDatabase(engine)
    ingestor = Ingestor(database, lambda: T0 + timedelta(hours=1), None)
    await ingestor.ingest(scenario.orders_events())
    assert await executions_in(database) == scenario.EXECUTIONS

    await downgrade(engine, "base")
    assert await table_names(engine) == set()
    assert await current_revision(engine) is None

    await upgrade(engine)
    assert await table_names(engine) == set(metadata.tables)
    assert await executions_in(database) == 0
    await ingestor.ingest(scenario.orders_events())
    assert await executions_in(database) == scenario.EXECUTIONS


async def test_the_migrated_schema_equals_the_models(engine: AsyncEngine) -> None:
    await upgrade(engine)

    def differences(connection: Any) -> list[Any]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, metadata))

    async with engine.connect() as connection:
        assert await connection.run_sync(differences) == []


HISTOGRAM_KEY = {
    "tenant": "default",
    "workflow_id": "orders",
    "step_id": "charge",
    "resolution": 1,
    "minute": 100,
}


async def test_0002_folds_histogram_rows_into_arrays_and_back(engine: AsyncEngine) -> None:
    await upgrade(engine, "0001")
    columns = ", ".join(HISTOGRAM_KEY)
    values = ", ".join(f":{name}" for name in HISTOGRAM_KEY)
    async with engine.begin() as connection:
        await connection.execute(
            text(
                f"INSERT INTO rollups ({columns}, total, duration_min, duration_max) "
                f"VALUES ({values}, 3, 1.0, 2.0)"
            ),
            HISTOGRAM_KEY,
        )
        await connection.execute(
            text(
                f"INSERT INTO rollup_histograms ({columns}, bucket, count) "
                f"VALUES ({values}, :bucket, :count)"
            ),
            [
                {**HISTOGRAM_KEY, "bucket": 35, "count": 2},
                {**HISTOGRAM_KEY, "bucket": -4, "count": 1},
            ],
        )

    await upgrade(engine)
    async with engine.connect() as connection:
        stored = (
            await connection.execute(
                select(rollups.c.histogram_buckets, rollups.c.histogram_counts)
            )
        ).one()
    assert (list(stored[0]), list(stored[1])) == ([-4, 35], [1, 2])

    await downgrade(engine, "0001")
    async with engine.connect() as connection:
        rows = await connection.execute(
            text("SELECT bucket, count FROM rollup_histograms ORDER BY bucket")
        )
        assert [tuple(row) for row in rows] == [(-4, 1), (35, 2)]

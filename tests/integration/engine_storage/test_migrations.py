"""The engine's Alembic chain: one head, reversible, and equal to the models."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, insert, inspect, text

from engine_service.storage import create_database_engine
from engine_service.storage.migrations import VERSION_TABLE, alembic_config, downgrade, migrate
from engine_service.storage.models import Base, leases

WHEN = datetime(2026, 1, 1, tzinfo=UTC)
TABLES = {
    "workflow_definitions",
    "executions",
    "idempotency_keys",
    "step_attempts",
    "execution_events",
    "leases",
    "schedules",
    "execution_commands",
    "outbox_dead_letters",
}


def test_the_chain_has_a_single_head() -> None:
    assert len(ScriptDirectory.from_config(alembic_config()).get_heads()) == 1


def _schema_differences(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(
        connection, opts={"compare_type": True, "version_table": VERSION_TABLE}
    )
    return list(compare_metadata(context, Base.metadata))


def _tables(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names()) - {VERSION_TABLE}


async def test_migrated_schema_equals_the_models(database_url: str) -> None:
    engine = create_database_engine(database_url)
    try:
        await migrate(engine)
        async with engine.connect() as connection:
            assert await connection.run_sync(_tables) == TABLES
            assert await connection.run_sync(_schema_differences) == []
    finally:
        await engine.dispose()


async def test_upgrade_downgrade_upgrade_keeps_working_with_data(database_url: str) -> None:
    engine = create_database_engine(database_url)
    try:
        await migrate(engine)
        async with engine.begin() as connection:
            await connection.execute(
                insert(leases).values(execution_id="e", owner="o", expires_at=WHEN)
            )
        await downgrade(engine, "base")
        async with engine.connect() as connection:
            assert await connection.run_sync(_tables) == set()
        await migrate(engine)
        async with engine.begin() as connection:
            await connection.execute(
                insert(leases).values(execution_id="e", owner="o", expires_at=WHEN)
            )
            count = await connection.scalar(text("SELECT count(*) FROM leases"))
        assert count == 1
    finally:
        await engine.dispose()


@pytest.mark.parametrize("runs", [2])
async def test_migrating_twice_is_a_no_op(database_url: str, runs: int) -> None:
    engine = create_database_engine(database_url)
    try:
        for _ in range(runs):
            await migrate(engine)
        async with engine.connect() as connection:
            version = await connection.scalar(text(f"SELECT version_num FROM {VERSION_TABLE}"))
        assert version == ScriptDirectory.from_config(alembic_config()).get_current_head()
    finally:
        await engine.dispose()


def _keys(connection: Connection) -> dict[str, list[str]]:
    found = inspect(connection)
    return {t: found.get_pk_constraint(t)["constrained_columns"] for t in _tables(connection)}


async def test_migrated_primary_keys_equal_the_models(database_url: str) -> None:
    """Autogenerate does not compare primary keys: this does."""
    engine = create_database_engine(database_url)
    try:
        await migrate(engine)
        async with engine.connect() as connection:
            keys = await connection.run_sync(_keys)
    finally:
        await engine.dispose()
    declared = {
        name: [c.name for c in table.primary_key.columns]
        for name, table in Base.metadata.tables.items()
    }
    assert keys == declared

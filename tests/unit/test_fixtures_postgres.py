"""The shared Postgres fixture really gives each test its own empty database."""

from __future__ import annotations

import asyncpg


async def test_postgres_database_is_fresh_and_writable(postgres_database: str) -> None:
    connection = await asyncpg.connect(postgres_database)
    try:
        tables = await connection.fetchval(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        )
        assert tables == 0
        await connection.execute("CREATE TABLE probe (id int)")
        await connection.execute("INSERT INTO probe VALUES (1)")
        assert await connection.fetchval("SELECT sum(id) FROM probe") == 1
    finally:
        await connection.close()

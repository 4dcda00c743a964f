"""Persistence through SQLAlchemy async (Postgres via asyncpg, SQLite via aiosqlite)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from engine_service.storage import migrations
from engine_service.storage.sql_store import SqlExecutionStore

__all__ = ["SqlExecutionStore", "create_database_engine", "open_store"]


def create_database_engine(database_url: str, *, pool_size: int = 10) -> AsyncEngine:
    """An async engine for a Postgres (asyncpg) or SQLite (aiosqlite) URL."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, connect_args={"timeout": 30})
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    return create_async_engine(url, pool_size=pool_size, max_overflow=pool_size)


def _sqlite_pragmas(dbapi_connection: object, _record: object) -> None:
    # WAL lets readers (watchers, queries) proceed while the group committer writes.
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


async def open_store(database_url: str, *, migrate: bool = True) -> SqlExecutionStore:
    """The engine's store at `database_url`, migrated to the latest schema unless told not."""
    engine = create_database_engine(database_url)
    if migrate:
        await migrations.migrate(engine)
    return SqlExecutionStore(engine)

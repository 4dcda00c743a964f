"""Persistence through SQLAlchemy async (Postgres via asyncpg, SQLite via aiosqlite)."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from engine_service.core.errors import StorageError
from engine_service.storage import migrations
from engine_service.storage.codec import dumps, loads
from engine_service.storage.sql_store import SqlExecutionStore

__all__ = ["SqlExecutionStore", "create_database_engine", "is_single_process", "open_store"]


def create_database_engine(database_url: str, *, pool_size: int = 10) -> AsyncEngine:
    """An async engine for a Postgres (asyncpg) or SQLite (aiosqlite) URL."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(
            url, connect_args={"timeout": 30}, json_serializer=dumps, json_deserializer=loads
        )
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    return create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        json_serializer=dumps,
        json_deserializer=loads,
    )


def _sqlite_pragmas(dbapi_connection: object, _record: object) -> None:
    # WAL lets readers (watchers, queries) proceed while the group committer writes.
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def is_single_process(database_url: str) -> bool:
    """SQLite serves one engine process; replicas sharing work need Postgres."""
    return make_url(database_url).get_backend_name() == "sqlite"


async def open_store(
    database_url: str, *, migrate: bool = True, owner: str = ""
) -> SqlExecutionStore:
    """The engine's store at `database_url`, migrated to the latest schema unless told not.

    On SQLite a second engine process on the same file is refused with a clear error:
    claiming work between replicas needs Postgres' row locks.
    """
    lock = _lock_sqlite_file(database_url) if is_single_process(database_url) else None
    engine = create_database_engine(database_url)
    try:
        if migrate:
            await migrations.migrate(engine)
    except BaseException:
        await engine.dispose()
        _release(lock)
        raise
    return SqlExecutionStore(engine, owner=owner, on_close=lambda: _release(lock))


def _lock_sqlite_file(database_url: str) -> int | None:
    database = make_url(database_url).database
    if not database or database == ":memory:":
        return None
    path = Path(database).with_suffix(Path(database).suffix + ".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        raise StorageError(
            f"another engine process is using {database}; SQLite supports one engine "
            "process — run several replicas on Postgres (STEPSTREAM_ENGINE_DATABASE_URL)"
        ) from None
    return descriptor


def _release(descriptor: int | None) -> None:
    if descriptor is not None:
        os.close(descriptor)  # closing drops the flock

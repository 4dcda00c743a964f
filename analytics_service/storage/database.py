"""Engine, sessions and transactions: the storage adapter behind `core.ports.Database`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from analytics_service.core.errors import StorageError
from analytics_service.storage.alert_store import SqlAlertStore
from analytics_service.storage.batch_ingest import PostgresBatchIngest, StepwiseBatchIngest
from analytics_service.storage.event_ledger import SqlEventLedger
from analytics_service.storage.fact_store import SqlFactStore
from analytics_service.storage.rollup_store import SqlRollupStore

# Postgres: serialization failure, deadlock; both are safe to retry.
_RETRYABLE_SQLSTATES = frozenset({"40001", "40P01"})
# Postgres: connection exceptions (08...), and the server shutting down or starting up
# (57P01-57P03): the database is away for a while, not the request at fault.
_UNAVAILABLE_SQLSTATE_PREFIXES = ("08", "57P0")


class SqlUnitOfWork:
    """The repositories of one transaction, all on the same session."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session
        self.events = SqlEventLedger(session)
        self.facts = SqlFactStore(session)
        self.rollups = SqlRollupStore(session)
        self.alerts = SqlAlertStore(session)
        self.ingest: PostgresBatchIngest | StepwiseBatchIngest = (
            PostgresBatchIngest(session)
            if session.get_bind().dialect.name == "postgresql"
            else StepwiseBatchIngest(self.events, self.facts, self.rollups)
        )


def _is_transient(exc: DBAPIError) -> bool:
    sqlstate = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
    return (
        isinstance(exc, OperationalError | InterfaceError)
        or exc.connection_invalidated
        or sqlstate in _RETRYABLE_SQLSTATES
        or str(sqlstate or "").startswith(_UNAVAILABLE_SQLSTATE_PREFIXES)
    )


def _configure_sqlite(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def create_engine(url: str, *, pool_size: int = 10) -> AsyncEngine:
    if url.startswith("sqlite"):
        # One connection: SQLite has one writer, and queuing in the pool beats SQLITE_BUSY.
        engine = create_async_engine(url, pool_size=1, max_overflow=0, pool_timeout=60)
        event.listen(engine.sync_engine, "connect", _configure_sqlite)
        return engine
    # No pre-ping: it costs a round trip per transaction; a dropped connection surfaces as
    # StorageError (UNAVAILABLE) once, the pool discards it, and the caller retries.
    return create_async_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_recycle=1800)


class SqlDatabase:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[SqlUnitOfWork]:
        try:
            async with self._sessions() as session, session.begin():
                yield SqlUnitOfWork(session)
        except DBAPIError as exc:
            if _is_transient(exc):
                raise StorageError(operation=type(exc.orig).__name__) from exc
            raise
        except OSError as exc:  # the driver could not connect at all (refused, timed out)
            raise StorageError(operation=type(exc).__name__) from exc

    async def close(self) -> None:
        await self.engine.dispose()

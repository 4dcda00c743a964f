"""The stores a simulation runs on: the in-memory reference, SQLite, Postgres.

Every tier goes through the same store port. The in-memory tier shares one
`InMemoryStore` between the processes. The SQL tiers give each process a store of its
own on the shared database (its own connections, its own lease owner, so the store's
fencing applies), as separate replicas have; the observer (what probes and invariants
read) is one more store that no fault touches.
"""

from __future__ import annotations

from typing import Protocol

from sqlalchemy import select

from engine_service.core.memory_store import InMemoryStore
from engine_service.core.store import ExecutionStore
from engine_service.storage import SqlExecutionStore, create_database_engine, open_store
from engine_service.storage.models import step_attempts

# (execution, step, attempt, kind: ATTEMPT | FALLBACK | COMPENSATION)
AttemptKey = tuple[str, str, int, str]


class Tier(Protocol):
    name: str
    # Real I/O: virtual time must stand still while a call is in flight.
    holds_time: bool
    # Serves one engine process only (SQLite).
    single_process: bool

    async def open(self) -> ExecutionStore:
        """The observer: the shared store, seen without faults."""

    async def process_store(self, owner: str) -> ExecutionStore:
        """The store a new engine process (named `owner` in leases) opens."""

    async def release(self, store: ExecutionStore) -> None:
        """A process died: let go of what its store holds."""

    async def step_attempts(self, execution_ids: list[str]) -> dict[AttemptKey, str] | None:
        """The `step_attempts` rows of these executions: their status by key (SQL only)."""

    async def close(self) -> None: ...


class MemoryTier:
    name = "memory"
    holds_time = False
    single_process = False

    def __init__(self) -> None:
        self._store = InMemoryStore()

    async def open(self) -> ExecutionStore:
        return self._store

    async def process_store(self, owner: str) -> ExecutionStore:
        return self._store

    async def release(self, store: ExecutionStore) -> None:
        return None

    async def step_attempts(self, execution_ids: list[str]) -> dict[AttemptKey, str] | None:
        return None

    async def close(self) -> None:
        return None


class SqlTier:
    """A SQLite file or a Postgres database, migrated once, shared by many schedules."""

    holds_time = True

    def __init__(self, url: str) -> None:
        self.url = url
        self.name = "sqlite" if url.startswith("sqlite") else "postgres"
        self.single_process = self.name == "sqlite"
        self._observer: SqlExecutionStore | None = None
        self._open: list[SqlExecutionStore] = []

    async def open(self) -> ExecutionStore:
        # Migrated on first use; the file lock SQLite takes is the observer's, so the
        # processes' stores are made directly (they stand for one process at a time).
        self._observer = await open_store(self.url)
        return self._observer

    async def process_store(self, owner: str) -> ExecutionStore:
        store = SqlExecutionStore(create_database_engine(self.url, pool_size=2), owner=owner)
        self._open.append(store)
        return store

    async def release(self, store: ExecutionStore) -> None:
        if store in self._open:
            await store.close()
            if store in self._open:
                self._open.remove(store)

    async def step_attempts(self, execution_ids: list[str]) -> dict[AttemptKey, str] | None:
        assert self._observer is not None
        rows = select(
            step_attempts.c.execution_id,
            step_attempts.c.step_id,
            step_attempts.c.attempt,
            step_attempts.c.kind,
            step_attempts.c.status,
        ).where(step_attempts.c.execution_id.in_(execution_ids))
        async with self._observer.engine.connect() as connection:
            found = (await connection.execute(rows)).all()
        return {(r[0], r[1], r[2], r[3]): r[4] for r in found}

    async def close(self) -> None:
        for store in list(self._open):
            await self.release(store)
        if self._observer is not None:
            await self._observer.close()
            self._observer = None

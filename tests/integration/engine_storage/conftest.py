"""Every store under test: the in-memory reference, SQLite and Postgres."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from engine_service.core.memory_store import InMemoryStore
from engine_service.core.store import ExecutionStore
from engine_service.storage import open_store


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest) -> str:
    """ "memory", or the URL of a fresh SQLite file or Postgres database."""
    if request.param == "memory":
        return "memory"
    fixture = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    return str(request.getfixturevalue(fixture))


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[ExecutionStore]:
    if store_url == "memory":
        yield InMemoryStore()
        return
    sql = await open_store(store_url)
    try:
        yield sql
    finally:
        await sql.close()

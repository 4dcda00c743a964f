"""Shared fixtures: databases for the storage and integration tiers.

Postgres tests use the server named by STEPSTREAM_TEST_POSTGRES_URL (default the local
one). Each test that asks for `postgres_url` gets a database of its own, created empty and
dropped afterwards. Under CI=true an unreachable server fails the test instead of skipping.
"""

from __future__ import annotations

import asyncio
import gc
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"


def admin_postgres_url() -> str:
    return os.environ.get("STEPSTREAM_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)


def _with_database(url: str, database: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{database}"


async def _connect_admin() -> asyncpg.Connection:
    try:
        return await asyncpg.connect(admin_postgres_url(), timeout=5)
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        message = f"Postgres at {admin_postgres_url()} is unreachable: {exc}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture
async def postgres_database() -> AsyncIterator[str]:
    """A fresh, empty database; yields its asyncpg-style URL (postgresql://...)."""
    name = f"stepstream_test_{uuid.uuid4().hex[:12]}"
    admin = await _connect_admin()
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield _with_database(admin_postgres_url(), name)
    finally:
        admin = await _connect_admin()
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture
def postgres_url(postgres_database: str) -> str:
    """The fresh database as a SQLAlchemy async URL (postgresql+asyncpg://...)."""
    return postgres_database.replace("postgresql://", "postgresql+asyncpg://", 1)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A SQLAlchemy async URL of a new SQLite file."""
    return f"sqlite+aiosqlite:///{tmp_path / 'stepstream.db'}"


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str:
    """Runs the test once on SQLite and once on Postgres."""
    if request.param == "sqlite":
        return str(request.getfixturevalue("sqlite_url"))
    return str(request.getfixturevalue("postgres_url"))


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    """Close event loops that pytest-asyncio created and left unclosed.

    pytest-asyncio 1.5 leaves one such loop behind after the last async test; collected at
    interpreter shutdown, its ResourceWarning would fail the run under `filterwarnings = error`.
    """
    for candidate in gc.get_objects():
        is_loop = isinstance(candidate, asyncio.AbstractEventLoop)
        if is_loop and not candidate.is_closed() and not candidate.is_running():
            candidate.close()

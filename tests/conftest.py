"""Shared fixtures: databases for the storage and integration tiers.

Postgres tests use the server named by STEPSTREAM_TEST_POSTGRES_URL (default the local
one). Each test that asks for `postgres_url` gets a database of its own, created empty and
dropped afterwards. Under CI=true an unreachable server fails the test instead of skipping.
"""

from __future__ import annotations

import asyncio
import os
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncpg
import pytest

from tests.private_postgres import PrivatePostgres

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"


def admin_postgres_url() -> str:
    return os.environ.get("STEPSTREAM_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)


def _with_database(url: str, database: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{database}"


async def _connect_admin() -> asyncpg.Connection:
    return await asyncpg.connect(admin_postgres_url(), timeout=5)


async def _admin_execute(statement: str) -> None:
    admin = await _connect_admin()
    try:
        await admin.execute(statement)
    finally:
        await admin.close()


def _run_admin(statement: str) -> None:
    """Runs one admin statement on a loop of its own.

    The fixtures are synchronous so parametrized fixtures can request them by name;
    pytest-asyncio leaks a loop when an async fixture is requested that way.
    """
    # Not asyncio.run(): it would unset pytest-asyncio's current loop, which then leaks.
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(_admin_execute(statement))
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        message = f"Postgres at {admin_postgres_url()} is unreachable: {exc}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    finally:
        loop.close()


@pytest.fixture
def postgres_database() -> Iterator[str]:
    """A fresh, empty database; yields its asyncpg-style URL (postgresql://...)."""
    name = f"stepstream_test_{uuid.uuid4().hex[:12]}"
    _run_admin(f'CREATE DATABASE "{name}"')
    try:
        yield _with_database(admin_postgres_url(), name)
    finally:
        _run_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def make_postgres_database() -> Iterator[Callable[[], str]]:
    """Makes as many fresh databases as a test needs (asyncpg-style URLs); drops them after."""
    made: list[str] = []

    def make() -> str:
        name = f"stepstream_test_{uuid.uuid4().hex[:12]}"
        _run_admin(f'CREATE DATABASE "{name}"')
        made.append(name)
        return _with_database(admin_postgres_url(), name)

    yield make
    for name in made:
        _run_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


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


@pytest.fixture(autouse=True)
def _close_the_loop_looptime_leaves_behind() -> Iterator[None]:
    """Close the event loop the policy still holds once a test and its fixtures are done.

    Sync tests: looptime's call hook asks the loop policy for the current loop, which
    creates one when none is set. Async tests: pytest-asyncio's runner, on the way out,
    puts back whatever loop was current when it started (such a loop, or one its own
    lookup created) and leaves it open. Never closed, such a loop is collected in some
    later test as an "unclosed event loop" ResourceWarning, which `filterwarnings = error`
    turns into that test's failure. Autouse in the root conftest, this fixture is set up
    before pytest-asyncio's runner and so torn down after the runner has closed the test's
    own loop. It assumes function-scoped loops (`asyncio_default_fixture_loop_scope`): a
    wider-scoped loop, idle between tests, would be closed too.
    """
    yield
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        policy = asyncio.get_event_loop_policy()
        try:
            loop = policy.get_event_loop()
        except RuntimeError:
            return
        if not loop.is_running():
            loop.close()
            policy.set_event_loop(None)


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    """A Postgres server of the test's own, for tests that stop or restart the database."""
    server = PrivatePostgres()
    server.start()
    try:
        yield server
    finally:
        server.remove()

"""`GroupCommitter.close()`: every write handed to it gets an answer, never a hang."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from engine_service.core.errors import StorageError
from engine_service.storage.group_commit import GroupCommitter

pytestmark = [pytest.mark.looptime, pytest.mark.timeout(10)]


class Database:
    """A transaction that records what it wrote and waits for `release` (or forever)."""

    def __init__(self) -> None:
        self.written: list[str] = []
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    async def transaction(self, batch: Sequence[str]) -> None:
        self.started.set()
        await self.release.wait()
        self.written.extend(batch)


async def test_a_write_in_flight_when_close_runs_commits_and_its_caller_is_told() -> None:
    database = Database()
    committer = GroupCommitter(database.transaction, max_batch=10)
    write = committer.enqueue("in flight")
    await database.started.wait()
    closing = asyncio.create_task(committer.close())
    await asyncio.sleep(0.1)
    database.release.set()  # the transaction commits while close() waits for it
    await closing
    assert write.done()
    assert write.result() is None
    assert database.written == ["in flight"]


async def test_a_write_that_outlasts_close_gets_an_error() -> None:
    database = Database()  # never released: the database hangs
    committer = GroupCommitter(database.transaction, max_batch=10)
    write = committer.enqueue("stuck")
    await database.started.wait()
    await committer.close(grace_seconds=5.0)
    assert write.done()
    assert isinstance(write.exception(), StorageError)


async def test_writes_queued_behind_close_get_an_error_and_are_not_written() -> None:
    database = Database()
    committer = GroupCommitter(database.transaction, max_batch=1)
    first = committer.enqueue("first", key="e")
    await database.started.wait()
    queued = [committer.enqueue(f"queued {i}", key="e") for i in range(3)]
    closing = asyncio.create_task(committer.close())
    await asyncio.sleep(0.1)
    database.release.set()
    await closing
    assert first.result() is None
    assert all(isinstance(w.exception(), StorageError) for w in queued)
    assert database.written == ["first"]


async def test_a_write_after_close_is_refused_at_once() -> None:
    database = Database()
    committer = GroupCommitter(database.transaction, max_batch=10)
    await committer.close()
    late = committer.enqueue("late")
    await asyncio.sleep(0)
    assert isinstance(late.exception(), StorageError)
    assert not database.started.is_set()

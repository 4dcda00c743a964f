"""Group commit: many concurrent writes share one transaction, and so one fsync.

Callers `submit` an item and wait. A writer task takes everything queued (up to
`max_batch`), writes it in one transaction and wakes every caller. If that transaction
fails, each item is retried alone so one bad item fails only its own caller.

With `writers` > 1, several transactions are in flight at once, so the database can
flush them together (one transaction at a time was bound by the WAL flush: ~12 ms a
batch on Postgres here). Callers must then not submit a second item that depends on one
still in flight; the runner never does (it awaits each append of an execution).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

T = TypeVar("T")
Writer = Callable[[AsyncConnection, Sequence[T]], Awaitable[None]]


class GroupCommitter(Generic[T]):
    def __init__(
        self, engine: AsyncEngine, write: Writer[T], *, max_batch: int, writers: int = 1
    ) -> None:
        self._engine = engine
        self._write = write
        self._max_batch = max_batch
        self._writers = writers
        self._queue: asyncio.Queue[tuple[T, asyncio.Future[None]]] = asyncio.Queue()
        self._workers: list[asyncio.Task[None]] = []
        self.batches = 0
        self.items = 0

    async def submit(self, item: T) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((item, future))
        self._workers = [w for w in self._workers if not w.done()]
        if len(self._workers) < self._writers:
            self._workers.append(asyncio.create_task(self._run(), name="group-commit"))
        await future

    @property
    def backlog(self) -> int:
        return self._queue.qsize()

    async def close(self) -> None:
        for worker in self._workers:
            worker.cancel()
        for worker in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        while not self._queue.empty():
            _, future = self._queue.get_nowait()
            _settle(future, RuntimeError("the store was closed before this write"))

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            await self._commit(batch)

    async def _commit(self, batch: list[tuple[T, asyncio.Future[None]]]) -> None:
        try:
            await self._transaction([item for item, _ in batch])
        except Exception as exc:
            if len(batch) == 1:
                _settle(batch[0][1], exc)
                return
            for item, future in batch:
                try:
                    await self._transaction([item])
                except Exception as item_exc:
                    _settle(future, item_exc)
                else:
                    _settle(future, None)
            return
        self.batches += 1
        self.items += len(batch)
        for _, future in batch:
            _settle(future, None)

    async def _transaction(self, items: Sequence[T]) -> None:
        async with self._engine.begin() as connection:
            await self._write(connection, items)


def _settle(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)

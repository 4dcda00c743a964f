"""Group commit: many concurrent writes share one transaction, and so one fsync.

Callers `submit` an item and wait. A single writer task takes everything queued (up to
`max_batch`), writes it in one transaction and wakes every caller. If that transaction
fails, each item is retried alone so one bad item fails only its own caller.
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
    def __init__(self, engine: AsyncEngine, write: Writer[T], *, max_batch: int) -> None:
        self._engine = engine
        self._write = write
        self._max_batch = max_batch
        self._queue: asyncio.Queue[tuple[T, asyncio.Future[None]]] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self.batches = 0
        self.items = 0

    async def submit(self, item: T) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((item, future))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._run(), name="group-commit")
        await future

    @property
    def backlog(self) -> int:
        return self._queue.qsize()

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
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

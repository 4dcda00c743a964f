"""Postgres LISTEN/NOTIFY: wakes this process's watchers for events other processes commit.

Every append on Postgres sends a notice on one channel (see `notices`); `EventListener`
keeps one dedicated connection listening and hands each notice another process sent, in
order, to a callback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url

from engine_service.storage.notices import NOTIFY_CHANNEL, Notice, parse_notice

log = logging.getLogger(__name__)

Handler = Callable[[str, int, int], Awaitable[None]]


class EventListener:
    def __init__(self, database_url: str, handler: Handler, *, origin: str = "") -> None:
        url = make_url(database_url).set(drivername="postgresql")
        self._dsn = url.render_as_string(hide_password=False)
        self._handler = handler
        self._origin = origin
        self._queue: asyncio.Queue[Notice] = asyncio.Queue()
        self._connection: Any = None
        self._worker: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._connection = await asyncpg.connect(self._dsn)
        await self._connection.add_listener(NOTIFY_CHANNEL, self._received)
        self._worker = asyncio.create_task(self._deliver(), name="event-listener")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        if self._connection is not None:
            await self._connection.close()

    def _received(self, _connection: object, _pid: int, _channel: str, payload: str) -> None:
        notice = parse_notice(payload)
        if notice is not None and not (self._origin and notice.origin == self._origin):
            self._queue.put_nowait(notice)

    async def _deliver(self) -> None:
        # One at a time, in commit order, so watchers see each execution's events in order.
        while True:
            notice = await self._queue.get()
            try:
                await self._handler(notice.execution_id, notice.first, notice.last)
            except Exception:
                log.exception("could not forward events of execution %s", notice.execution_id)

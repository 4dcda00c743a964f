"""Postgres LISTEN/NOTIFY: wakes this process's watchers for events other processes commit,
and this process for commands stored for the executions it drives.

Every append on Postgres sends a notice on one channel (see `notices`); `EventListener`
keeps one dedicated connection listening and hands each notice another process sent, in
order, to a callback. A notice on the commands channel runs `on_command` (notices that
arrive while it runs are folded into one more run).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url

from engine_service.storage.notices import COMMANDS_CHANNEL, NOTIFY_CHANNEL, Notice, parse_notice

log = logging.getLogger(__name__)

Handler = Callable[[str, int, int], Awaitable[None]]


class EventListener:
    def __init__(
        self,
        database_url: str,
        handler: Handler,
        *,
        origin: str = "",
        on_command: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        url = make_url(database_url).set(drivername="postgresql")
        self._dsn = url.render_as_string(hide_password=False)
        self._handler = handler
        self._origin = origin
        self._on_command = on_command
        self._queue: asyncio.Queue[Notice] = asyncio.Queue()
        self._commands = asyncio.Event()
        self._connection: Any = None
        self._workers: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self._connection = await asyncpg.connect(self._dsn)
        await self._connection.add_listener(NOTIFY_CHANNEL, self._received)
        self._workers.append(asyncio.create_task(self._deliver(), name="event-listener"))
        if self._on_command is not None:
            await self._connection.add_listener(COMMANDS_CHANNEL, self._command_received)
            self._workers.append(
                asyncio.create_task(self._apply_commands(), name="command-listener")
            )

    async def stop(self) -> None:
        for worker in self._workers:
            worker.cancel()
        for worker in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        if self._connection is not None:
            await self._connection.close()

    def _command_received(self, *_notice: object) -> None:
        self._commands.set()

    async def _apply_commands(self) -> None:
        assert self._on_command is not None
        while True:
            await self._commands.wait()
            self._commands.clear()
            try:
                await self._on_command()
            except Exception:
                log.exception("could not apply the stored commands")

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

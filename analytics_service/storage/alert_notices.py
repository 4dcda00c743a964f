"""Alert transitions to every analytics replica through Postgres LISTEN/NOTIFY.

Storing a transition on Postgres also sends it, as JSON, on `ALERTS_CHANNEL` (delivered
at commit, so only stored transitions are heard); every replica, the one that stored it
included, hands what it hears to its WatchAlerts subscribers. One path for all of them
means a subscriber sees every transition whichever replica made it, and each only once.
On SQLite (one process) the evaluator hands transitions to the subscribers directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import asyncpg
from sqlalchemy import text
from sqlalchemy.engine import make_url

from analytics_service.core.alerts import AlertEvent, AlertState

logger = logging.getLogger(__name__)

ALERTS_CHANNEL = "stepstream_alerts"
NOTIFY = text(f"SELECT pg_notify('{ALERTS_CHANNEL}', :payload)")


def alert_payload(event: AlertEvent) -> str:
    return json.dumps(
        {
            "id": event.id,
            "rule_id": event.rule_id,
            "tenant": event.tenant,
            "state": event.state.value,
            "value": event.value,
            "threshold": event.threshold,
            "occurred_at": event.occurred_at.isoformat(),
            # Notices are capped at 8000 bytes; the stored transition keeps the whole text.
            "message": event.message[:4000],
        }
    )


def parse_alert(payload: str) -> AlertEvent:
    data: dict[str, Any] = json.loads(payload)
    return AlertEvent(
        id=data["id"],
        rule_id=data["rule_id"],
        tenant=data["tenant"],
        state=AlertState(data["state"]),
        value=data["value"],
        threshold=data["threshold"],
        occurred_at=datetime.fromisoformat(data["occurred_at"]),
        message=data["message"],
    )


class AlertListener:
    """One dedicated connection listening for alert transitions; each one heard is
    handed to `deliver`."""

    def __init__(self, database_url: str, deliver: Callable[[AlertEvent], Awaitable[None]]):
        url = make_url(database_url).set(drivername="postgresql")
        self._dsn = url.render_as_string(hide_password=False)
        self._deliver = deliver
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._connection: Any = None
        self._worker: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._connection = await asyncpg.connect(self._dsn)
        await self._connection.add_listener(ALERTS_CHANNEL, self._received)
        self._worker = asyncio.create_task(self._run(), name="alert-listener")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        if self._connection is not None:
            await self._connection.close()

    def _received(self, _connection: object, _pid: int, _channel: str, payload: str) -> None:
        self._queue.put_nowait(payload)

    async def _run(self) -> None:
        while True:
            payload = await self._queue.get()
            try:
                await self._deliver(parse_alert(payload))
            except Exception:
                logger.exception("could not hand an alert transition to its watchers")

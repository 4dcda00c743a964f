"""The outbox relay: ships committed events to the analytics service, at least once.

Events are marked delivered only after analytics acknowledged the batch; analytics
deduplicates by event id, so a batch re-sent after a crash changes nothing there. While
analytics is unreachable the relay backs off exponentially; the backlog stays in the
database (durable, and bounded in memory by one batch) and is exported as a metric.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from grpc import aio
from stepstream.v1 import analytics_pb2, analytics_pb2_grpc

from engine_service.storage.outbox import Outbox
from engine_service.transport.mapping import batch_to_proto

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RelaySettings:
    target: str
    batch_size: int = 500
    # How long to wait for new events when the outbox is empty.
    idle_seconds: float = 0.2
    first_backoff_seconds: float = 0.5
    max_backoff_seconds: float = 30.0
    call_timeout_seconds: float = 30.0
    # Bearer token for an analytics service that requires one.
    token: str = ""


class OutboxRelay:
    def __init__(
        self,
        outbox: Outbox,
        settings: RelaySettings,
        *,
        on_shipped: Callable[[int], None] = lambda _count: None,
        on_backlog: Callable[[int], None] = lambda _count: None,
    ) -> None:
        self._outbox = outbox
        self._settings = settings
        self._on_shipped = on_shipped
        self._on_backlog = on_backlog
        self._channel: aio.Channel | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._channel = aio.insecure_channel(self._settings.target)
        self._task = asyncio.create_task(self._run(), name="outbox-relay")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._channel is not None:
            await self._channel.close(None)

    async def ship_once(self) -> int:
        """Ship one batch; how many events it held (0: the outbox was empty)."""
        assert self._channel is not None
        stub = analytics_pb2_grpc.AnalyticsServiceStub(self._channel)
        async with self._outbox.claim(self._settings.batch_size) as batch:
            if not batch.events:
                return 0
            request = analytics_pb2.IngestEventsRequest(
                batch=batch_to_proto(batch.events, str(uuid.uuid4()))
            )
            metadata = (
                (("authorization", f"Bearer {self._settings.token}"),)
                if self._settings.token
                else None
            )
            await stub.IngestEvents(
                iter([request]), timeout=self._settings.call_timeout_seconds, metadata=metadata
            )
            await batch.delivered()
        self._on_shipped(len(batch.events))
        return len(batch.events)

    async def _run(self) -> None:
        backoff = self._settings.first_backoff_seconds
        while True:
            try:
                shipped = await self.ship_once()
                self._on_backlog(await self._outbox.backlog())
                backoff = self._settings.first_backoff_seconds
                if shipped < self._settings.batch_size:
                    await asyncio.sleep(self._settings.idle_seconds)
            except (grpc.RpcError, OSError) as exc:
                log.warning("analytics unreachable (%s); retrying in %.1fs", _brief(exc), backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._settings.max_backoff_seconds)
            except Exception:
                log.exception("outbox relay round failed; retrying in %.1fs", backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._settings.max_backoff_seconds)


def _brief(error: BaseException) -> str:
    if isinstance(error, aio.AioRpcError):
        return f"{error.code().name}: {error.details()}"
    return type(error).__name__

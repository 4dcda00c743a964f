"""Fan-out of alert transitions to the streams of this process that watch them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from analytics_service.core.alerts import AlertEvent, AlertRule


@dataclass(eq=False)
class _Subscriber:
    tenant: str
    rule_id: str
    queue: asyncio.Queue[AlertEvent | None] = field(default_factory=lambda: asyncio.Queue(1000))

    def wants(self, event: AlertEvent) -> bool:
        return event.tenant == self.tenant and self.rule_id in ("", event.rule_id)

    def offer(self, event: AlertEvent | None) -> None:
        if self.queue.full():
            # A subscriber that does not keep up loses its oldest events, not the others'.
            self.queue.get_nowait()
        self.queue.put_nowait(event)


class AlertBroadcaster:
    """An alert sink that hands each transition to the matching subscribers."""

    def __init__(self) -> None:
        self._subscribers: set[_Subscriber] = set()
        self._closed = False

    async def publish(self, event: AlertEvent, rule: AlertRule) -> None:
        await self.deliver(event)

    async def deliver(self, event: AlertEvent) -> None:
        """Hand `event` to the matching subscribers (also for transitions another
        replica made, heard from the database)."""
        for subscriber in list(self._subscribers):
            if subscriber.wants(event):
                subscriber.offer(event)

    async def subscribe(self, tenant: str, rule_id: str) -> AsyncIterator[AlertEvent]:
        """Transitions from now on until `close()`; the caller stops by leaving the loop."""
        subscriber = _Subscriber(tenant, rule_id)
        self._subscribers.add(subscriber)
        try:
            while not self._closed:
                event = await subscriber.queue.get()
                if event is None:
                    return
                yield event
        finally:
            self._subscribers.discard(subscriber)

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def close(self) -> None:
        self._closed = True
        for subscriber in list(self._subscribers):
            subscriber.offer(None)

"""In-process fan-out of committed events to live subscribers.

Publishing never waits: each subscriber has a bounded queue, and one that falls behind
past its bound is marked `overflowed` and closed, so a slow reader cannot slow the
engine. The reader learns it overflowed and resumes from the store by sequence.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from engine_service.core.state import ExecutionEvent

EventFilter = Callable[[ExecutionEvent], bool]


@dataclass(eq=False)
class Subscription:
    execution_id: str | None
    accepts: EventFilter
    queue: asyncio.Queue[ExecutionEvent | None] = field(repr=False)
    overflowed: bool = False
    closed: bool = False

    async def next_batch(self, max_events: int) -> list[ExecutionEvent] | None:
        """Waits for at least one event; returns what is queued, or None once closed."""
        first = await self.queue.get()
        if first is None:
            return None
        batch = [first]
        while len(batch) < max_events and not self.queue.empty():
            item = self.queue.get_nowait()
            if item is None:
                self.queue.put_nowait(None)
                break
            batch.append(item)
        return batch


class EventBus:
    def __init__(self, *, queue_size: int = 10_000) -> None:
        self._queue_size = queue_size
        self._by_execution: dict[str, set[Subscription]] = {}
        self._global: set[Subscription] = set()

    def subscribe(
        self, execution_id: str | None = None, accepts: EventFilter | None = None
    ) -> Subscription:
        subscription = Subscription(
            execution_id=execution_id,
            accepts=accepts or (lambda _event: True),
            queue=asyncio.Queue(maxsize=self._queue_size + 1),
        )
        if execution_id is None:
            self._global.add(subscription)
        else:
            self._by_execution.setdefault(execution_id, set()).add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        if subscription.execution_id is None:
            self._global.discard(subscription)
        else:
            subscribers = self._by_execution.get(subscription.execution_id, set())
            subscribers.discard(subscription)
            if not subscribers:
                self._by_execution.pop(subscription.execution_id, None)
        self._close(subscription)

    def publish(self, events: Sequence[ExecutionEvent]) -> None:
        for event in events:
            targets = self._global | self._by_execution.get(event.execution_id, set())
            for subscription in targets:
                if not subscription.closed and subscription.accepts(event):
                    self._offer(subscription, event)

    def close_execution(self, execution_id: str) -> None:
        """The execution ended: its watchers drain what is queued and stop."""
        for subscription in self._by_execution.pop(execution_id, set()):
            self._close(subscription)

    def is_watched(self, execution_id: str) -> bool:
        """Whether any subscriber would receive events of `execution_id`."""
        return bool(self._global) or execution_id in self._by_execution

    @property
    def subscriber_count(self) -> int:
        return len(self._global) + sum(len(s) for s in self._by_execution.values())

    def _offer(self, subscription: Subscription, event: ExecutionEvent) -> None:
        # One slot is kept free for the closing sentinel.
        if subscription.queue.qsize() >= self._queue_size:
            subscription.overflowed = True
            self.unsubscribe(subscription)
            return
        subscription.queue.put_nowait(event)

    @staticmethod
    def _close(subscription: Subscription) -> None:
        if not subscription.closed:
            subscription.closed = True
            subscription.queue.put_nowait(None)

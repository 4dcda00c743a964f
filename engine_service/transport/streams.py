"""Event streams for watchers: history from the store, then live events from the bus.

A watcher subscribes to the bus before it reads the store, so no event can fall between
the two; events that arrive both ways are dropped by sequence. Whatever a watcher has not
read is queued in its bounded subscription: when it overflows, the stream ends with
RESOURCE_EXHAUSTED naming the sequence to resume after, and the engine never waits.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator

from engine_service.core.bus import EventFilter, Subscription
from engine_service.core.engine import Engine
from engine_service.core.state import EventKind, ExecutionEvent, ExecutionStatus
from engine_service.transport.errors import ServerShuttingDown, StreamEnded, SubscriberFellBehind

DEFAULT_MAX_BATCH_EVENTS = 500


def ends_execution(event: ExecutionEvent) -> bool:
    return (
        event.kind is EventKind.EXECUTION_STATUS_CHANGED
        and event.execution_status is not None
        and event.execution_status.is_terminal
    )


class EventStreams:
    def __init__(self, engine: Engine, *, max_batch_events: int = DEFAULT_MAX_BATCH_EVENTS):
        self._engine = engine
        self._max_batch = max_batch_events
        self._open: set[Subscription] = set()
        self._closing = False

    def close_all(self) -> None:
        """At shutdown: end every open stream, so stopping the server need not wait for them."""
        self._closing = True
        for subscription in list(self._open):
            self._engine.bus.unsubscribe(subscription)

    @property
    def open_streams(self) -> int:
        return len(self._open)

    async def watch_execution(
        self, execution_id: str, after_sequence: int, *, tenant: str | None
    ) -> AsyncIterator[list[ExecutionEvent]]:
        """Batches of the execution's events after `after_sequence`, until it ends."""
        with self._subscribed(execution_id, None) as subscription:
            state = await self._engine.get_execution(execution_id, tenant=tenant)
            last = after_sequence
            async for batch in self._history(execution_id, after_sequence):
                yield batch
                last = batch[-1].sequence
                if ends_execution(batch[-1]):
                    return
            if state.status.is_terminal:
                return  # it ended before we read the store, so all of it was there
            async for batch in self._live(subscription, execution_id, last):
                yield batch
                if ends_execution(batch[-1]):
                    return

    async def watch_executions(
        self, tenant: str, workflow_id: str, statuses: frozenset[ExecutionStatus]
    ) -> AsyncIterator[list[ExecutionEvent]]:
        """Live events of the tenant's executions; runs until the client goes away."""

        def accepts(event: ExecutionEvent) -> bool:
            return event.tenant == tenant and (not workflow_id or event.workflow_id == workflow_id)

        tracker = StatusTracker(self._engine)
        with self._subscribed(None, accepts) as subscription:
            while True:
                batch = await subscription.next_batch(self._max_batch)
                if batch is None:
                    raise self._interruption(subscription, "", -1)
                if statuses:
                    batch = [e for e in batch if await tracker.status_at(e) in statuses]
                if batch:
                    yield batch

    @contextlib.contextmanager
    def _subscribed(
        self, execution_id: str | None, accepts: EventFilter | None
    ) -> Iterator[Subscription]:
        if self._closing:
            raise ServerShuttingDown("the server is shutting down; watch another replica")
        subscription = self._engine.bus.subscribe(execution_id, accepts)
        self._open.add(subscription)
        try:
            yield subscription
        finally:
            self._open.discard(subscription)
            self._engine.bus.unsubscribe(subscription)

    async def _history(
        self, execution_id: str, after_sequence: int
    ) -> AsyncIterator[list[ExecutionEvent]]:
        cursor = after_sequence
        while True:
            page = await self._engine.read_events(execution_id, cursor, limit=self._max_batch)
            if page:
                yield page
                cursor = page[-1].sequence
            if len(page) < self._max_batch:
                return

    async def _live(
        self, subscription: Subscription, execution_id: str, last: int
    ) -> AsyncIterator[list[ExecutionEvent]]:
        while True:
            batch = await subscription.next_batch(self._max_batch)
            if batch is None:
                if subscription.overflowed or self._closing:
                    raise self._interruption(subscription, execution_id, last)
                return  # closed because the execution ended, after its last event
            fresh = [event for event in batch if event.sequence > last]
            if fresh:
                last = fresh[-1].sequence
                yield fresh

    def _interruption(
        self, subscription: Subscription, execution_id: str, last: int
    ) -> StreamEnded:
        resume = (
            f"; resume with WatchExecution(after_sequence={last})"
            if execution_id
            else "; watch again and read missed events with WatchExecution"
        )
        if subscription.overflowed:
            return SubscriberFellBehind(
                "the watcher fell behind and its buffer overflowed" + resume,
                execution_id=execution_id,
                last_sequence=last,
            )
        return ServerShuttingDown(
            "the server is shutting down" + resume, execution_id=execution_id, last_sequence=last
        )


class StatusTracker:
    """The status each execution had at each event a watcher sees.

    Events arrive in sequence order per execution, so after an execution's first event
    its status follows from its status events. For an execution first seen mid-run, the
    status at that event is read once by replaying the stored history up to it.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._statuses: dict[str, ExecutionStatus] = {}

    async def status_at(self, event: ExecutionEvent) -> ExecutionStatus:
        if event.kind is EventKind.EXECUTION_STATUS_CHANGED and event.execution_status:
            status = event.execution_status
        elif event.execution_id in self._statuses:
            status = self._statuses[event.execution_id]
        else:
            past = await self._engine.get_execution(event.execution_id, at_sequence=event.sequence)
            status = past.status
        if status.is_terminal:
            self._statuses.pop(event.execution_id, None)
        else:
            self._statuses[event.execution_id] = status
        return status

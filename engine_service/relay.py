"""The outbox relay: ships committed events to the analytics service, at least once.

Events are marked delivered only after analytics acknowledged them; analytics
deduplicates by event id, so a batch re-sent after a crash changes nothing there. While
analytics is unreachable (or answers with a transient code) the relay backs off
exponentially; the backlog stays in the database (durable, and bounded in memory by one
batch) and is exported as a metric.

Batches are bounded in events and in bytes (below analytics' 4 MiB receive limit). A
batch analytics refuses for good (INVALID_ARGUMENT, RESOURCE_EXHAUSTED, ...) is split in
halves until the refused events are alone; those are set aside durably with the refusal
(`outbox_dead_letters`, a metric, a log line) and the rest is shipped, so one event can
never hold back the ones behind it. `python -m engine_service.relay dead-letters list`
shows them; `... replay` puts them back in the outbox.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import grpc
from grpc import aio
from prometheus_client import CollectorRegistry, Counter
from stepstream.v1 import analytics_pb2, analytics_pb2_grpc, events_pb2

from engine_service.core.state import ExecutionEvent
from engine_service.storage import create_database_engine
from engine_service.storage.outbox import DeadLetters, Outbox, Refusal
from engine_service.transport.mapping import event_to_proto

log = logging.getLogger(__name__)

# Codes that say the events themselves are wrong: sending them again cannot succeed.
PERMANENT = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.RESOURCE_EXHAUSTED,  # over analytics' message size limit
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.PERMISSION_DENIED,  # the relay's token does not cover the tenant
    }
)
# Every other code keeps the events and backs off: UNAVAILABLE, DEADLINE_EXCEEDED,
# UNAUTHENTICATED (a configuration to fix), and INTERNAL and UNKNOWN too, which say nothing
# about the events (analytics answers INTERNAL while its database restarts: setting events
# aside then would take them out of the aggregates).
# Protobuf framing around each event (tag + length) and around the batch (request and
# batch headers, batch id): the byte bound counts them.
_EVENT_FRAMING = 6
_BATCH_FRAMING = 64


@dataclass(frozen=True, slots=True)
class RelaySettings:
    target: str
    batch_size: int = 500
    # Most bytes of one IngestEvents request; an event larger than this travels alone.
    max_batch_bytes: int = 1024 * 1024
    # How long to wait for new events when the outbox is empty.
    idle_seconds: float = 0.2
    first_backoff_seconds: float = 0.5
    max_backoff_seconds: float = 30.0
    call_timeout_seconds: float = 30.0
    # Bearer token for an analytics service that requires one.
    token: str = ""


class RelayMetrics:
    """The relay's own Prometheus series, in the engine's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.set_aside = Counter(
            "stepstream_engine_outbox_set_aside_events_total",
            "Events the outbox relay set aside because analytics refused them for good, "
            "by gRPC code (UNENCODABLE: the event could not be put on the wire).",
            ["code"],
            registry=registry,
        )

    def count_set_aside(self, refusal: Refusal) -> None:
        self.set_aside.labels(code=refusal.code).inc()


@dataclass(frozen=True, slots=True)
class _Outgoing:
    event: ExecutionEvent
    message: events_pb2.ExecutionEvent
    size: int


@dataclass
class _Shipment:
    """What became of one claim's events."""

    delivered: list[ExecutionEvent] = field(default_factory=list)
    refused: list[tuple[ExecutionEvent, Refusal]] = field(default_factory=list)


def byte_bounded(outgoing: Sequence[_Outgoing], max_bytes: int) -> Iterator[list[_Outgoing]]:
    """`outgoing` in order, cut into runs of at most `max_bytes` on the wire (one event
    larger than that is a run of its own)."""
    run: list[_Outgoing] = []
    size = _BATCH_FRAMING
    for item in outgoing:
        cost = item.size + _EVENT_FRAMING
        if run and size + cost > max_bytes:
            yield run
            run, size = [], _BATCH_FRAMING
        run.append(item)
        size += cost
    if run:
        yield run


def _encode(events: Sequence[ExecutionEvent], shipment: _Shipment) -> list[_Outgoing]:
    outgoing = []
    for event in events:
        try:
            message = event_to_proto(event)
        except Exception as exc:  # a stored event the contract cannot carry
            shipment.refused.append((event, Refusal("UNENCODABLE", f"{type(exc).__name__}: {exc}")))
            continue
        outgoing.append(_Outgoing(event, message, message.ByteSize()))
    return outgoing


class OutboxRelay:
    def __init__(
        self,
        outbox: Outbox,
        settings: RelaySettings,
        *,
        on_shipped: Callable[[int], None] = lambda _count: None,
        on_backlog: Callable[[int], None] = lambda _count: None,
        on_set_aside: Callable[[Refusal], None] = lambda _refusal: None,
    ) -> None:
        self._outbox = outbox
        self._settings = settings
        self._on_shipped = on_shipped
        self._on_backlog = on_backlog
        self._on_set_aside = on_set_aside
        self._channel: aio.Channel | None = None
        self._task: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        """Open the channel to analytics: enough to call `ship_once` by hand."""
        if self._channel is None:
            self._channel = aio.insecure_channel(self._settings.target)

    async def start(self) -> None:
        """Connect, and ship in the background until `stop`."""
        await self.connect()
        self._task = asyncio.create_task(self._run(), name="outbox-relay")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._channel is not None:
            await self._channel.close(None)

    async def ship_once(self) -> int:
        """Ship one claim of events; how many left the outbox (0: it was empty).

        A transient failure is raised once what got through before it is recorded (those
        events are not sent again)."""
        shipment = _Shipment()
        failure: BaseException | None = None
        async with self._outbox.claim(self._settings.batch_size) as batch:
            if not batch.events:
                return 0
            try:
                for run in byte_bounded(_encode(batch.events, shipment), self._max_bytes):
                    await self._deliver(run, shipment)
            except (grpc.RpcError, OSError) as exc:
                failure = exc
            await batch.delivered(shipment.delivered)
            await batch.set_aside(shipment.refused)
        self._report(shipment)
        if failure is not None:
            raise failure
        return len(shipment.delivered) + len(shipment.refused)

    @property
    def _max_bytes(self) -> int:
        return self._settings.max_batch_bytes

    async def _deliver(self, run: list[_Outgoing], shipment: _Shipment) -> None:
        """Send `run`; on a permanent refusal, its halves, until each refused event is
        alone. At most 2n - 1 calls for n events."""
        pending = [run]
        while pending:
            part = pending.pop(0)  # oldest first
            try:
                await self._send(part)
            except aio.AioRpcError as exc:
                if exc.code() not in PERMANENT:
                    raise
                if len(part) > 1:
                    middle = len(part) // 2
                    pending[:0] = [part[:middle], part[middle:]]
                    continue
                refusal = Refusal(exc.code().name, exc.details() or "")
                shipment.refused.append((part[0].event, refusal))
            else:
                shipment.delivered.extend(item.event for item in part)

    async def _send(self, part: list[_Outgoing]) -> None:
        assert self._channel is not None
        stub = analytics_pb2_grpc.AnalyticsServiceStub(self._channel)
        request = analytics_pb2.IngestEventsRequest(
            batch=events_pb2.EventBatch(
                events=[item.message for item in part], batch_id=str(uuid.uuid4())
            )
        )
        metadata = (
            (("authorization", f"Bearer {self._settings.token}"),) if self._settings.token else None
        )
        await stub.IngestEvents(
            iter([request]), timeout=self._settings.call_timeout_seconds, metadata=metadata
        )

    def _report(self, shipment: _Shipment) -> None:
        for event, refusal in shipment.refused:
            log.error(
                "set aside event %s (execution %s, sequence %d): analytics refused it with "
                "%s: %s; see `python -m engine_service.relay dead-letters list`",
                event.event_id,
                event.execution_id,
                event.sequence,
                refusal.code,
                refusal.reason[:500],
            )
            self._on_set_aside(refusal)
        if shipment.delivered:
            self._on_shipped(len(shipment.delivered))

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


# -- `python -m engine_service.relay dead-letters list|replay` ------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """List or replay the events the relay set aside, in the database of the engine's
    settings (STEPSTREAM_ENGINE_DATABASE_URL)."""
    from engine_service.settings import EngineSettings

    args = _parser().parse_args(argv)
    if args.action == "replay" and not args.event_ids and not args.all:
        _parser().error("name the event ids to replay, or --all")
    url = EngineSettings().database_url.get_secret_value()
    return asyncio.run(_dead_letters(args, url))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m engine_service.relay", description="The outbox relay's tools."
    )
    groups = parser.add_subparsers(dest="group", required=True)
    letters = groups.add_parser("dead-letters", help="events analytics refused for good")
    actions = letters.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="the set-aside events, oldest first")
    listing.add_argument("--limit", type=int, default=100, help="at most this many")
    replay = actions.add_parser("replay", help="put set-aside events back in the outbox")
    replay.add_argument("event_ids", nargs="*", help="the events to put back")
    replay.add_argument("--all", action="store_true", help="put every set-aside event back")
    return parser


async def _dead_letters(args: argparse.Namespace, database_url: str) -> int:
    engine = create_database_engine(database_url)
    letters = DeadLetters(engine)
    try:
        if args.action == "list":
            for letter in await letters.list(args.limit):
                reason = " ".join(letter.reason.split())
                print(
                    f"{letter.event_id}\t{letter.execution_id}\t{letter.sequence}\t"
                    f"{letter.tenant}\t{letter.set_aside_at.isoformat()}\t{letter.code}\t{reason}"
                )
            print(f"{await letters.count()} event(s) set aside", file=sys.stderr)
        else:
            replayed = await letters.replay(None if args.all else args.event_ids)
            print(f"{replayed} event(s) put back in the outbox", file=sys.stderr)
    finally:
        await engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())

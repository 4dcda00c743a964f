"""The outbox relay against a real analytics service on 127.0.0.1: batches bounded in bytes,
refused events set aside (and replayable), transient failures keep everything.

The engine's store runs on SQLite and on Postgres; analytics on a SQLite file of its own.
"""

from __future__ import annotations

import asyncio
import csv
import io
import os
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry
from stepstream.v1 import analytics_pb2

from analytics_service.core.events import ExecutionEvent as AnalyticsEvent
from analytics_service.main import RunningService
from engine_service.core.state import ExecutionEvent, replay
from engine_service.relay import OutboxRelay, RelayMetrics, RelaySettings
from engine_service.storage import SqlExecutionStore, open_store
from engine_service.storage.outbox import DeadLetters, Outbox, Refusal
from tests.integration.analytics.conftest import ManualClock, connected, running_service
from tests.integration.engine_storage.test_store_contract import new_execution, running_events
from tests.unit.analytics.builders import T0

pytestmark = pytest.mark.timeout(60)


@dataclass
class Pipeline:
    store: SqlExecutionStore
    outbox: Outbox
    dead_letters: DeadLetters
    analytics: RunningService
    set_aside: list[Refusal] = field(default_factory=list)
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def relay(self, **settings: Any) -> OutboxRelay:
        target = f"127.0.0.1:{self.analytics.port}"
        metrics = RelayMetrics(self.registry)

        def set_aside(refusal: Refusal) -> None:
            self.set_aside.append(refusal)
            metrics.count_set_aside(refusal)

        return OutboxRelay(
            self.outbox, RelaySettings(target=target, **settings), on_set_aside=set_aside
        )

    def set_aside_metric(self, code: str) -> float | None:
        return self.registry.get_sample_value(
            "stepstream_engine_outbox_set_aside_events_total", {"code": code}
        )

    async def add_execution(self, change: Any = None, inputs: Any = None) -> list[ExecutionEvent]:
        """One execution's four events (created, running, step a running and completed);
        `change` rewrites each event, `inputs` the first one's inputs."""
        state, first = new_execution()
        if inputs is not None:
            first = replace(first, inputs=inputs)
            state = replace(state, inputs=inputs)
        if change is not None:
            first = change(first)
        await self.store.create_execution(state, [first])
        events = running_events(state)
        if change is not None:
            events = [change(event) for event in events]
        await self.store.append(replay(state, events), events)
        return [first, *events]

    async def drain(self, relay: OutboxRelay) -> int:
        """Ship until the outbox is empty; how many rounds it took."""
        for rounds in range(1, 200):
            if await relay.ship_once() == 0:
                return rounds
        raise AssertionError("the outbox never drained")

    async def analytics_executions(self) -> set[str]:
        """The executions whose step attempt analytics stored (one per execution here)."""
        async with connected(self.analytics) as stub:
            chunks = stub.ExportCsv(analytics_pb2.ExportCsvRequest())
            text = b"".join([chunk.chunk async for chunk in chunks]).decode()
        return {row["execution_id"] for row in csv.DictReader(io.StringIO(text, newline=""))}


@pytest.fixture
async def pipeline(database_url: str, tmp_path: Path) -> AsyncIterator[Pipeline]:
    store = await open_store(database_url)
    clock = ManualClock(T0)
    try:
        async with running_service(f"sqlite+aiosqlite:///{tmp_path}/analytics.db", clock) as svc:
            yield Pipeline(store, Outbox(store.engine), DeadLetters(store.engine), svc)
    finally:
        await store.close()


def negative_duration(event: ExecutionEvent) -> ExecutionEvent:
    """As a wall clock stepped back made them, before durations were clamped at the source."""
    return replace(event, duration=-0.002) if event.duration else event


async def connected_relay(relay: OutboxRelay) -> OutboxRelay:
    """A relay the test drives with `ship_once` (no background loop)."""
    await relay.connect()
    return relay


async def test_a_refused_event_is_set_aside_and_every_other_one_shipped(
    pipeline: Pipeline,
) -> None:
    # ../shared/repros/analytics/relay_poison.py: the refused batch was retried forever.
    good = [await pipeline.add_execution() for _ in range(3)]
    poisoned = await pipeline.add_execution(change=negative_duration)
    good += [await pipeline.add_execution() for _ in range(3)]
    relay = pipeline.relay(batch_size=5, idle_seconds=0.01)
    await relay.start()  # the relay's own loop, as the engine runs it
    try:
        for _ in range(1000):
            if await pipeline.outbox.backlog() == 0:
                break
            await asyncio.sleep(0.01)
    finally:
        await relay.stop()
    assert await pipeline.outbox.backlog() == 0
    [letter] = await pipeline.dead_letters.list()
    completed = poisoned[-1]
    assert (letter.event_id, letter.execution_id, letter.sequence) == (
        completed.event_id,
        completed.execution_id,
        completed.sequence,
    )
    assert letter.code == "INVALID_ARGUMENT"
    assert "events[0].duration: must not be negative" in letter.reason
    assert [refusal.code for refusal in pipeline.set_aside] == ["INVALID_ARGUMENT"]
    assert pipeline.set_aside_metric("INVALID_ARGUMENT") == 1
    assert await pipeline.analytics_executions() == {events[0].execution_id for events in good}


async def test_set_aside_events_are_replayed_on_demand(pipeline: Pipeline) -> None:
    poisoned = await pipeline.add_execution(change=negative_duration)
    await pipeline.add_execution()
    relay = await connected_relay(pipeline.relay())
    try:
        await pipeline.drain(relay)
        assert await pipeline.dead_letters.count() == 1
        assert await pipeline.dead_letters.replay(["no-such-event"]) == 0
        assert await pipeline.dead_letters.replay() == 1
        assert (await pipeline.outbox.backlog(), await pipeline.dead_letters.count()) == (1, 0)
        # Still refused: set aside again, with the reason of this refusal.
        assert await relay.ship_once() == 1
    finally:
        await relay.stop()
    [letter] = await pipeline.dead_letters.list()
    assert letter.event_id == poisoned[-1].event_id
    assert len(pipeline.set_aside) == 2


async def test_batches_are_bounded_in_bytes_and_an_event_too_large_is_set_aside(
    pipeline: Pipeline,
) -> None:
    # Issue 11: 4.2 MB of inputs made the next batch larger than analytics' 4 MiB receive
    # limit, refused with RESOURCE_EXHAUSTED and retried forever. Inputs this large are
    # refused at the engine's boundary now; these were stored before that.
    large = [await pipeline.add_execution(inputs={"x": "x" * 400_000}) for _ in range(12)]
    huge = await pipeline.add_execution(inputs={"x": "x" * 4_200_000})
    relay = await connected_relay(pipeline.relay())
    try:
        await pipeline.drain(relay)
    finally:
        await relay.stop()
    [letter] = await pipeline.dead_letters.list()
    assert (letter.event_id, letter.code) == (huge[0].event_id, "RESOURCE_EXHAUSTED")
    expected = {events[0].execution_id for events in [*large, huge]}
    assert await pipeline.analytics_executions() == expected


async def test_transient_failures_keep_every_event_in_the_outbox(pipeline: Pipeline) -> None:
    await pipeline.add_execution()
    await pipeline.analytics.stop(0)
    relay = await connected_relay(pipeline.relay(call_timeout_seconds=5))
    try:
        for _ in range(3):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await relay.ship_once()
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await relay.stop()
    assert (await pipeline.outbox.backlog(), await pipeline.dead_letters.count()) == (4, 0)


async def test_internal_errors_keep_every_event_and_set_none_aside(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    # INTERNAL says nothing about the events: analytics answers it while its database
    # restarts (tests/e2e/pipeline), and those events must reach the aggregates after.
    ingestor = pipeline.analytics.use_cases.ingestor
    real_ingest = ingestor.ingest
    broken = True

    async def ingest(events: Sequence[AnalyticsEvent]) -> Any:
        if broken and any(event.workflow_id == "breaks-analytics" for event in events):
            raise RuntimeError("the database is starting up")
        return await real_ingest(events)

    monkeypatch.setattr(ingestor, "ingest", ingest)
    breaking = await pipeline.add_execution(
        change=lambda event: replace(event, workflow_id="breaks-analytics")
    )
    healthy = await pipeline.add_execution()
    relay = await connected_relay(pipeline.relay(batch_size=10))
    try:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await relay.ship_once()
        assert caught.value.code() == grpc.StatusCode.INTERNAL
        assert (await pipeline.outbox.backlog(), await pipeline.dead_letters.count()) == (8, 0)
        broken = False
        await pipeline.drain(relay)
    finally:
        await relay.stop()
    assert await pipeline.dead_letters.count() == 0
    assert await pipeline.analytics_executions() == {
        breaking[0].execution_id,
        healthy[0].execution_id,
    }


async def _relay_command(database_url: str, *args: str) -> tuple[str, str]:
    environment = {**os.environ, "STEPSTREAM_ENGINE_DATABASE_URL": database_url}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "engine_service.relay",
        "dead-letters",
        *args,
        env=environment,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, err.decode()
    return out.decode(), err.decode()


async def test_the_dead_letters_command_lists_and_replays(
    pipeline: Pipeline, database_url: str
) -> None:
    poisoned = await pipeline.add_execution(change=negative_duration)
    relay = await connected_relay(pipeline.relay())
    try:
        await pipeline.drain(relay)
    finally:
        await relay.stop()
    listed, summary = await _relay_command(database_url, "list")
    [line] = listed.splitlines()
    event_id, execution_id, sequence, tenant, _when, code, reason = line.split("\t")
    assert (event_id, execution_id, sequence, tenant, code) == (
        poisoned[-1].event_id,
        poisoned[-1].execution_id,
        "4",
        "default",
        "INVALID_ARGUMENT",
    )
    assert "must not be negative" in reason
    assert summary.strip() == "1 event(s) set aside"
    _, replayed = await _relay_command(database_url, "replay", "--all")
    assert replayed.strip() == "1 event(s) put back in the outbox"
    assert await pipeline.outbox.backlog() == 1

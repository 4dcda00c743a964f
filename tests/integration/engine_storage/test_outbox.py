"""The outbox: claims are disjoint between relays, and only acknowledged events leave it."""

from __future__ import annotations

import asyncio

import pytest

from engine_service.core.state import replay
from engine_service.storage import open_store
from engine_service.storage.outbox import Outbox
from tests.integration.engine_storage.test_store_contract import new_execution, running_events


async def _store_with_events(url: str, executions: int):  # type: ignore[no-untyped-def]
    store = await open_store(url)
    for _ in range(executions):
        state, event = new_execution()
        await store.create_execution(state, [event])
        events = running_events(state)
        await store.append(replay(state, events), events)
    return store


async def _acknowledge_then_fail(outbox: Outbox) -> None:
    async with outbox.claim(5) as batch:
        await batch.delivered()
        raise RuntimeError("the send failed after all")


async def test_only_acknowledged_events_leave_the_outbox(database_url: str) -> None:
    store = await _store_with_events(database_url, 3)  # 3 x 4 events
    outbox = Outbox(store.engine)
    try:
        assert await outbox.backlog() == 12
        async with outbox.claim(5) as batch:
            assert len(batch.events) == 5
            # Not acknowledged: rolled back, still in the outbox.
        assert await outbox.backlog() == 12
        with pytest.raises(RuntimeError):
            await _acknowledge_then_fail(outbox)
        assert await outbox.backlog() == 12
        shipped = []
        while True:
            async with outbox.claim(5) as batch:
                if not batch.events:
                    break
                shipped += batch.events
                await batch.delivered()
        assert await outbox.backlog() == 0
        assert len({e.event_id for e in shipped}) == 12
    finally:
        await store.close()


async def test_concurrent_relays_claim_disjoint_batches(postgres_url: str) -> None:
    store = await _store_with_events(postgres_url, 5)  # 20 events
    outbox = Outbox(store.engine)
    first_claimed = asyncio.Event()
    release = asyncio.Event()
    seen: dict[str, list[str]] = {}

    async def relay(name: str, hold: bool) -> None:
        async with outbox.claim(8) as batch:
            seen[name] = [e.event_id for e in batch.events]
            if hold:
                first_claimed.set()
                await release.wait()
            await batch.delivered()

    try:
        holder = asyncio.create_task(relay("one", hold=True))
        await asyncio.wait_for(first_claimed.wait(), 10)
        await relay("two", hold=False)  # runs while "one" holds its rows locked
        release.set()
        await holder
        assert len(seen["one"]) == 8
        assert len(seen["two"]) == 8
        assert not set(seen["one"]) & set(seen["two"])
        assert await outbox.backlog() == 4
    finally:
        await store.close()

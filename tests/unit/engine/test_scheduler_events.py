"""The event bus: live subscribers of one execution or all, bounded queues, overflow."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from engine_service.core.bus import EventBus
from engine_service.core.engine import Engine
from engine_service.core.state import EventKind, ExecutionEvent, ExecutionStatus
from tests.unit.engine.scheduler_harness import TENANT, run, start

pytestmark = pytest.mark.looptime

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def event(execution_id: str, sequence: int) -> ExecutionEvent:
    return ExecutionEvent(
        event_id=f"{execution_id}-{sequence}",
        execution_id=execution_id,
        sequence=sequence,
        timestamp=T0,
        kind=EventKind.EXECUTION_STATUS_CHANGED,
        tenant=TENANT,
        workflow_id="wf",
        workflow_version=1,
        execution_status=ExecutionStatus.RUNNING,
    )


async def test_a_subscriber_gets_its_executions_events_and_is_closed_when_it_ends(
    engine: Engine,
) -> None:
    await engine.register_workflow({"id": "wf", "steps": [{"id": "a", "action": "noop"}]}, TENANT)
    state, _ = await engine.start_execution(TENANT, "wf")
    watcher = engine.bus.subscribe(state.id)
    await engine.wait_for(state.id)
    batches: list[list[ExecutionEvent]] = []
    while (batch := await watcher.next_batch(2)) is not None:
        assert len(batch) <= 2
        batches.append(batch)
    # Subscribed after the PENDING event (sequence 1) was published.
    assert [e.sequence for batch in batches for e in batch] == [2, 3, 4, 5]
    assert watcher.closed
    assert not watcher.overflowed
    assert engine.bus.subscriber_count == 0


async def test_a_global_subscriber_with_a_filter_sees_only_what_it_accepts(engine: Engine) -> None:
    terminal = engine.bus.subscribe(
        accepts=lambda e: e.execution_status is not None and e.execution_status.is_terminal
    )
    first, _ = await run(engine, {"id": "wf", "steps": [{"id": "a", "action": "noop"}]})
    second = await start(engine, {"id": "wf2", "steps": [{"id": "a", "action": "fail"}]})
    await engine.wait_for(second.id)
    batch = await terminal.next_batch(10)
    assert batch is not None
    assert [(e.execution_id, e.execution_status) for e in batch] == [
        (first.id, ExecutionStatus.COMPLETED),
        (second.id, ExecutionStatus.FAILED),
    ]
    # Global subscribers outlive executions.
    assert not terminal.closed
    engine.bus.unsubscribe(terminal)
    assert await terminal.next_batch(10) is None


async def test_a_subscriber_that_falls_behind_overflows_and_is_closed_without_blocking() -> None:
    bus = EventBus(queue_size=3)
    slow = bus.subscribe("e")
    fast = bus.subscribe("e")
    bus.publish([event("e", 1), event("e", 2)])
    assert [e.sequence for e in await fast.next_batch(10) or []] == [1, 2]
    bus.publish([event("e", 3), event("e", 4), event("e", 5)])
    assert slow.overflowed
    assert slow.closed
    assert not fast.overflowed
    # What was queued before the overflow is still delivered, then the end.
    assert [e.sequence for e in await slow.next_batch(10) or []] == [1, 2, 3]
    assert await slow.next_batch(10) is None
    assert [e.sequence for e in await fast.next_batch(10) or []] == [3, 4, 5]
    assert bus.subscriber_count == 1


async def test_events_of_other_executions_do_not_reach_a_subscriber() -> None:
    bus = EventBus()
    mine = bus.subscribe("mine")
    bus.publish([event("other", 1), event("mine", 1)])
    bus.close_execution("mine")
    assert [e.execution_id for e in await mine.next_batch(10) or []] == ["mine"]
    assert await mine.next_batch(10) is None
    bus.unsubscribe(mine)
    assert bus.subscriber_count == 0


async def test_the_close_marker_stops_a_batch_and_stays_for_the_next_read() -> None:
    bus = EventBus()
    subscription = bus.subscribe("e")
    bus.publish([event("e", 1)])
    bus.close_execution("e")
    assert [e.sequence for e in await subscription.next_batch(10) or []] == [1]
    assert await subscription.next_batch(10) is None

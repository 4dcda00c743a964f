"""`step_attempts`: one row per attempt, fallback and compensation, each with its own
outcome, on SQLite and Postgres."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from engine_service.core.actions import builtin_actions
from engine_service.core.engine import Engine
from engine_service.core.state import (
    EventKind,
    ExecutionEvent,
    ExecutionState,
    ExecutionStatus,
    StepStatus,
    replay,
)
from engine_service.storage import SqlExecutionStore, open_store
from engine_service.storage.models import step_attempts
from tests.integration.engine_storage.test_store_contract import _event, new_execution

pytestmark = pytest.mark.timeout(60)

Row = tuple[str, int, str, str, str]


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[SqlExecutionStore]:
    sql = await open_store(database_url)
    try:
        yield sql
    finally:
        await sql.close()


async def rows(store: SqlExecutionStore, execution_id: str) -> list[Row]:
    query = (
        select(step_attempts)
        .where(step_attempts.c.execution_id == execution_id)
        .order_by(step_attempts.c.step_id, step_attempts.c.attempt, step_attempts.c.kind)
    )
    async with store.engine.connect() as connection:
        found = await connection.execute(query)
        return [(r.step_id, r.attempt, r.kind, r.status, r.error_type) for r in found]


async def test_fallbacks_and_compensations_get_rows_of_their_own(
    store: SqlExecutionStore,
) -> None:
    engine = Engine(store, actions=builtin_actions(), rng=random.Random(0))
    workflow = {
        "id": "wf",
        "on_failure": "COMPENSATE",
        "steps": [
            {
                "id": "a",
                "action": "fail",
                "parameters": {"error_type": "Down"},
                "fallback": {"action": "noop"},
            },
            {
                "id": "b",
                "action": "noop",
                "depends_on": ["a"],
                "compensate": {"action": "delay", "parameters": {"seconds": 0.01}},
            },
            {
                "id": "c",
                "action": "fail",
                "parameters": {"error_type": "Fatal"},
                "depends_on": ["b"],
            },
        ],
    }
    try:
        await engine.register_workflow(workflow, "default")
        state, _ = await engine.start_execution("default", "wf")
        final = await engine.wait_for(state.id)
    finally:
        await engine.stop()
    assert final.status is ExecutionStatus.FAILED
    assert await rows(store, state.id) == [
        ("a", 1, "ATTEMPT", "FAILED", "Down"),
        ("a", 1, "FALLBACK", "COMPLETED", ""),
        ("b", 1, "ATTEMPT", "COMPLETED", ""),
        ("b", 1, "COMPENSATION", "COMPLETED", ""),
        ("c", 1, "ATTEMPT", "FAILED", "Fatal"),
    ]


def _step(
    state: ExecutionState, sequence: int, status: StepStatus, **fields: Any
) -> ExecutionEvent:
    return _event(
        state,
        sequence,
        EventKind.STEP_STATUS_CHANGED,
        step_id="a",
        step_status=status,
        attempt=1,
        action="noop",
        **fields,
    )


def _retrying_then_cancelled(state: ExecutionState) -> list[list[ExecutionEvent]]:
    """RUNNING; FAILED and RETRYING; then a cancel: the step's and the run's CANCELLED."""
    failed = _step(state, 4, StepStatus.FAILED, error=None, duration=0.5)
    later = state.created_at + timedelta(seconds=30)
    retrying = _step(state, 5, StepStatus.RETRYING, next_attempt_at=later)
    cancelled = _step(state, 6, StepStatus.CANCELLED)
    ended = _event(state, 7, EventKind.EXECUTION_STATUS_CHANGED, ExecutionStatus.CANCELLED)
    running = [
        _event(state, 2, EventKind.EXECUTION_STATUS_CHANGED, ExecutionStatus.RUNNING),
        _step(state, 3, StepStatus.RUNNING),
    ]
    return [running, [failed, retrying], [cancelled, ended]]


@pytest.mark.parametrize("together", [False, True], ids=["three appends", "one append"])
async def test_a_cancel_while_retrying_leaves_the_failed_attempt_as_it_ended(
    store: SqlExecutionStore, together: bool
) -> None:
    state, event = new_execution()
    await store.create_execution(state, [event])
    appends = _retrying_then_cancelled(state)
    if together:
        appends = [[e for events in appends for e in events]]
    for events in appends:
        state = replay(state, events)
        await store.append(state, events)
    assert state.status is ExecutionStatus.CANCELLED
    assert await rows(store, state.id) == [("a", 1, "ATTEMPT", "FAILED", "")]


async def test_a_cancel_ends_the_running_attempt_as_cancelled(store: SqlExecutionStore) -> None:
    state, event = new_execution()
    await store.create_execution(state, [event])
    running, _, cancel = _retrying_then_cancelled(state)
    cancel = [replace(e, sequence=e.sequence - 2) for e in cancel]
    for events in (running, cancel):
        state = replay(state, events)
        await store.append(state, events)
    assert await rows(store, state.id) == [("a", 1, "ATTEMPT", "CANCELLED", "")]


async def test_concurrent_runs_record_every_attempt(store: SqlExecutionStore) -> None:
    engine = Engine(store, actions=builtin_actions(), rng=random.Random(1))
    workflow = {
        "id": "flaky",
        "steps": [
            {
                "id": "s",
                "action": "fail",
                "parameters": {"times": 2, "error_type": "Flaky"},
                "retry": {"max_attempts": 3, "initial_interval": "0.01s"},
            }
        ],
    }
    try:
        await engine.register_workflow(workflow, "default")
        keys = [str(uuid.uuid4()) for _ in range(5)]
        started = [
            (await engine.start_execution("default", "flaky", idempotency_key=k))[0] for k in keys
        ]
        finals = await asyncio.gather(*(engine.wait_for(s.id) for s in started))
    finally:
        await engine.stop()
    for final in finals:
        assert final.status is ExecutionStatus.COMPLETED
        assert await rows(store, final.id) == [
            ("s", 1, "ATTEMPT", "FAILED", "Flaky"),
            ("s", 2, "ATTEMPT", "FAILED", "Flaky"),
            ("s", 3, "ATTEMPT", "COMPLETED", ""),
        ]

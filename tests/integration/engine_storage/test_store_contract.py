"""The storage port's contract, run against every implementation.

The in-memory store is the reference; the SQL store on SQLite and on Postgres must
behave the same way for every case here.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from engine_service.core.commands import Command, CommandKind, CommandOutcome
from engine_service.core.definitions import parse_definition
from engine_service.core.engine import Engine
from engine_service.core.errors import (
    ConcurrentModification,
    InvalidArgument,
    LeaseLost,
    NotFound,
)
from engine_service.core.state import (
    EventKind,
    ExecutionEvent,
    ExecutionState,
    ExecutionStatus,
    StepState,
    StepStatus,
    apply,
    blank,
    replay,
)
from engine_service.core.store import ExecutionQuery, ExecutionStore, Lease, WorkflowQuery

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def definition(workflow_id: str = "wf", tenant: str = "default", **extra: object):  # type: ignore[no-untyped-def]
    data = {
        "id": workflow_id,
        "tenant": tenant,
        "steps": [
            {"id": "a", "action": "noop"},
            {"id": "b", "action": "noop", "depends_on": ["a"]},
        ],
        **extra,
    }
    return parse_definition(data)


def new_execution(
    *,
    tenant: str = "default",
    workflow_id: str = "wf",
    created_at: datetime = T0,
    key: str = "",
    parent: str = "",
) -> tuple[ExecutionState, ExecutionEvent]:
    state = ExecutionState(
        id=str(uuid.uuid4()),
        tenant=tenant,
        workflow_id=workflow_id,
        workflow_version=1,
        created_at=created_at,
        steps={"a": StepState("a"), "b": StepState("b")},
        idempotency_key=key,
        parent_execution_id=parent,
    )
    event = _event(state, 1, EventKind.EXECUTION_STATUS_CHANGED, ExecutionStatus.PENDING)
    event = replace(event, inputs={"n": 1, "nested": {"list": [1, "two", None]}})
    return apply(state, event), event


def _event(
    state: ExecutionState,
    sequence: int,
    kind: EventKind,
    execution_status: ExecutionStatus | None = None,
    **fields: object,
) -> ExecutionEvent:
    return ExecutionEvent(
        event_id=str(uuid.uuid4()),
        execution_id=state.id,
        sequence=sequence,
        timestamp=state.created_at + timedelta(seconds=sequence),
        kind=kind,
        tenant=state.tenant,
        workflow_id=state.workflow_id,
        workflow_version=state.workflow_version,
        execution_status=execution_status,
        **fields,  # type: ignore[arg-type]
    )


def running_events(state: ExecutionState) -> list[ExecutionEvent]:
    return [
        _event(state, 2, EventKind.EXECUTION_STATUS_CHANGED, ExecutionStatus.RUNNING),
        _event(
            state,
            3,
            EventKind.STEP_STATUS_CHANGED,
            step_id="a",
            step_status=StepStatus.RUNNING,
            attempt=1,
            action="noop",
        ),
        _event(
            state,
            4,
            EventKind.STEP_STATUS_CHANGED,
            step_id="a",
            step_status=StepStatus.COMPLETED,
            attempt=1,
            action="noop",
            output={"ok": True},
            duration=0.25,
        ),
    ]


async def test_workflow_versions_count_up_per_tenant_and_id(store: ExecutionStore) -> None:
    first = await store.add_workflow(definition())
    second = await store.add_workflow(definition(description="changed"))
    other_tenant = await store.add_workflow(definition(tenant="acme"))
    other_id = await store.add_workflow(definition("other"))
    assert (first.version, second.version, other_tenant.version, other_id.version) == (1, 2, 1, 1)
    assert (await store.get_workflow("default", "wf")).description == "changed"
    assert (await store.get_workflow("default", "wf", 1)).version == 1
    assert await store.get_workflow("default", "wf", 2) == second


async def test_missing_or_foreign_workflow_is_not_found(store: ExecutionStore) -> None:
    await store.add_workflow(definition(tenant="acme"))
    with pytest.raises(NotFound):
        await store.get_workflow("default", "wf")
    with pytest.raises(NotFound):
        await store.get_workflow("acme", "wf", 2)


async def test_list_workflows_gives_latest_versions_filtered_and_paged(
    store: ExecutionStore,
) -> None:
    for workflow_id in ("a1", "a2", "a3"):
        await store.add_workflow(definition(workflow_id, labels={"team": "x"}))
    await store.add_workflow(definition("a2", labels={"team": "y"}))
    await store.add_workflow(definition("z", tenant="acme"))
    latest = await store.list_workflows(WorkflowQuery(tenant="default"))
    assert [(d.id, d.version) for d in latest.items] == [("a1", 1), ("a2", 2), ("a3", 1)]
    every = await store.list_workflows(WorkflowQuery(tenant="default", all_versions=True))
    assert len(every.items) == 4
    team_x = await store.list_workflows(WorkflowQuery(tenant="default", labels={"team": "x"}))
    assert [d.id for d in team_x.items] == ["a1", "a3"]
    first = await store.list_workflows(WorkflowQuery(tenant="default", page_size=2))
    rest = await store.list_workflows(
        WorkflowQuery(tenant="default", page_size=2, page_token=first.next_page_token)
    )
    assert [d.id for d in first.items + rest.items] == ["a1", "a2", "a3"]
    assert rest.next_page_token == ""
    with pytest.raises(InvalidArgument):
        await store.list_workflows(WorkflowQuery(page_token="not-a-token"))


async def test_created_execution_reads_back_equal(store: ExecutionStore) -> None:
    state, event = new_execution()
    stored, created = await store.create_execution(state, [event])
    assert created
    assert stored == state
    assert await store.get_execution(state.id) == state
    assert await store.read_events(state.id) == [event]


async def test_idempotency_key_returns_the_first_execution_per_tenant(
    store: ExecutionStore,
) -> None:
    first, first_event = new_execution(key="k")
    again, again_event = new_execution(key="k")
    elsewhere, elsewhere_event = new_execution(key="k", tenant="acme")
    assert (await store.create_execution(first, [first_event]))[1]
    existing, created = await store.create_execution(again, [again_event])
    assert not created
    assert existing.id == first.id
    with pytest.raises(NotFound):
        await store.get_execution(again.id)
    assert (await store.create_execution(elsewhere, [elsewhere_event]))[1]


async def test_append_commits_events_with_their_state(store: ExecutionStore) -> None:
    state, event = new_execution()
    await store.create_execution(state, [event])
    events = running_events(state)
    after = replay(state, events)
    await store.append(after, events)
    assert await store.get_execution(state.id) == after
    assert await store.read_events(state.id) == [event, *events]
    assert await store.read_events(state.id, after_sequence=2) == events[1:]
    assert await store.read_events(state.id, after_sequence=1, limit=2) == events[:2]


async def test_append_at_a_stale_sequence_is_refused(store: ExecutionStore) -> None:
    state, event = new_execution()
    await store.create_execution(state, [event])
    events = running_events(state)
    await store.append(replay(state, events[:1]), events[:1])
    with pytest.raises(ConcurrentModification):
        await store.append(replay(state, events[:1]), events[:1])
    assert [e.sequence for e in await store.read_events(state.id)] == [1, 2]


async def test_unknown_execution_is_not_found(store: ExecutionStore) -> None:
    with pytest.raises(NotFound):
        await store.get_execution("nope")
    with pytest.raises(NotFound):
        await store.read_events("nope")


async def test_list_executions_filters_and_pages_newest_first(store: ExecutionStore) -> None:
    made = []
    for minute in range(5):
        state, event = new_execution(created_at=T0 + timedelta(minutes=minute))
        await store.create_execution(state, [event])
        made.append(state)
    parent = made[0].id
    child, child_event = new_execution(created_at=T0 + timedelta(minutes=9), parent=parent)
    await store.create_execution(child, [child_event])
    other, other_event = new_execution(tenant="acme", workflow_id="other")
    await store.create_execution(other, [other_event])
    await store.append(replay(made[1], running_events(made[1])[:1]), running_events(made[1])[:1])

    everything = await store.list_executions(ExecutionQuery(tenant="default"))
    assert [s.id for s in everything.items] == [child.id] + [s.id for s in reversed(made)]
    running = await store.list_executions(
        ExecutionQuery(tenant="default", statuses=frozenset({ExecutionStatus.RUNNING}))
    )
    assert [s.id for s in running.items] == [made[1].id]
    window = await store.list_executions(
        ExecutionQuery(
            tenant="default",
            created_after=T0 + timedelta(minutes=1),
            created_before=T0 + timedelta(minutes=3),
        )
    )
    assert [s.id for s in window.items] == [made[2].id, made[1].id]
    children = await store.list_executions(ExecutionQuery(parent_execution_id=parent))
    assert [s.id for s in children.items] == [child.id]
    by_workflow = await store.list_executions(ExecutionQuery(workflow_id="other"))
    assert [s.id for s in by_workflow.items] == [other.id]
    page = await store.list_executions(ExecutionQuery(tenant="default", page_size=4))
    rest = await store.list_executions(
        ExecutionQuery(tenant="default", page_size=4, page_token=page.next_page_token)
    )
    assert len(page.items) == 4
    assert [s.id for s in page.items + rest.items] == [s.id for s in everything.items]


async def test_unfinished_executions_are_the_non_terminal_ones_oldest_first(
    store: ExecutionStore,
) -> None:
    early, early_event = new_execution(created_at=T0)
    late, late_event = new_execution(created_at=T0 + timedelta(hours=1))
    done, done_event = new_execution(created_at=T0 - timedelta(hours=1))
    for state, event in ((late, late_event), (early, early_event), (done, done_event)):
        await store.create_execution(state, [event])
    cancel = _event(done, 2, EventKind.EXECUTION_STATUS_CHANGED, ExecutionStatus.CANCELLED)
    await store.append(apply(done, cancel), [cancel])
    assert [s.id for s in await store.unfinished_executions()] == [early.id, late.id]


async def test_an_engine_run_leaves_a_state_equal_to_the_replay_of_its_events(
    store: ExecutionStore,
) -> None:
    engine = Engine(store, rng=random.Random(3))
    await engine.register_workflow(
        {
            "id": "mixed",
            "steps": [
                {"id": "a", "action": "echo", "parameters": {"v": "${inputs.v}"}},
                {
                    "id": "b",
                    "action": "fail",
                    "depends_on": ["a"],
                    "parameters": {"times": 1},
                    "retry": {"max_attempts": 2, "initial_interval": "0.01s"},
                },
                {"id": "c", "action": "noop", "depends_on": ["a"], "when": "inputs.v > 100"},
                {"id": "d", "action": "noop", "depends_on": ["b", "c"]},
            ],
        },
        "default",
    )
    try:
        started = [
            await engine.start_execution("default", "mixed", inputs={"v": v}) for v in range(8)
        ]
        finals = [await engine.wait_for(s.id) for s, _ in started]
    finally:
        await engine.stop()
    for final in finals:
        assert final.status is ExecutionStatus.COMPLETED
        stored = await store.get_execution(final.id)
        events = await store.read_events(final.id)
        assert [e.sequence for e in events] == list(range(1, len(events) + 1))
        assert replay(blank(stored), events) == stored
        assert stored.steps["b"].attempt == 2
        assert stored.steps["c"].status is StepStatus.SKIPPED


async def test_concurrent_appends_of_many_executions_all_land(store: ExecutionStore) -> None:
    states = []
    for _ in range(40):
        state, event = new_execution()
        await store.create_execution(state, [event])
        states.append(state)

    async def advance(state: ExecutionState) -> ExecutionState:
        for event in running_events(state):
            state = apply(state, event)
            await store.append(state, [event])
        return state

    finals = await asyncio.gather(*(advance(s) for s in states))
    for final in finals:
        assert await store.get_execution(final.id) == final
        assert len(await store.read_events(final.id)) == 4


async def test_commands_are_pending_until_decided_once(store: ExecutionStore) -> None:
    first = Command(
        id=str(uuid.uuid4()),
        execution_id="e1",
        kind=CommandKind.RESUME,
        requested_at=T0,
        inputs={"approved": True, "note": "ok"},
    )
    second = Command(
        id=str(uuid.uuid4()),
        execution_id="e2",
        kind=CommandKind.CANCEL,
        requested_at=T0 + timedelta(seconds=1),
        reason="not needed",
    )
    await store.add_command(second)
    await store.add_command(first)
    assert await store.pending_commands() == [first, second]
    assert await store.get_command(first.id) == first

    assert await store.decide_command(first.id, CommandOutcome.REFUSED, "COMPLETED")
    assert not await store.decide_command(first.id, CommandOutcome.APPLIED)
    decided = await store.get_command(first.id)
    assert (decided.outcome, decided.detail) == (CommandOutcome.REFUSED, "COMPLETED")
    assert await store.pending_commands() == [second]
    with pytest.raises(NotFound):
        await store.get_command("no-such-command")


# ---- leases and fencing -------------------------------------------------------------

LEASE = timedelta(seconds=30)


async def _leased(store: ExecutionStore, owner: str = "a") -> ExecutionState:
    state, event = new_execution()
    await store.create_execution(state, [event], lease=Lease(owner, T0 + LEASE))
    return state


async def _claim(store: ExecutionStore, owner: str, *, take_over: bool = False) -> dict[str, int]:
    now = T0 + 2 * LEASE  # past every lease taken at T0
    claims = await store.claim_executions(
        Lease(owner, now + LEASE), now=now, limit=10, take_over=take_over
    )
    return {claim.state.id: claim.epoch for claim in claims}


async def test_a_leased_execution_takes_appends_at_its_first_epoch_only(
    store: ExecutionStore,
) -> None:
    state = await _leased(store)
    events = running_events(state)
    with pytest.raises(LeaseLost):
        await store.append(replay(state, events[:1]), events[:1])  # epoch 0: unleased
    assert len(await store.read_events(state.id)) == 1
    await store.append(replay(state, events[:1]), events[:1], epoch=1)
    assert (await store.get_execution(state.id)).status is ExecutionStatus.RUNNING


async def test_every_claim_moves_the_epoch_on_and_the_previous_holder_writes_nothing(
    store: ExecutionStore,
) -> None:
    state = await _leased(store, "a")
    unleased, unleased_event = new_execution(created_at=T0 + timedelta(seconds=1))
    await store.create_execution(unleased, [unleased_event])
    assert await _claim(store, "b") == {state.id: 2, unleased.id: 1}
    events = running_events(state)
    with pytest.raises(LeaseLost):
        await store.append(replay(state, events[:1]), events[:1], epoch=1)
    assert await store.get_execution(state.id) == state
    assert len(await store.read_events(state.id)) == 1
    # The same owner claiming again (a restart with the same instance id) fences itself.
    assert await _claim(store, "b", take_over=True) == {state.id: 3, unleased.id: 2}
    with pytest.raises(LeaseLost):
        await store.append(replay(state, events[:1]), events[:1], epoch=2)
    await store.append(replay(state, events[:1]), events[:1], epoch=3)
    assert len(await store.read_events(state.id)) == 2


async def test_renewal_keeps_the_epoch_and_a_claimed_lease_is_not_renewed(
    store: ExecutionStore,
) -> None:
    state = await _leased(store, "a")
    renewal = Lease("a", T0 + 3 * LEASE)
    assert await store.renew_leases(renewal, {state.id: 1}) == {state.id}
    assert await _claim(store, "a") == {}  # renewed past `now`: nothing to claim
    events = running_events(state)
    await store.append(replay(state, events[:1]), events[:1], epoch=1)
    assert await _claim(store, "a", take_over=True) == {state.id: 2}
    assert await store.renew_leases(renewal, {state.id: 1}) == set()  # the stale holder
    assert await store.renew_leases(Lease("b", renewal.expires_at), {state.id: 2}) == set()
    assert await store.renew_leases(renewal, {state.id: 2}) == {state.id}


async def test_a_stale_append_fails_alone_among_concurrent_appends(store: ExecutionStore) -> None:
    fresh = await _leased(store)
    stale = await _leased(store)
    await _claim(store, "b", take_over=True)  # both at epoch 2 now
    fresh_events, stale_events = running_events(fresh), running_events(stale)
    results = await asyncio.gather(
        store.append(replay(fresh, fresh_events), fresh_events, epoch=2),
        store.append(replay(stale, stale_events), stale_events, epoch=1),
        return_exceptions=True,
    )
    assert results[0] is None
    assert isinstance(results[1], LeaseLost)
    assert len(await store.read_events(fresh.id)) == 4
    assert len(await store.read_events(stale.id)) == 1

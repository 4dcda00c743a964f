"""InMemoryStore, the reference implementation of the storage port: workflows, executions,
events, paging, tenants, idempotency and optimistic concurrency."""

from __future__ import annotations

import base64
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from engine_service.core.errors import ConcurrentModification, InvalidArgument, NotFound
from engine_service.core.memory_store import InMemoryStore
from engine_service.core.model import StepDefinition, WorkflowDefinition
from engine_service.core.state import (
    EventKind,
    ExecutionEvent,
    ExecutionState,
    ExecutionStatus,
    apply,
)
from engine_service.core.store import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    ExecutionQuery,
    WorkflowQuery,
    decode_page_token,
    encode_page_token,
    page_bounds,
)

ES = ExecutionStatus
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def workflow(workflow_id: str, tenant: str = "t1", **labels: str) -> WorkflowDefinition:
    return WorkflowDefinition(
        id=workflow_id, tenant=tenant, labels=labels, steps=(StepDefinition("a", "noop"),)
    )


def event(state: ExecutionState, sequence: int, status: ExecutionStatus) -> ExecutionEvent:
    return ExecutionEvent(
        event_id=f"{state.id}-{sequence}",
        execution_id=state.id,
        sequence=sequence,
        timestamp=state.created_at,
        kind=EventKind.EXECUTION_STATUS_CHANGED,
        tenant=state.tenant,
        workflow_id=state.workflow_id,
        workflow_version=1,
        execution_status=status,
    )


async def new_execution(
    store: InMemoryStore,
    execution_id: str,
    *,
    tenant: str = "t1",
    workflow_id: str = "wf",
    minute: int = 0,
    key: str = "",
    parent: str = "",
) -> ExecutionState:
    blank = ExecutionState(
        id=execution_id,
        tenant=tenant,
        workflow_id=workflow_id,
        workflow_version=1,
        created_at=T0 + timedelta(minutes=minute),
        idempotency_key=key,
        parent_execution_id=parent,
    )
    first = event(blank, 1, ES.PENDING)
    stored, _ = await store.create_execution(apply(blank, first), [first])
    return stored


async def advance(
    store: InMemoryStore, state: ExecutionState, *statuses: ExecutionStatus
) -> ExecutionState:
    events = []
    for status in statuses:
        next_event = event(state, state.last_sequence + 1, status)
        state = apply(state, next_event)
        events.append(next_event)
    await store.append(state, events)
    return state


async def test_workflow_versions_count_up_per_tenant_and_id() -> None:
    store = InMemoryStore()
    first = await store.add_workflow(workflow("wf"))
    second = await store.add_workflow(workflow("wf"))
    other_tenant = await store.add_workflow(workflow("wf", tenant="t2"))
    assert (first.version, second.version, other_tenant.version) == (1, 2, 1)
    assert (await store.get_workflow("t1", "wf")).version == 2
    assert (await store.get_workflow("t1", "wf", 1)).version == 1


@pytest.mark.parametrize(("tenant", "version", "key"), [("t2", 0, "wf"), ("t1", 3, "wf@3")])
async def test_a_missing_workflow_or_another_tenants_is_not_found(
    tenant: str, version: int, key: str
) -> None:
    store = InMemoryStore()
    await store.add_workflow(workflow("wf"))
    await store.add_workflow(workflow("wf"))
    with pytest.raises(NotFound) as caught:
        await store.get_workflow(tenant, "wf", version)
    assert caught.value.key == key


async def test_list_workflows_filters_by_tenant_and_labels_and_pages() -> None:
    store = InMemoryStore()
    for name in ("a", "b", "c"):
        await store.add_workflow(workflow(name, team="x"))
    await store.add_workflow(workflow("a", team="y"))
    await store.add_workflow(workflow("z", tenant="t2", team="x"))
    latest = await store.list_workflows(WorkflowQuery(tenant="t1"))
    assert [(d.id, d.version) for d in latest.items] == [("a", 2), ("b", 1), ("c", 1)]
    labelled = await store.list_workflows(WorkflowQuery(tenant="t1", labels={"team": "x"}))
    assert [d.id for d in labelled.items] == ["b", "c"]
    every = await store.list_workflows(WorkflowQuery(all_versions=True, page_size=3))
    assert len(every.items) == 3
    rest = await store.list_workflows(
        WorkflowQuery(all_versions=True, page_size=3, page_token=every.next_page_token)
    )
    assert [(d.tenant, d.id) for d in rest.items] == [("t1", "c"), ("t2", "z")]
    assert rest.next_page_token == ""


async def test_executions_list_newest_first_in_pages_that_cover_each_once() -> None:
    store = InMemoryStore()
    for i in range(7):
        await new_execution(store, f"e{i}", minute=i)
    seen: list[str] = []
    token = ""
    while True:
        page = await store.list_executions(ExecutionQuery(page_size=3, page_token=token))
        seen.extend(s.id for s in page.items)
        token = page.next_page_token
        if not token:
            break
    assert seen == [f"e{i}" for i in reversed(range(7))]


async def test_list_executions_filters_by_every_field() -> None:
    store = InMemoryStore()
    one = await new_execution(store, "one", minute=1)
    await new_execution(store, "two", minute=2, workflow_id="other")
    await new_execution(store, "three", minute=3, tenant="t2")
    await new_execution(store, "child", minute=4, parent="one")
    await advance(store, one, ES.RUNNING)

    async def ids(**fields: object) -> list[str]:
        page = await store.list_executions(ExecutionQuery(**fields))  # type: ignore[arg-type]
        return [s.id for s in page.items]

    assert await ids(tenant="t1") == ["child", "two", "one"]
    assert await ids(workflow_id="other") == ["two"]
    assert await ids(statuses=frozenset({ES.RUNNING})) == ["one"]
    assert await ids(created_after=T0 + timedelta(minutes=2)) == ["child", "three", "two"]
    assert await ids(created_before=T0 + timedelta(minutes=2)) == ["one"]
    assert await ids(parent_execution_id="one") == ["child"]


@pytest.mark.parametrize(
    "token",
    ["garbage!", base64.urlsafe_b64encode(b"x:1").decode(), encode_page_token(3)[:-2] + "@@"],
)
async def test_a_page_token_the_store_did_not_issue_is_invalid(token: str) -> None:
    store = InMemoryStore()
    with pytest.raises(InvalidArgument) as caught:
        await store.list_executions(ExecutionQuery(page_token=token))
    assert caught.value.problems[0].path == "page_token"


def test_page_tokens_round_trip_and_page_sizes_are_bounded() -> None:
    assert decode_page_token(encode_page_token(42)) == 42
    assert decode_page_token("") == 0
    assert page_bounds(0) == DEFAULT_PAGE_SIZE
    assert page_bounds(-5) == DEFAULT_PAGE_SIZE
    assert page_bounds(MAX_PAGE_SIZE * 10) == MAX_PAGE_SIZE
    assert page_bounds(7) == 7


async def test_an_idempotency_key_is_unique_per_tenant() -> None:
    store = InMemoryStore()
    first = await new_execution(store, "first", key="k")
    again = await new_execution(store, "again", key="k")
    elsewhere = await new_execution(store, "elsewhere", key="k", tenant="t2")
    assert again.id == first.id
    assert elsewhere.id == "elsewhere"
    with pytest.raises(NotFound):
        await store.get_execution("again")


async def test_append_refuses_events_that_do_not_follow_the_stored_sequence() -> None:
    store = InMemoryStore()
    state = await new_execution(store, "e")
    moved = await advance(store, state, ES.RUNNING)
    stale = apply(state, event(state, 2, ES.CANCELLED))
    with pytest.raises(ConcurrentModification) as caught:
        await store.append(stale, [event(state, 2, ES.CANCELLED)])
    assert caught.value.expected_sequence == 1
    assert await store.get_execution("e") == moved
    assert [e.sequence for e in await store.read_events("e")] == [1, 2]


async def test_append_to_an_unknown_execution_is_not_found() -> None:
    store = InMemoryStore()
    state = await new_execution(store, "e")
    with pytest.raises(NotFound):
        await store.append(replace(state, id="ghost"), [])


async def test_read_events_pages_by_sequence() -> None:
    store = InMemoryStore()
    state = await new_execution(store, "e")
    await advance(store, state, ES.RUNNING, ES.PAUSED, ES.RUNNING, ES.COMPLETED)
    assert [e.sequence for e in await store.read_events("e", 2)] == [3, 4, 5]
    assert [e.sequence for e in await store.read_events("e", 1, limit=2)] == [2, 3]
    with pytest.raises(NotFound):
        await store.read_events("ghost")


async def test_unfinished_executions_are_the_non_terminal_ones_oldest_first() -> None:
    store = InMemoryStore()
    late = await new_execution(store, "late", minute=5)
    early = await new_execution(store, "early", minute=1)
    done = await new_execution(store, "done", minute=0)
    await advance(store, done, ES.RUNNING, ES.COMPLETED)
    await advance(store, late, ES.RUNNING, ES.PAUSED)
    assert [s.id for s in await store.unfinished_executions()] == [early.id, late.id]
    await store.close()

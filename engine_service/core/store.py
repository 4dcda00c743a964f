"""The storage port the engine runs against, and its in-memory implementation.

The SQL store in `engine_service.storage` implements the same port and passes the same
test suite (tests/unit/engine/store_contract.py).
"""

from __future__ import annotations

import abc
import asyncio
import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Generic, TypeVar

from engine_service.core.errors import ConcurrentModification, InvalidArgument, NotFound, Problem
from engine_service.core.model import WorkflowDefinition
from engine_service.core.state import ExecutionEvent, ExecutionState, ExecutionStatus

T = TypeVar("T")

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: tuple[T, ...]
    next_page_token: str = ""


@dataclass(frozen=True, slots=True)
class ExecutionQuery:
    tenant: str | None = None
    workflow_id: str = ""
    statuses: frozenset[ExecutionStatus] = frozenset()
    created_after: datetime | None = None
    created_before: datetime | None = None
    parent_execution_id: str = ""
    page_size: int = DEFAULT_PAGE_SIZE
    page_token: str = ""


@dataclass(frozen=True, slots=True)
class WorkflowQuery:
    tenant: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    all_versions: bool = False
    page_size: int = DEFAULT_PAGE_SIZE
    page_token: str = ""


def encode_page_token(offset: int) -> str:
    return base64.urlsafe_b64encode(f"o:{offset}".encode()).decode()


def decode_page_token(token: str) -> int:
    """The offset a page token stands for; InvalidArgument for a token we did not issue."""
    if not token:
        return 0
    try:
        text = base64.urlsafe_b64decode(token.encode()).decode()
    except ValueError:
        text = ""
    if not text.startswith("o:") or not text[2:].isdigit():
        raise InvalidArgument(problems=[Problem("page_token", "not a token this server issued")])
    return int(text[2:])


def page_bounds(page_size: int) -> int:
    if page_size <= 0:
        return DEFAULT_PAGE_SIZE
    return min(page_size, MAX_PAGE_SIZE)


class ExecutionStore(abc.ABC):
    """Durable state of workflows and executions. Each method is one transaction."""

    @abc.abstractmethod
    async def add_workflow(self, definition: WorkflowDefinition) -> WorkflowDefinition:
        """Store `definition` as the next version of its id; return it with the version."""

    @abc.abstractmethod
    async def get_workflow(
        self, tenant: str, workflow_id: str, version: int = 0
    ) -> WorkflowDefinition:
        """The version asked for (0: the latest); NotFound if absent or another tenant's."""

    @abc.abstractmethod
    async def list_workflows(self, query: WorkflowQuery) -> Page[WorkflowDefinition]: ...

    @abc.abstractmethod
    async def create_execution(
        self, state: ExecutionState, events: Sequence[ExecutionEvent]
    ) -> tuple[ExecutionState, bool]:
        """Insert a new execution with its first events.

        When `state.idempotency_key` is set and the tenant already has an execution with
        that key, nothing is written and that execution is returned with False.
        """

    @abc.abstractmethod
    async def append(self, state: ExecutionState, events: Sequence[ExecutionEvent]) -> None:
        """Commit `events` and the `state` they lead to, atomically.

        Raises ConcurrentModification unless the stored state is at the sequence just
        before the first event.
        """

    @abc.abstractmethod
    async def get_execution(self, execution_id: str) -> ExecutionState:
        """NotFound if there is none."""

    @abc.abstractmethod
    async def list_executions(self, query: ExecutionQuery) -> Page[ExecutionState]:
        """Newest first."""

    @abc.abstractmethod
    async def read_events(
        self, execution_id: str, after_sequence: int = 0, limit: int = 0
    ) -> list[ExecutionEvent]:
        """Events with a greater sequence, in order; `limit` 0 means all."""

    @abc.abstractmethod
    async def unfinished_executions(self) -> list[ExecutionState]:
        """Executions not in a terminal status, oldest first: what a restart continues."""

    async def close(self) -> None:  # noqa: B027 - optional hook, most stores hold nothing
        """Release connections; the in-memory store has none."""


class InMemoryStore(ExecutionStore):
    """The port kept in dictionaries: for unit tests and as the reference behaviour."""

    def __init__(self) -> None:
        self._workflows: dict[tuple[str, str], list[WorkflowDefinition]] = {}
        self._executions: dict[str, ExecutionState] = {}
        self._events: dict[str, list[ExecutionEvent]] = {}
        self._idempotency: dict[tuple[str, str], str] = {}
        self._lock = asyncio.Lock()

    async def add_workflow(self, definition: WorkflowDefinition) -> WorkflowDefinition:
        async with self._lock:
            versions = self._workflows.setdefault((definition.tenant, definition.id), [])
            stored = replace(definition, version=len(versions) + 1)
            versions.append(stored)
            return stored

    async def get_workflow(
        self, tenant: str, workflow_id: str, version: int = 0
    ) -> WorkflowDefinition:
        versions = self._workflows.get((tenant, workflow_id), [])
        if version == 0 and versions:
            return versions[-1]
        if 0 < version <= len(versions):
            return versions[version - 1]
        key = workflow_id if version == 0 else f"{workflow_id}@{version}"
        raise NotFound(kind="workflow", key=key)

    async def list_workflows(self, query: WorkflowQuery) -> Page[WorkflowDefinition]:
        found: list[WorkflowDefinition] = []
        for (tenant, _), versions in sorted(self._workflows.items()):
            if query.tenant is not None and tenant != query.tenant:
                continue
            chosen = versions if query.all_versions else versions[-1:]
            found.extend(d for d in chosen if _has_labels(d, query.labels))
        return _page(found, query.page_size, query.page_token)

    async def create_execution(
        self, state: ExecutionState, events: Sequence[ExecutionEvent]
    ) -> tuple[ExecutionState, bool]:
        async with self._lock:
            key = (state.tenant, state.idempotency_key)
            if state.idempotency_key and key in self._idempotency:
                return self._executions[self._idempotency[key]], False
            self._executions[state.id] = state
            self._events[state.id] = list(events)
            if state.idempotency_key:
                self._idempotency[key] = state.id
            return state, True

    async def append(self, state: ExecutionState, events: Sequence[ExecutionEvent]) -> None:
        async with self._lock:
            stored = self._executions.get(state.id)
            if stored is None:
                raise NotFound(kind="execution", key=state.id)
            if events and stored.last_sequence != events[0].sequence - 1:
                raise ConcurrentModification(
                    execution_id=state.id, expected_sequence=events[0].sequence - 1
                )
            self._executions[state.id] = state
            self._events[state.id].extend(events)

    async def get_execution(self, execution_id: str) -> ExecutionState:
        try:
            return self._executions[execution_id]
        except KeyError:
            raise NotFound(kind="execution", key=execution_id) from None

    async def list_executions(self, query: ExecutionQuery) -> Page[ExecutionState]:
        matching = [s for s in self._executions.values() if _matches(s, query)]
        matching.sort(key=lambda s: (s.created_at, s.id), reverse=True)
        return _page(matching, query.page_size, query.page_token)

    async def read_events(
        self, execution_id: str, after_sequence: int = 0, limit: int = 0
    ) -> list[ExecutionEvent]:
        if execution_id not in self._events:
            raise NotFound(kind="execution", key=execution_id)
        events = [e for e in self._events[execution_id] if e.sequence > after_sequence]
        return events[:limit] if limit > 0 else events

    async def unfinished_executions(self) -> list[ExecutionState]:
        unfinished = [s for s in self._executions.values() if not s.status.is_terminal]
        return sorted(unfinished, key=lambda s: (s.created_at, s.id))


def _has_labels(definition: WorkflowDefinition, labels: Mapping[str, str]) -> bool:
    return all(definition.labels.get(k) == v for k, v in labels.items())


def _matches(state: ExecutionState, query: ExecutionQuery) -> bool:
    return (
        (query.tenant is None or state.tenant == query.tenant)
        and (not query.workflow_id or state.workflow_id == query.workflow_id)
        and (not query.statuses or state.status in query.statuses)
        and (query.created_after is None or state.created_at >= query.created_after)
        and (query.created_before is None or state.created_at < query.created_before)
        and (
            not query.parent_execution_id or state.parent_execution_id == query.parent_execution_id
        )
    )


def _page(items: Sequence[T], page_size: int, page_token: str) -> Page[T]:
    offset = decode_page_token(page_token)
    size = page_bounds(page_size)
    chunk = tuple(items[offset : offset + size])
    more = offset + size < len(items)
    return Page(chunk, encode_page_token(offset + size) if more else "")

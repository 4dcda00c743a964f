"""The storage port the engine runs against, and its in-memory implementation.

The SQL store in `engine_service.storage` implements the same port and passes the same
test suite (tests/integration/engine_storage/test_store_contract.py).
"""

from __future__ import annotations

import abc
import asyncio
import base64
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Generic, TypeVar

from engine_service.core.commands import Command, CommandOutcome
from engine_service.core.errors import ConcurrentModification, InvalidArgument, NotFound, Problem
from engine_service.core.model import WorkflowDefinition
from engine_service.core.schedules import Schedule, ScheduleQuery
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


@dataclass(frozen=True, slots=True)
class Lease:
    """An engine process's claim to drive an execution until `expires_at`."""

    owner: str
    expires_at: datetime


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
        self,
        state: ExecutionState,
        events: Sequence[ExecutionEvent],
        *,
        lease: Lease | None = None,
    ) -> tuple[ExecutionState, bool]:
        """Insert a new execution with its first events.

        When `state.idempotency_key` is set and the tenant already has an execution with
        that key, nothing is written and that execution is returned with False. With a
        `lease`, the creator holds the execution from the start: no one else claims it.
        """

    @abc.abstractmethod
    def append(self, state: ExecutionState, events: Sequence[ExecutionEvent]) -> Awaitable[None]:
        """Commit `events` and the `state` they lead to, atomically; awaiting the result
        waits until they are durable. A store may start the write before it is awaited
        (the runner pipelines one execution's commits this way); writes of one execution
        reach the store in the order `append` was called.

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

    @abc.abstractmethod
    async def claim_executions(
        self, lease: Lease, *, now: datetime, limit: int, take_over: bool = False
    ) -> list[ExecutionState]:
        """Lease up to `limit` unfinished executions whose lease expired, oldest first.

        Executions leased to `lease.owner` already are not returned. With `take_over`,
        every unfinished execution is claimed whatever its lease (a single-process
        engine restarting). Concurrent claimers never get the same execution.
        """

    @abc.abstractmethod
    async def renew_leases(self, lease: Lease, execution_ids: Sequence[str]) -> set[str]:
        """Extend the owner's leases; returns the ids it still holds."""

    async def close(self) -> None:  # noqa: B027 - optional hook, most stores hold nothing
        """Release connections; the in-memory store has none."""

    # ---- commands for another process's executions (see `core.commands`) -------------

    @abc.abstractmethod
    async def add_command(self, command: Command) -> None:
        """Store a pending command (and, where processes can be told, tell them)."""

    @abc.abstractmethod
    async def pending_commands(self) -> list[Command]:
        """Every command not decided yet, oldest first."""

    @abc.abstractmethod
    async def get_command(self, command_id: str) -> Command: ...

    @abc.abstractmethod
    async def decide_command(
        self, command_id: str, outcome: CommandOutcome, detail: str = ""
    ) -> bool:
        """Record the outcome of a pending command; False if it was decided already."""

    # ---- schedules -------------------------------------------------------------------

    @abc.abstractmethod
    async def add_schedule(self, schedule: Schedule) -> Schedule: ...

    @abc.abstractmethod
    async def get_schedule(self, schedule_id: str) -> Schedule:
        """NotFound if there is none."""

    @abc.abstractmethod
    async def list_schedules(self, query: ScheduleQuery) -> Page[Schedule]:
        """Oldest first."""

    @abc.abstractmethod
    async def update_schedule(self, schedule: Schedule, *, reschedule: bool) -> Schedule:
        """Store the schedule's settings; its `next_run_at` too when `reschedule`.

        Without `reschedule` the stored `next_run_at` stays, so an update never undoes a
        run the scheduler advanced meanwhile. NotFound if the schedule is gone.
        """

    @abc.abstractmethod
    async def delete_schedule(self, schedule_id: str) -> None:
        """NotFound if there is none."""

    @abc.abstractmethod
    async def due_schedules(self, now: datetime, limit: int) -> list[Schedule]:
        """Unpaused schedules due at `now` that no live claim holds, earliest first."""

    @abc.abstractmethod
    async def claim_schedule_run(
        self, schedule_id: str, due: datetime, *, owner: str, now: datetime, until: datetime
    ) -> bool:
        """Hold the run of `schedule_id` due at `due` for `owner` until `until`.

        True for exactly one of any number of concurrent claimers; False once the
        schedule moved past `due`, was paused, or while another claim is live.
        """

    @abc.abstractmethod
    async def finish_schedule_run(
        self,
        schedule_id: str,
        due: datetime,
        *,
        owner: str,
        next_run_at: datetime,
        ran_at: datetime | None,
        execution_id: str = "",
    ) -> bool:
        """Release `owner`'s claim, move the schedule from `due` to `next_run_at` (unless
        an update moved it meanwhile) and record the run if one started (`ran_at`).

        False if the claim had been lost, in which case nothing changes.
        """

    @abc.abstractmethod
    async def unfinished_executions_of_schedule(self, schedule_id: str) -> list[ExecutionState]:
        """Executions a schedule started that are not in a terminal status."""


class InMemoryStore(ExecutionStore):
    """The port kept in dictionaries: for unit tests and as the reference behaviour."""

    def __init__(self) -> None:
        self._workflows: dict[tuple[str, str], list[WorkflowDefinition]] = {}
        self._executions: dict[str, ExecutionState] = {}
        self._events: dict[str, list[ExecutionEvent]] = {}
        self._idempotency: dict[tuple[str, str], str] = {}
        self._leases: dict[str, Lease] = {}
        self._schedules: dict[str, Schedule] = {}
        self._schedule_claims: dict[str, Lease] = {}
        self._commands: dict[str, Command] = {}
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
        self,
        state: ExecutionState,
        events: Sequence[ExecutionEvent],
        *,
        lease: Lease | None = None,
    ) -> tuple[ExecutionState, bool]:
        async with self._lock:
            key = (state.tenant, state.idempotency_key)
            if state.idempotency_key and key in self._idempotency:
                return self._executions[self._idempotency[key]], False
            self._executions[state.id] = state
            self._events[state.id] = list(events)
            if lease is not None:
                self._leases[state.id] = lease
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

    async def claim_executions(
        self, lease: Lease, *, now: datetime, limit: int, take_over: bool = False
    ) -> list[ExecutionState]:
        async with self._lock:
            claimed: list[ExecutionState] = []
            for state in await self.unfinished_executions():
                held = self._leases.get(state.id)
                free = held is None or held.expires_at < now or take_over
                if len(claimed) < limit and free and (held is None or held.owner != lease.owner):
                    self._leases[state.id] = lease
                    claimed.append(state)
            return claimed

    async def add_command(self, command: Command) -> None:
        self._commands[command.id] = command

    async def pending_commands(self) -> list[Command]:
        pending = [c for c in self._commands.values() if c.outcome is CommandOutcome.PENDING]
        return sorted(pending, key=lambda command: command.requested_at)

    async def get_command(self, command_id: str) -> Command:
        try:
            return self._commands[command_id]
        except KeyError:
            raise NotFound(kind="command", key=command_id) from None

    async def decide_command(
        self, command_id: str, outcome: CommandOutcome, detail: str = ""
    ) -> bool:
        command = await self.get_command(command_id)
        if command.outcome is not CommandOutcome.PENDING:
            return False
        self._commands[command_id] = replace(command, outcome=outcome, detail=detail)
        return True

    async def renew_leases(self, lease: Lease, execution_ids: Sequence[str]) -> set[str]:
        async with self._lock:
            held = {
                execution_id
                for execution_id in execution_ids
                if (current := self._leases.get(execution_id)) and current.owner == lease.owner
            }
            for execution_id in held:
                self._leases[execution_id] = lease
            return held

    async def add_schedule(self, schedule: Schedule) -> Schedule:
        async with self._lock:
            self._schedules[schedule.id] = schedule
            return schedule

    async def get_schedule(self, schedule_id: str) -> Schedule:
        try:
            return self._schedules[schedule_id]
        except KeyError:
            raise NotFound(kind="schedule", key=schedule_id) from None

    async def list_schedules(self, query: ScheduleQuery) -> Page[Schedule]:
        matching = [
            s
            for s in self._schedules.values()
            if (query.tenant is None or s.tenant == query.tenant)
            and (not query.workflow_id or s.workflow_id == query.workflow_id)
        ]
        matching.sort(key=lambda s: (s.created_at, s.id))
        return _page(matching, query.page_size, query.page_token)

    async def update_schedule(self, schedule: Schedule, *, reschedule: bool) -> Schedule:
        async with self._lock:
            stored = await self.get_schedule(schedule.id)
            if not reschedule:
                schedule = replace(schedule, next_run_at=stored.next_run_at)
            schedule = replace(
                schedule,
                last_run_at=stored.last_run_at,
                last_execution_id=stored.last_execution_id,
            )
            self._schedules[schedule.id] = schedule
            return schedule

    async def delete_schedule(self, schedule_id: str) -> None:
        async with self._lock:
            await self.get_schedule(schedule_id)
            del self._schedules[schedule_id]
            self._schedule_claims.pop(schedule_id, None)

    async def due_schedules(self, now: datetime, limit: int) -> list[Schedule]:
        due = [
            s
            for s in self._schedules.values()
            if not s.paused
            and s.next_run_at is not None
            and s.next_run_at <= now
            and not self._schedule_claimed(s.id, now)
        ]
        due.sort(key=lambda s: (s.next_run_at, s.id))
        return due[:limit]

    def _schedule_claimed(self, schedule_id: str, now: datetime) -> bool:
        claim = self._schedule_claims.get(schedule_id)
        return claim is not None and claim.expires_at > now

    async def claim_schedule_run(
        self, schedule_id: str, due: datetime, *, owner: str, now: datetime, until: datetime
    ) -> bool:
        async with self._lock:
            schedule = self._schedules.get(schedule_id)
            if schedule is None or schedule.paused or schedule.next_run_at != due:
                return False
            if self._schedule_claimed(schedule_id, now):
                return False
            self._schedule_claims[schedule_id] = Lease(owner, until)
            return True

    async def finish_schedule_run(
        self,
        schedule_id: str,
        due: datetime,
        *,
        owner: str,
        next_run_at: datetime,
        ran_at: datetime | None,
        execution_id: str = "",
    ) -> bool:
        async with self._lock:
            claim = self._schedule_claims.get(schedule_id)
            schedule = self._schedules.get(schedule_id)
            if claim is None or claim.owner != owner or schedule is None:
                return False
            del self._schedule_claims[schedule_id]
            if schedule.next_run_at == due:
                schedule = replace(schedule, next_run_at=next_run_at)
            if ran_at is not None:
                schedule = replace(schedule, last_run_at=ran_at, last_execution_id=execution_id)
            self._schedules[schedule_id] = schedule
            return True

    async def unfinished_executions_of_schedule(self, schedule_id: str) -> list[ExecutionState]:
        return [
            s
            for s in await self.unfinished_executions()
            if schedule_id and s.schedule_id == schedule_id
        ]


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

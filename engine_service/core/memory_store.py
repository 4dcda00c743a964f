"""The storage port kept in dictionaries: the reference behaviour, and the store of the
unit tests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import TypeVar

from engine_service.core.commands import Command, CommandOutcome
from engine_service.core.errors import ConcurrentModification, LeaseLost, NotFound
from engine_service.core.model import WorkflowDefinition
from engine_service.core.schedules import Schedule, ScheduleQuery
from engine_service.core.state import ExecutionEvent, ExecutionState
from engine_service.core.store import (
    FIRST_EPOCH,
    Claim,
    ExecutionQuery,
    ExecutionStore,
    Lease,
    Page,
    WorkflowQuery,
    decode_page_token,
    encode_page_token,
    page_bounds,
)

T = TypeVar("T")


class InMemoryStore(ExecutionStore):
    """The port kept in dictionaries: for unit tests and as the reference behaviour."""

    def __init__(self) -> None:
        self._workflows: dict[tuple[str, str], list[WorkflowDefinition]] = {}
        self._executions: dict[str, ExecutionState] = {}
        self._events: dict[str, list[ExecutionEvent]] = {}
        self._idempotency: dict[tuple[str, str], str] = {}
        self._leases: dict[str, Lease] = {}
        # Each execution's lease epoch (absent: 0, never leased); kept once it finished.
        self._epochs: dict[str, int] = {}
        self._schedules: dict[str, Schedule] = {}
        self._schedule_claims: dict[str, Lease] = {}
        self._commands: dict[str, Command] = {}
        self._command_callbacks: list[Callable[[str], None]] = []
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
                self._epochs[state.id] = FIRST_EPOCH
            if state.idempotency_key:
                self._idempotency[key] = state.id
            return state, True

    async def append(
        self, state: ExecutionState, events: Sequence[ExecutionEvent], *, epoch: int = 0
    ) -> None:
        async with self._lock:
            stored = self._executions.get(state.id)
            if stored is None:
                raise NotFound(kind="execution", key=state.id)
            if self._epochs.get(state.id, 0) != epoch:
                holder = self._leases.get(state.id)
                raise LeaseLost(execution_id=state.id, owner=holder.owner if holder else "")
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
    ) -> list[Claim]:
        async with self._lock:
            claimed: list[Claim] = []
            for state in await self.unfinished_executions():
                held = self._leases.get(state.id)
                free = held is None or held.expires_at < now or take_over
                if len(claimed) < limit and free:
                    self._leases[state.id] = lease
                    self._epochs[state.id] = self._epochs.get(state.id, 0) + 1
                    claimed.append(Claim(state, self._epochs[state.id]))
            return claimed

    async def add_command(self, command: Command) -> None:
        self._commands[command.id] = command
        for callback in self._command_callbacks:
            callback(command.execution_id)

    def on_command(self, callback: Callable[[str], None]) -> None:
        self._command_callbacks.append(callback)

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

    async def renew_leases(self, lease: Lease, held: Mapping[str, int]) -> set[str]:
        async with self._lock:
            kept = {
                execution_id
                for execution_id, epoch in held.items()
                if (current := self._leases.get(execution_id))
                and current.owner == lease.owner
                and self._epochs.get(execution_id, 0) == epoch
            }
            for execution_id in kept:
                self._leases[execution_id] = lease
            return kept

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

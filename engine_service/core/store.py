"""The storage port the engine runs against.

`core.memory_store.InMemoryStore` is its reference implementation; the SQL store in
`engine_service.storage` implements the same port and passes the same test suite
(tests/integration/engine_storage/test_store_contract.py).
"""

from __future__ import annotations

import abc
import base64
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Generic, TypeVar

from engine_service.core.commands import Command, CommandOutcome
from engine_service.core.errors import InvalidArgument, Problem
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


# The epoch of an execution leased to its creator; every claim adds one. An execution
# never leased is at epoch 0.
FIRST_EPOCH = 1


@dataclass(frozen=True, slots=True)
class Claim:
    """An execution a claim leased to the claimer, and the epoch its writes must carry."""

    state: ExecutionState
    epoch: int


def encode_page_token(offset: int) -> str:
    return base64.urlsafe_b64encode(f"o:{offset}".encode()).decode()


def decode_page_token(token: str) -> int:
    """The offset a page token stands for; InvalidArgument for a token we did not issue.

    Only ASCII digits (`str.isdigit` alone also takes '²', which `int` refuses), and at
    most 18 of them, so the offset fits the databases' 64-bit integers.
    """
    if not token:
        return 0
    try:
        text = base64.urlsafe_b64decode(token.encode("ascii")).decode("ascii")
    except ValueError:  # binascii.Error, UnicodeError
        text = ""
    digits = text.removeprefix("o:")
    well_formed = digits.isascii() and digits.isdigit() and len(digits) <= 18
    if not text.startswith("o:") or not well_formed:
        raise InvalidArgument(problems=[Problem("page_token", "not a token this server issued")])
    return int(digits)


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
        `lease`, the creator holds the execution from the start, at FIRST_EPOCH: no one
        else claims it until the lease expires.
        """

    @abc.abstractmethod
    def append(
        self, state: ExecutionState, events: Sequence[ExecutionEvent], *, epoch: int = 0
    ) -> Awaitable[None]:
        """Commit `events` and the `state` they lead to, atomically; awaiting the result
        waits until they are durable. A store may start the write before it is awaited
        (the runner pipelines one execution's commits this way); writes of one execution
        reach the store in the order `append` was called.

        `epoch` is that of the writer's lease (0: the execution was never leased). The
        write is fenced: LeaseLost, writing nothing, unless it is the execution's current
        epoch, i.e. unless no one claimed the execution since the writer got its lease.
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
    ) -> list[Claim]:
        """Lease up to `limit` unfinished executions whose lease expired, oldest first.

        The claimer's own leases count too once expired: they belong to runs it stopped
        driving (a runner that failed to write), which it takes up again; the runs it
        drives keep their leases renewed. With `take_over`, every unfinished execution is
        claimed whatever its lease (a single-process engine restarting). Concurrent
        claimers never get the same execution. Every claim moves the execution to the
        next epoch, so whoever held it before can write nothing more.
        """

    @abc.abstractmethod
    async def renew_leases(self, lease: Lease, held: Mapping[str, int]) -> set[str]:
        """Extend the owner's leases of `held` (execution id: the epoch held), keeping
        their epochs; returns the ids it still holds. A lease claimed since (by anyone,
        the same owner too) is not renewed."""

    async def close(self) -> None:  # noqa: B027 - optional hook, most stores hold nothing
        """Release connections; the in-memory store has none."""

    def on_command(self, callback: Callable[[str], None]) -> None:  # noqa: B027
        """Have `callback(execution_id)` called when any process stores a command, where
        the store itself can tell (the in-memory store, shared by engines in one process).
        Postgres tells through LISTEN/NOTIFY instead (`storage.notify`); others do not."""

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

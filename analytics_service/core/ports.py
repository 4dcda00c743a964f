"""What the core needs from storage, as protocols: storage implements them, tests fake them.

Repositories take part in a transaction that the caller opens with `Database.transaction()`
and never commit on their own.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from analytics_service.core.alerts import AlertEvent, AlertRule, AlertRuleChanges, AlertState
from analytics_service.core.events import ExecutionEvent, ExecutionFact, Facts, StepAttemptFact
from analytics_service.core.histogram import Histogram
from analytics_service.core.rollups import IngestLag, RollupCounts, RollupDeltas

Clock = Callable[[], datetime]


class Level(enum.Enum):
    """Which rollup rows a query reads: whole executions or step attempts."""

    EXECUTION = "execution"
    STEP = "step"


@dataclass(frozen=True)
class MinuteRange:
    """Rollup minutes [start, end)."""

    start: int
    end: int


@dataclass(frozen=True)
class RollupQuery:
    """A selection of rollup rows and how to group them.

    `workflow_id` / `step_id` None means every one; groups not asked for collapse to "".
    `bucket_minutes` 0 sums the whole range; otherwise rows group into buckets of that many
    minutes, keyed by each bucket's first minute.
    """

    tenant: str
    minutes: MinuteRange
    level: Level
    workflow_id: str | None = None
    step_id: str | None = None
    by_workflow: bool = False
    by_step: bool = False
    bucket_minutes: int = 0


@dataclass(frozen=True, order=True)
class GroupKey:
    workflow_id: str = ""
    step_id: str = ""
    bucket: int = 0


@dataclass(frozen=True)
class FactFilter:
    """A selection of facts by finish time [start, end) and optional fields."""

    tenant: str
    start: datetime
    end: datetime
    workflow_id: str = ""
    step_id: str = ""
    statuses: tuple[str, ...] = ()


class EventLedger(Protocol):
    async def record_new(self, events: Sequence[ExecutionEvent], now: datetime) -> set[str]:
        """Remember the events' ids; return the ids that were not known before."""

    async def prune(self, before: datetime) -> int: ...


class BatchIngest(Protocol):
    async def store_new(self, events: Sequence[ExecutionEvent], now: datetime) -> set[str]:
        """Record the events' ids, store the facts of the new ones and add the facts stored
        now to the rollups; return the ids that were not known before."""


class FactStore(Protocol):
    async def add(self, facts: Facts) -> Facts:
        """Store the facts; return those stored now (not known before)."""

    async def prune(self, before: datetime) -> int: ...

    async def recent_failures(self, selection: FactFilter, limit: int) -> list[StepAttemptFact]:
        """The latest failed or timed-out attempts, newest first."""

    async def steps_of_latest_executions(
        self, selection: FactFilter, executions: int
    ) -> list[StepAttemptFact]:
        """Every step fact of the `executions` latest finished executions in the selection."""

    async def step_page(
        self, selection: FactFilter, after: StepAttemptFact | None, limit: int
    ) -> list[StepAttemptFact]:
        """Step facts ordered by (finished_at, execution, step, attempt), after `after`."""

    async def execution_page(
        self, selection: FactFilter, after: ExecutionFact | None, limit: int
    ) -> list[ExecutionFact]:
        """Execution facts ordered by (finished_at, execution), after `after`."""


class RollupStore(Protocol):
    async def apply(self, deltas: RollupDeltas) -> None:
        """Add the deltas to the rollup rows, a few set-based statements per batch."""

    async def counts(self, query: RollupQuery) -> dict[GroupKey, RollupCounts]: ...

    async def histograms(self, query: RollupQuery) -> dict[GroupKey, Histogram]: ...

    async def errors(self, query: RollupQuery) -> dict[GroupKey, dict[str, int]]: ...

    async def record_ingest_lag(
        self, minute: int, lags: Mapping[tuple[str, str], IngestLag]
    ) -> None:
        """Add the lags observed per (tenant, workflow) to the ingest minute `minute`."""

    async def max_ingest_lag(
        self, tenant: str, workflow_id: str, minutes: MinuteRange
    ) -> float | None: ...


class AlertStore(Protocol):
    async def add_rule(self, rule: AlertRule) -> None: ...

    async def get_rule(self, rule_id: str) -> AlertRule | None: ...

    async def list_rules(
        self, tenant: str, workflow_id: str, after_id: str, limit: int
    ) -> list[AlertRule]: ...

    async def update_rule(self, rule_id: str, changes: AlertRuleChanges) -> AlertRule | None: ...

    async def delete_rule(self, rule_id: str) -> bool: ...

    async def enabled_rules(self, scopes: Sequence[tuple[str, str]] | None) -> list[AlertRule]:
        """Enabled rules of the (tenant, workflow) pairs; None means every enabled rule."""

    async def transition(self, rule_id: str, expected: AlertState, new: AlertState) -> bool:
        """Move the rule from `expected` to `new`; False if it was not in `expected`."""

    async def add_event(self, event: AlertEvent) -> None: ...


class UnitOfWork(Protocol):
    @property
    def events(self) -> EventLedger: ...

    @property
    def ingest(self) -> BatchIngest: ...

    @property
    def facts(self) -> FactStore: ...

    @property
    def rollups(self) -> RollupStore: ...

    @property
    def alerts(self) -> AlertStore: ...


class Database(Protocol):
    def transaction(self) -> AbstractAsyncContextManager[UnitOfWork]:
        """One transaction: committed when the block exits normally, else rolled back."""

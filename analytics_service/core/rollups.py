"""Rollups of facts per minute and per hour: the deltas one batch adds, before one upsert.

A rollup row is keyed by (tenant, workflow, step, resolution, minute); the execution level
uses the step id "". Minute rows (resolution 1) serve minute series and the ragged edges of
a range; hour rows (resolution 60, keyed by the hour's first minute) serve the whole hours
inside it, so a query over a day reads 24 rows per step instead of 1440. Every field merges
by addition, minimum or maximum, so the rows do not depend on the order or the batching in
which facts arrive.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from analytics_service.core.events import (
    ExecutionFact,
    ExecutionStatus,
    Facts,
    StepAttemptFact,
    StepStatus,
)
from analytics_service.core.histogram import bucket_index

EXECUTION_LEVEL = ""
SECONDS_PER_MINUTE = 60
MINUTE_RESOLUTION = 1
HOUR_RESOLUTION = 60
UNKNOWN_ERROR_TYPE = "unknown"


def minute_of(moment: datetime) -> int:
    """Minutes since the Unix epoch, floored: the rollup bucket of `moment`."""
    return int(moment.timestamp() // SECONDS_PER_MINUTE)


@dataclass(frozen=True, order=True)
class RollupKey:
    tenant: str
    workflow_id: str
    step_id: str
    minute: int
    resolution: int = MINUTE_RESOLUTION

    def coarsened(self, resolution: int) -> RollupKey:
        start = self.minute // resolution * resolution
        return RollupKey(self.tenant, self.workflow_id, self.step_id, start, resolution)


@dataclass(frozen=True)
class RollupCounts:
    """What one rollup row holds; also the sum of several rows over a range."""

    total: int = 0
    completed: int = 0
    completed_with_errors: int = 0
    failed: int = 0
    timed_out: int = 0
    skipped: int = 0
    cancelled: int = 0
    retries: int = 0
    duration_sum: float = 0.0
    duration_min: float | None = None
    duration_max: float | None = None
    time_saved_sum: float = 0.0
    business_value_sum: float = 0.0
    action: str = ""

    @property
    def failures(self) -> int:
        return self.failed + self.timed_out

    def merge(self, other: RollupCounts) -> RollupCounts:
        return RollupCounts(
            total=self.total + other.total,
            completed=self.completed + other.completed,
            completed_with_errors=self.completed_with_errors + other.completed_with_errors,
            failed=self.failed + other.failed,
            timed_out=self.timed_out + other.timed_out,
            skipped=self.skipped + other.skipped,
            cancelled=self.cancelled + other.cancelled,
            retries=self.retries + other.retries,
            duration_sum=self.duration_sum + other.duration_sum,
            duration_min=_lowest(self.duration_min, other.duration_min),
            duration_max=_highest(self.duration_max, other.duration_max),
            time_saved_sum=self.time_saved_sum + other.time_saved_sum,
            business_value_sum=self.business_value_sum + other.business_value_sum,
            # The greatest name wins so that the result does not depend on arrival order.
            action=max(self.action, other.action),
        )


def _lowest(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


def _highest(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)


def step_counts(fact: StepAttemptFact) -> RollupCounts:
    status = fact.status
    return RollupCounts(
        total=1,
        completed=int(status is StepStatus.COMPLETED),
        failed=int(status is StepStatus.FAILED),
        timed_out=int(status is StepStatus.TIMED_OUT),
        skipped=int(status is StepStatus.SKIPPED),
        cancelled=int(status is StepStatus.CANCELLED),
        retries=int(fact.is_retry),
        duration_sum=fact.duration_seconds,
        duration_min=fact.duration_seconds,
        duration_max=fact.duration_seconds,
        action=fact.action,
    )


def execution_counts(fact: ExecutionFact) -> RollupCounts:
    status = fact.status
    succeeded = status is ExecutionStatus.COMPLETED
    return RollupCounts(
        total=1,
        completed=int(succeeded),
        completed_with_errors=int(status is ExecutionStatus.COMPLETED_WITH_ERRORS),
        failed=int(status is ExecutionStatus.FAILED),
        timed_out=int(status is ExecutionStatus.TIMED_OUT),
        cancelled=int(status is ExecutionStatus.CANCELLED),
        duration_sum=fact.duration_seconds,
        duration_min=fact.duration_seconds,
        duration_max=fact.duration_seconds,
        time_saved_sum=fact.estimated_time_saved_seconds if succeeded else 0.0,
        business_value_sum=fact.business_value if succeeded else 0.0,
    )


@dataclass(frozen=True)
class RollupDeltas:
    """What one batch adds to the rollup tables, one entry per key."""

    counts: dict[RollupKey, RollupCounts]
    errors: dict[tuple[RollupKey, str], int]
    histogram: dict[tuple[RollupKey, int], int]

    @property
    def is_empty(self) -> bool:
        return not self.counts


def step_key(fact: StepAttemptFact) -> RollupKey:
    return RollupKey(fact.tenant, fact.workflow_id, fact.step_id, minute_of(fact.finished_at))


def execution_key(fact: ExecutionFact) -> RollupKey:
    return RollupKey(fact.tenant, fact.workflow_id, EXECUTION_LEVEL, minute_of(fact.finished_at))


_ADDED = (
    "total",
    "completed",
    "completed_with_errors",
    "failed",
    "timed_out",
    "skipped",
    "cancelled",
    "retries",
    "duration_sum",
    "time_saved_sum",
    "business_value_sum",
)


class _Sums:
    """A mutable running sum for one key while a batch is folded; frozen at the end.

    Folding into plain lists instead of merging frozen values keeps a batch of thousands
    of facts from allocating thousands of intermediate RollupCounts.
    """

    __slots__ = ("action", "added", "high", "low")

    def __init__(self, first: RollupCounts) -> None:
        self.added = [getattr(first, name) for name in _ADDED]
        self.low, self.high, self.action = first.duration_min, first.duration_max, first.action

    def add(self, delta: RollupCounts) -> None:
        added = self.added
        for index, name in enumerate(_ADDED):
            added[index] += getattr(delta, name)
        self.low = _lowest(self.low, delta.duration_min)
        self.high = _highest(self.high, delta.duration_max)
        self.action = max(self.action, delta.action)

    @property
    def counts(self) -> RollupCounts:
        return RollupCounts(
            **dict(zip(_ADDED, self.added, strict=True)),
            duration_min=self.low,
            duration_max=self.high,
            action=self.action,
        )


def _fold(entries: Iterable[tuple[RollupKey, RollupCounts]]) -> dict[RollupKey, RollupCounts]:
    """Merge the deltas of equal keys, in Python's dict order, with one merge per repeat."""
    sums: dict[RollupKey, _Sums] = {}
    for key, delta in entries:
        existing = sums.get(key)
        if existing is None:
            sums[key] = _Sums(delta)
        else:
            existing.add(delta)
    return {key: total.counts for key, total in sums.items()}


def rollup_deltas(facts: Facts) -> RollupDeltas:
    """The additions that `facts` (all of them new) make to the minute and hour rollups."""
    minute_deltas = _fold(
        [
            *((step_key(f), step_counts(f)) for f in facts.steps),
            *((execution_key(f), execution_counts(f)) for f in facts.executions),
        ]
    )
    # Hours are folded from the minute sums, not from every fact again.
    counts = dict(minute_deltas)
    counts.update(_fold((k.coarsened(HOUR_RESOLUTION), c) for k, c in minute_deltas.items()))
    histogram: Counter[tuple[RollupKey, int]] = Counter()
    durations = [
        *((step_key(f), f.duration_seconds) for f in facts.steps),
        *((execution_key(f), f.duration_seconds) for f in facts.executions),
    ]
    minute_buckets = Counter((key, bucket_index(seconds)) for key, seconds in durations)
    histogram.update(minute_buckets)
    for (key, bucket), count in minute_buckets.items():
        histogram[key.coarsened(HOUR_RESOLUTION), bucket] += count
    errors: Counter[tuple[RollupKey, str]] = Counter(
        (step_key(f), f.error_type or UNKNOWN_ERROR_TYPE)
        for f in facts.steps
        if f.status in _FAILURE_STATUSES
    )
    for (key, error_type), count in list(errors.items()):
        errors[key.coarsened(HOUR_RESOLUTION), error_type] += count
    return RollupDeltas(counts=counts, errors=dict(errors), histogram=dict(histogram))


_FAILURE_STATUSES = frozenset({StepStatus.FAILED, StepStatus.TIMED_OUT})


@dataclass(frozen=True)
class IngestLag:
    """How late events arrived: now minus event time, over `count` events."""

    count: int
    total_seconds: float
    max_seconds: float

    def merge(self, other: IngestLag) -> IngestLag:
        return IngestLag(
            count=self.count + other.count,
            total_seconds=self.total_seconds + other.total_seconds,
            max_seconds=max(self.max_seconds, other.max_seconds),
        )

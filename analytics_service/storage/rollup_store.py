"""Minute and hour rollups: upserted per batch, summed over ranges and groups by the queries."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    Table,
    and_,
    bindparam,
    func,
    literal,
    or_,
    select,
    true,
    tuple_,
)
from sqlalchemy.ext.asyncio import AsyncSession

from analytics_service.core.histogram import Histogram
from analytics_service.core.ports import GroupKey, Level, MinuteRange, RollupQuery
from analytics_service.core.rollups import (
    EXECUTION_LEVEL,
    HOUR_RESOLUTION,
    MINUTE_RESOLUTION,
    IngestLag,
    RollupCounts,
    RollupDeltas,
    RollupKey,
)
from analytics_service.storage.bulk import Merge, dialect_name, upsert
from analytics_service.storage.models import ingest_lag, rollup_errors, rollups

_COUNTERS = (
    "total",
    "completed",
    "completed_with_errors",
    "failed",
    "timed_out",
    "skipped",
    "cancelled",
    "retries",
)
_SUMS = ("duration_sum", "time_saved_sum", "business_value_sum")
_SUMMED = (*_COUNTERS, *_SUMS)
_ROLLUP_MERGES = {
    **dict.fromkeys(_COUNTERS, Merge.ADD),
    **dict.fromkeys(_SUMS, Merge.ADD),
    "duration_min": Merge.LEAST,
    "duration_max": Merge.GREATEST,
    # The greatest action name wins, so the result does not depend on arrival order.
    "action": Merge.GREATEST,
    # Merged with the stored histogram before the upsert (see SqlRollupStore.apply).
    "histogram_buckets": Merge.REPLACE,
    "histogram_counts": Merge.REPLACE,
}
_COUNT_MERGE = {"count": Merge.ADD}
# Rollup keys per read of stored histograms: SQLite binds five parameters per key.
_KEYS_PER_READ = 500
_LAG_MERGES = {"events": Merge.ADD, "lag_sum": Merge.ADD, "lag_max": Merge.GREATEST}


def _key_columns(keys: list[RollupKey]) -> dict[str, list[Any]]:
    return {
        "tenant": [key.tenant for key in keys],
        "workflow_id": [key.workflow_id for key in keys],
        "step_id": [key.step_id for key in keys],
        "resolution": [key.resolution for key in keys],
        "minute": [key.minute for key in keys],
    }


def _order(key: RollupKey) -> tuple[str, str, str, int, int]:
    """Rows are written in key order so that concurrent batches cannot deadlock."""
    return (key.tenant, key.workflow_id, key.step_id, key.resolution, key.minute)


def _order_pair(item: tuple[tuple[RollupKey, Any], int]) -> tuple[Any, ...]:
    (key, detail), _ = item
    return (*_order(key), detail)


@dataclass(frozen=True)
class _Shape:
    """What a RollupQuery's SQL depends on; its values travel as bound parameters.

    Statements are built once per shape: constructing a SQLAlchemy select costs more Python
    than the database spends summing a day of rollups.
    """

    has_workflow: bool
    level: Level
    has_step: bool
    by_workflow: bool
    by_step: bool
    bucket_minutes: int
    # The resolution of each (resolution, first minute, end minute) range read.
    resolutions: tuple[int, ...]


def _ranges(query: RollupQuery) -> list[tuple[int, int, int]]:
    """Hour rows for the whole hours of the range, minute rows for its edges.

    Minute series read minute rows only: an hour row would land in one minute's bucket.
    Empty edges are left out, so an hour-aligned range is one index range, whatever the
    planner's statistics say.
    """
    start, end = query.minutes.start, query.minutes.end
    first_hour = -(-start // HOUR_RESOLUTION) * HOUR_RESOLUTION
    last_hour = end // HOUR_RESOLUTION * HOUR_RESOLUTION
    by_minute = query.bucket_minutes and query.bucket_minutes % HOUR_RESOLUTION
    if by_minute or first_hour >= last_hour:
        return [(MINUTE_RESOLUTION, start, end)]
    ranges = [
        (HOUR_RESOLUTION, first_hour, last_hour),
        (MINUTE_RESOLUTION, start, first_hour),
        (MINUTE_RESOLUTION, last_hour, end),
    ]
    return [(resolution, low, high) for resolution, low, high in ranges if low < high]


def _shape(query: RollupQuery, ranges: list[tuple[int, int, int]]) -> _Shape:
    return _Shape(
        has_workflow=query.workflow_id is not None,
        level=query.level,
        has_step=query.step_id is not None,
        by_workflow=query.by_workflow,
        by_step=query.by_step,
        bucket_minutes=query.bucket_minutes,
        resolutions=tuple(resolution for resolution, _, _ in ranges),
    )


def _parameters(query: RollupQuery, ranges: list[tuple[int, int, int]]) -> dict[str, Any]:
    values: dict[str, Any] = {"tenant": query.tenant}
    if query.workflow_id is not None:
        values["workflow_id"] = query.workflow_id
    if query.level is Level.STEP and query.step_id is not None:
        values["step_id"] = query.step_id
    for index, (_, low, high) in enumerate(ranges):
        values[f"low_{index}"], values[f"high_{index}"] = low, high
    return values


def _selection(table: Table, shape: _Shape) -> list[ColumnElement[bool]]:
    conditions = [table.c.tenant == bindparam("tenant"), _coverage(table, shape)]
    if shape.has_workflow:
        conditions.append(table.c.workflow_id == bindparam("workflow_id"))
    if shape.level is Level.EXECUTION:
        conditions.append(table.c.step_id == EXECUTION_LEVEL)
    elif shape.has_step:
        conditions.append(table.c.step_id == bindparam("step_id"))
    else:
        conditions.append(table.c.step_id != EXECUTION_LEVEL)
    return conditions


def _coverage(table: Table, shape: _Shape) -> ColumnElement[bool]:
    ranges = [
        and_(
            table.c.resolution == resolution,
            table.c.minute >= bindparam(f"low_{index}"),
            table.c.minute < bindparam(f"high_{index}"),
        )
        for index, resolution in enumerate(shape.resolutions)
    ]
    return ranges[0] if len(ranges) == 1 else or_(*ranges)


def _groups(table: Table, shape: _Shape) -> list[ColumnElement[Any]]:
    """workflow, step and bucket expressions, constant where the query does not group."""
    bucket: ColumnElement[Any] = literal(0)
    if shape.bucket_minutes:
        bucket = (table.c.minute // shape.bucket_minutes) * shape.bucket_minutes
    return [
        table.c.workflow_id if shape.by_workflow else literal(""),
        table.c.step_id if shape.by_step else literal(""),
        bucket,
    ]


@functools.lru_cache(maxsize=256)
def _counts_statement(shape: _Shape) -> Select[Any]:
    groups = _groups(rollups, shape)
    return (
        select(
            *groups,
            *(func.sum(rollups.c[name]).label(name) for name in (*_COUNTERS, *_SUMS)),
            func.min(rollups.c.duration_min).label("duration_min"),
            func.max(rollups.c.duration_max).label("duration_max"),
            func.max(rollups.c.action).label("action"),
        )
        .where(*_selection(rollups, shape))
        .group_by(*groups)
    )


@functools.lru_cache(maxsize=256)
def _histogram_statement(shape: _Shape) -> Select[Any]:
    """Counts per group and bucket, unnested from the rows' histogram arrays by Postgres."""
    groups = _groups(rollups, shape)
    buckets = (
        func.unnest(rollups.c.histogram_buckets, rollups.c.histogram_counts)
        .table_valued("bucket", "count")
        .render_derived(name="buckets")
    )
    return (
        select(*groups, buckets.c.bucket, func.sum(buckets.c.count))
        .select_from(rollups.join(buckets, true()))
        .where(*_selection(rollups, shape))
        .group_by(*groups, buckets.c.bucket)
    )


@functools.lru_cache(maxsize=256)
def _histogram_rows_statement(shape: _Shape) -> Select[Any]:
    """The groups' histogram arrays row by row, for SQLite to merge in Python."""
    return select(
        *_groups(rollups, shape), rollups.c.histogram_buckets, rollups.c.histogram_counts
    ).where(*_selection(rollups, shape))


@functools.lru_cache(maxsize=256)
def _detail_statement(table: Table, detail: str, shape: _Shape) -> Select[Any]:
    """Counts per group and per `detail` (histogram bucket or error type)."""
    groups = _groups(table, shape)
    return (
        select(*groups, table.c[detail], func.sum(table.c.count))
        .where(*_selection(table, shape))
        .group_by(*groups, table.c[detail])
    )


def _prepared(query: RollupQuery) -> tuple[_Shape, dict[str, Any]]:
    ranges = _ranges(query)
    return _shape(query, ranges), _parameters(query, ranges)


def _group_key(row: Any) -> GroupKey:
    return GroupKey(workflow_id=row[0], step_id=row[1], bucket=int(row[2]))


def _counts(row: Any) -> RollupCounts:
    # Postgres sums bigints as numeric: every value is converted back explicitly.
    values = row._mapping
    return RollupCounts(
        total=int(values["total"]),
        completed=int(values["completed"]),
        completed_with_errors=int(values["completed_with_errors"]),
        failed=int(values["failed"]),
        timed_out=int(values["timed_out"]),
        skipped=int(values["skipped"]),
        cancelled=int(values["cancelled"]),
        retries=int(values["retries"]),
        duration_sum=float(values["duration_sum"]),
        duration_min=float(values["duration_min"]),
        duration_max=float(values["duration_max"]),
        time_saved_sum=float(values["time_saved_sum"]),
        business_value_sum=float(values["business_value_sum"]),
        action=str(values["action"]),
    )


class SqlRollupStore:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def apply(self, deltas: RollupDeltas) -> None:
        """The stepwise (SQLite) path: histograms are merged here, with the rows locked.

        Postgres batches take `batch_ingest.PostgresBatchIngest`, which merges them in the
        upsert itself; on SQLite one connection writes at a time.
        """
        keys = sorted(deltas.counts, key=_order)
        counts = [deltas.counts[key] for key in keys]
        histograms = await self._merged_histograms(keys, deltas)
        await upsert(
            self._session,
            rollups,
            {
                **_key_columns(keys),
                **{name: [getattr(c, name) for c in counts] for name in _SUMMED},
                "duration_min": [c.duration_min for c in counts],
                "duration_max": [c.duration_max for c in counts],
                "action": [c.action for c in counts],
                "histogram_buckets": [sorted(histograms[key]) for key in keys],
                "histogram_counts": [
                    [histograms[key][bucket] for bucket in sorted(histograms[key])] for key in keys
                ],
            },
            _ROLLUP_MERGES,
        )
        errors = sorted(deltas.errors.items(), key=_order_pair)
        await upsert(
            self._session,
            rollup_errors,
            {
                **_key_columns([key for (key, _), _ in errors]),
                "error_type": [error_type for (_, error_type), _ in errors],
                "count": [count for _, count in errors],
            },
            _COUNT_MERGE,
        )

    async def _merged_histograms(
        self, keys: list[RollupKey], deltas: RollupDeltas
    ) -> dict[RollupKey, dict[int, int]]:
        """Each key's stored histogram plus what the deltas add to it."""
        merged: dict[RollupKey, dict[int, int]] = {key: {} for key in keys}
        key_columns = (
            rollups.c.tenant,
            rollups.c.workflow_id,
            rollups.c.step_id,
            rollups.c.resolution,
            rollups.c.minute,
        )
        for chunk in range(0, len(keys), _KEYS_PER_READ):
            wanted = [_order(key) for key in keys[chunk : chunk + _KEYS_PER_READ]]
            statement = (
                select(*key_columns, rollups.c.histogram_buckets, rollups.c.histogram_counts)
                .where(tuple_(*key_columns).in_(wanted))
                .with_for_update()
            )
            for row in await self._session.execute(statement):
                key = RollupKey(row[0], row[1], row[2], row[4], row[3])
                stored = merged[key]
                for bucket, count in zip(row[5], row[6], strict=True):
                    stored[bucket] = stored.get(bucket, 0) + count
        for (key, bucket), count in deltas.histogram.items():
            histogram = merged[key]
            histogram[bucket] = histogram.get(bucket, 0) + count
        return merged

    async def counts(self, query: RollupQuery) -> dict[GroupKey, RollupCounts]:
        shape, parameters = _prepared(query)
        result = await self._session.execute(_counts_statement(shape), parameters)
        return {_group_key(row): _counts(row) for row in result}

    async def histograms(self, query: RollupQuery) -> dict[GroupKey, Histogram]:
        shape, parameters = _prepared(query)
        collected: dict[tuple[Any, ...], dict[int, int]] = {}
        if dialect_name(self._session) == "postgresql":
            # A few hundred buckets per group, summed by Postgres from the rows' arrays.
            statement = _histogram_statement(shape)
            for row in await self._session.execute(statement, parameters):
                collected.setdefault(tuple(row[:3]), {})[int(row[3])] = int(row[4])
        else:
            for row in await self._session.execute(_histogram_rows_statement(shape), parameters):
                counts = collected.setdefault(tuple(row[:3]), {})
                for bucket, count in zip(row[3], row[4], strict=True):
                    counts[bucket] = counts.get(bucket, 0) + count
        return {_group_key(group): Histogram(counts) for group, counts in collected.items()}

    async def errors(self, query: RollupQuery) -> dict[GroupKey, dict[str, int]]:
        shape, parameters = _prepared(query)
        statement = _detail_statement(rollup_errors, "error_type", shape)
        collected: dict[GroupKey, dict[str, int]] = {}
        for row in await self._session.execute(statement, parameters):
            collected.setdefault(_group_key(row), {})[row[3]] = int(row[4])
        return collected

    async def record_ingest_lag(
        self, minute: int, lags: Mapping[tuple[str, str], IngestLag]
    ) -> None:
        scopes = sorted(lags)
        columns: dict[str, list[Any]] = {
            "tenant": [tenant for tenant, _ in scopes],
            "workflow_id": [workflow_id for _, workflow_id in scopes],
            "minute": [minute] * len(scopes),
            "events": [lags[scope].count for scope in scopes],
            "lag_sum": [lags[scope].total_seconds for scope in scopes],
            "lag_max": [lags[scope].max_seconds for scope in scopes],
        }
        await upsert(self._session, ingest_lag, columns, _LAG_MERGES)

    async def max_ingest_lag(
        self, tenant: str, workflow_id: str, minutes: MinuteRange
    ) -> float | None:
        statement = select(func.max(ingest_lag.c.lag_max)).where(
            ingest_lag.c.tenant == tenant,
            ingest_lag.c.workflow_id == workflow_id,
            ingest_lag.c.minute >= minutes.start,
            ingest_lag.c.minute < minutes.end,
        )
        value = (await self._session.execute(statement)).scalar()
        return None if value is None else float(value)

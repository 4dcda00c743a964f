"""A batch of events into the facts, the rollups and the event-id ledger: per dialect.

On Postgres the facts and rollups of a batch are one statement. The events travel once, as
one array per column (step facts, execution facts and events without a fact apart), and
data-modifying CTEs insert the facts of the new events in the batch's order and add exactly
the facts inserted now to the minute and hour rollups - counts, sums and the histogram
arrays, merged by `histogram_merge` - and to the error counts. A fact's key deduplicates its
event: no ledger row is written for it. Only the events left over - those that yield no
fact, and fact events whose fact was not inserted - go to the ledger, in a second statement
that runs only when there are any: a fact event whose stored fact carries its id is a
redelivery; one whose stored fact carries another id is a second event for that attempt
and is recorded by id. The second statement takes a new snapshot, so it sees a fact that a
concurrent batch committed while the first one waited for it.

On SQLite (the embedded default) the same happens in steps: ledger, facts, deltas folded
in Python (`core.rollups.rollup_deltas`), upserts.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from analytics_service.core.events import (
    EventKind,
    ExecutionEvent,
    ExecutionStatus,
    StepStatus,
    derive_facts,
)
from analytics_service.core.histogram import LOG_GAMMA, MIN_TRACKED_SECONDS, ZERO_BUCKET
from analytics_service.core.rollups import (
    EXECUTION_LEVEL,
    HOUR_RESOLUTION,
    MINUTE_RESOLUTION,
    SECONDS_PER_MINUTE,
    UNKNOWN_ERROR_TYPE,
    rollup_deltas,
)
from analytics_service.storage.event_ledger import SqlEventLedger
from analytics_service.storage.fact_store import SqlFactStore
from analytics_service.storage.rollup_store import SqlRollupStore

_STEP_FACT, _EXECUTION_FACT = 1, 2

# Each kind of row as Postgres sees it: one array parameter per column, one element per fact.
_STEP_ROWS = (
    ("event_id", "text"),
    ("execution_id", "text"),
    ("step_id", "text"),
    ("attempt", "integer"),
    ("tenant", "text"),
    ("workflow_id", "text"),
    ("workflow_version", "integer"),
    ("action", "text"),
    ("status", "text"),
    ("error_type", "text"),
    ("error_message", "text"),
    ("started_at", "timestamptz"),
    ("finished_at", "timestamptz"),
    ("duration_seconds", "float8"),
    ("depends_on", "text"),
)
_EXECUTION_ROWS = (
    ("event_id", "text"),
    ("execution_id", "text"),
    ("tenant", "text"),
    ("workflow_id", "text"),
    ("workflow_version", "integer"),
    ("status", "text"),
    ("error_type", "text"),
    ("error_message", "text"),
    ("started_at", "timestamptz"),
    ("finished_at", "timestamptz"),
    ("duration_seconds", "float8"),
    ("estimated_time_saved_seconds", "float8"),
    ("business_value", "float8"),
    ("parent_execution_id", "text"),
)
# Leftovers for the ledger: the key of a fact event's fact tells a redelivery from another
# event of the same attempt; `fact` is 0 for an event that yields no fact.
_LEDGER_ROWS = (
    ("event_id", "text"),
    ("tenant", "text"),
    ("workflow_id", "text"),
    ("occurred_at", "timestamptz"),
    ("fact", "smallint"),
    ("execution_id", "text"),
    ("step_id", "text"),
    ("attempt", "integer"),
)

_KEY = "tenant, workflow_id, step_id"
_ROLLUP_KEY = f"{_KEY}, resolution, minute"
# Statuses by value; step and execution statuses share the values counted here.
_COMPLETED = ExecutionStatus.COMPLETED.value
_FAILED = StepStatus.FAILED.value
_TIMED_OUT = StepStatus.TIMED_OUT.value
_STATUS_COUNTS = {
    "completed": _COMPLETED,
    "completed_with_errors": ExecutionStatus.COMPLETED_WITH_ERRORS.value,
    "failed": _FAILED,
    "timed_out": _TIMED_OUT,
    "skipped": StepStatus.SKIPPED.value,
    "cancelled": StepStatus.CANCELLED.value,
}
# Everything a rollup row adds up, as the finest level (one bucket of one minute) computes it.
_BUCKET_SUMS = {
    "total": "count(*)",
    **{
        name: f"count(*) FILTER (WHERE status = '{value}')"
        for name, value in _STATUS_COUNTS.items()
    },
    "retries": "count(*) FILTER (WHERE attempt > 1)",
    "duration_sum": "sum(seconds)",
    "time_saved_sum": "sum(time_saved)",
    "business_value_sum": "sum(business_value)",
}
_ADDED = tuple(_BUCKET_SUMS)
_EXTREMES = ("duration_min", "duration_max", "action")
# The greatest action name wins, so the result does not depend on arrival order.
_GREATEST_ACTION = 'max(action COLLATE "C")'


def _bucket_sums() -> str:
    """A rollup row's values for the facts of one bucket of one minute."""
    added = ", ".join(f"{sql} AS {name}" for name, sql in _BUCKET_SUMS.items())
    return (
        f"{added}, min(seconds) AS duration_min, max(seconds) AS duration_max, "
        f"{_GREATEST_ACTION} AS action, count(*) AS count"
    )


def _summed_again() -> str:
    """A rollup row's values summed from finer groups' values."""
    added = ", ".join(f"sum({name}) AS {name}" for name in _ADDED)
    return (
        f"{added}, min(duration_min) AS duration_min, max(duration_max) AS duration_max, "
        f"{_GREATEST_ACTION} AS action"
    )


def _rows_of(buckets: str, time: str) -> str:
    """One rollup row per key and `time` from per-bucket sums, with its histogram arrays."""
    return (
        f"SELECT {_KEY}, {time} AS minute, {_summed_again()}, "
        "array_agg(bucket ORDER BY bucket) AS histogram_buckets, "
        "array_agg(count ORDER BY bucket) AS histogram_counts "
        f"FROM {buckets} GROUP BY {_KEY}, {time}"
    )


# Merging a row's histogram costs ~70 us, appending the batch's buckets a few: a row's
# arrays grow by appending and are merged (duplicates summed, sorted) once they pass
# HISTOGRAM_APPEND_LIMIT entries, so a busy hour row is merged every few batches.
HISTOGRAM_APPEND_LIMIT = 256
_HISTOGRAM_SIZE = "cardinality(rollups.histogram_buckets) + cardinality(EXCLUDED.histogram_buckets)"
_HISTOGRAM_UPDATE = f"""(histogram_buckets, histogram_counts) = (
        SELECT * FROM histogram_merge(rollups.histogram_buckets, rollups.histogram_counts,
            EXCLUDED.histogram_buckets, EXCLUDED.histogram_counts)
        WHERE {_HISTOGRAM_SIZE} > {HISTOGRAM_APPEND_LIMIT}
        UNION ALL
        SELECT rollups.histogram_buckets || EXCLUDED.histogram_buckets,
            rollups.histogram_counts || EXCLUDED.histogram_counts
        WHERE {_HISTOGRAM_SIZE} <= {HISTOGRAM_APPEND_LIMIT})"""
_ROLLUP_VALUES = (*_ADDED, *_EXTREMES, "histogram_buckets", "histogram_counts")
_ROLLUP_UPDATES = ", ".join(
    [
        *(f"{name} = rollups.{name} + EXCLUDED.{name}" for name in _ADDED),
        "duration_min = LEAST(rollups.duration_min, EXCLUDED.duration_min)",
        "duration_max = GREATEST(rollups.duration_max, EXCLUDED.duration_max)",
        # The greatest action name wins, so the result does not depend on arrival order.
        "action = GREATEST(rollups.action, EXCLUDED.action)",
        _HISTOGRAM_UPDATE,
    ]
)


def _unnest(prefix: str, columns: tuple[tuple[str, str], ...]) -> str:
    arrays = ", ".join(f"CAST(:{prefix}{name} AS {kind}[])" for name, kind in columns)
    names = ", ".join(name for name, _ in columns)
    return f"SELECT * FROM unnest({arrays}) WITH ORDINALITY AS rows({names}, position)"


def _new_facts(table: str, rows: str, columns: tuple[tuple[str, str], ...], key: str) -> str:
    """Insert the facts of events the ledger does not know, first event of a key first."""
    names = ", ".join(name for name, _ in columns)
    return f"""
    INSERT INTO {table} ({names}) SELECT {names} FROM {rows}
    WHERE NOT EXISTS (SELECT FROM ingested_events e WHERE e.event_id = {rows}.event_id)
    ORDER BY position
    ON CONFLICT ({key}) DO NOTHING"""


# Durations become histogram buckets as core.histogram.bucket_index computes them: the same
# IEEE operations on the same constants, so both dialects bucket a duration alike.
_BUCKET = (
    f"CASE WHEN seconds <= {MIN_TRACKED_SECONDS!r} THEN {ZERO_BUCKET} "
    f"ELSE ceil(ln(seconds) / {LOG_GAMMA!r})::bigint END"
)

# Rollup rows are written in key order so that concurrent batches cannot deadlock.
_INGEST = text(
    f"""
WITH steps AS ({_unnest("s_", _STEP_ROWS)}
), executions AS ({_unnest("x_", _EXECUTION_ROWS)}
), new_steps AS ({_new_facts("step_facts", "steps", _STEP_ROWS, "execution_id, step_id, attempt")}
    RETURNING event_id, {_KEY}, attempt, status, error_type, action, finished_at,
        duration_seconds AS seconds, 0.0 AS time_saved, 0.0 AS business_value
), new_executions AS ({_new_facts("execution_facts", "executions", _EXECUTION_ROWS, "execution_id")}
    RETURNING event_id, tenant, workflow_id, '{EXECUTION_LEVEL}' AS step_id, 0 AS attempt,
        status, error_type, '' AS action, finished_at, duration_seconds AS seconds,
        CASE WHEN status = '{_COMPLETED}' THEN estimated_time_saved_seconds ELSE 0 END,
        CASE WHEN status = '{_COMPLETED}' THEN business_value ELSE 0 END
), stored AS (
    SELECT {_STEP_FACT} AS fact, * FROM new_steps
    UNION ALL
    SELECT {_EXECUTION_FACT}, * FROM new_executions
), keyed AS (
    SELECT *,
        floor(extract(epoch FROM finished_at) / {SECONDS_PER_MINUTE})::bigint AS minute,
        {_BUCKET} AS bucket
    FROM stored
), minute_buckets AS (
    SELECT {_KEY}, minute, minute / {HOUR_RESOLUTION} * {HOUR_RESOLUTION} AS hour, bucket,
        {_bucket_sums()}
    FROM keyed GROUP BY {_KEY}, minute, bucket
), hour_buckets AS (
    SELECT {_KEY}, hour, bucket, {_summed_again()}, sum(count)::bigint AS count
    FROM minute_buckets GROUP BY {_KEY}, hour, bucket
), rollup_rows AS (
    INSERT INTO rollups ({_ROLLUP_KEY}, {", ".join(_ROLLUP_VALUES)})
    SELECT {_KEY}, resolution, minute, {", ".join(_ROLLUP_VALUES)} FROM (
        SELECT {MINUTE_RESOLUTION} AS resolution, * FROM ({_rows_of("minute_buckets", "minute")})
            AS minutes
        UNION ALL
        SELECT {HOUR_RESOLUTION}, * FROM ({_rows_of("hour_buckets", "hour")}) AS hours
    ) AS deltas
    ORDER BY {_ROLLUP_KEY}
    ON CONFLICT ({_ROLLUP_KEY}) DO UPDATE SET {_ROLLUP_UPDATES}
    RETURNING 1
), minute_errors AS (
    SELECT {_KEY}, minute, minute / {HOUR_RESOLUTION} * {HOUR_RESOLUTION} AS hour,
        CASE WHEN error_type = '' THEN '{UNKNOWN_ERROR_TYPE}' ELSE error_type END
            AS error_type,
        count(*) AS count
    FROM keyed
    WHERE fact = {_STEP_FACT} AND status IN ('{_FAILED}', '{_TIMED_OUT}')
    GROUP BY {_KEY}, minute, 6
), error_rows AS (
    INSERT INTO rollup_errors ({_ROLLUP_KEY}, error_type, count)
    SELECT * FROM (
        SELECT {_KEY}, {MINUTE_RESOLUTION} AS resolution, minute, error_type, count
        FROM minute_errors
        UNION ALL
        SELECT {_KEY}, {HOUR_RESOLUTION}, hour, error_type, sum(count)
        FROM minute_errors GROUP BY {_KEY}, hour, error_type
    ) AS deltas
    ORDER BY {_ROLLUP_KEY}, error_type
    ON CONFLICT ({_ROLLUP_KEY}, error_type)
    DO UPDATE SET count = rollup_errors.count + EXCLUDED.count
    RETURNING 1
)
SELECT event_id FROM stored
"""
)

_RECORD_LEFTOVERS = text(
    f"""
WITH leftovers AS ({_unnest("", _LEDGER_ROWS)})
INSERT INTO ingested_events (event_id, tenant, workflow_id, occurred_at, ingested_at)
SELECT event_id, tenant, workflow_id, occurred_at, CAST(:now AS timestamptz) FROM leftovers
WHERE NOT EXISTS (
    SELECT FROM step_facts f
    WHERE leftovers.fact = {_STEP_FACT} AND f.execution_id = leftovers.execution_id
        AND f.step_id = leftovers.step_id AND f.attempt = leftovers.attempt
        AND f.event_id = leftovers.event_id
) AND NOT EXISTS (
    SELECT FROM execution_facts f
    WHERE leftovers.fact = {_EXECUTION_FACT} AND f.execution_id = leftovers.execution_id
        AND f.event_id = leftovers.event_id
)
ORDER BY event_id
ON CONFLICT DO NOTHING
RETURNING event_id
"""
)

_CUSTOM_PLAN = text("SET LOCAL plan_cache_mode = force_custom_plan")


def _is_step_fact(event: ExecutionEvent) -> bool:
    return event.kind is EventKind.STEP_STATUS_CHANGED and event.step_status.is_terminal


def _is_execution_fact(event: ExecutionEvent) -> bool:
    return event.kind is EventKind.EXECUTION_STATUS_CHANGED and event.execution_status.is_terminal


def _step_row(event: ExecutionEvent) -> tuple[Any, ...]:
    """A step fact's columns, as `core.events.step_fact` derives them."""
    return (
        event.event_id,
        event.execution_id,
        event.step_id,
        max(event.attempt, 1),
        event.tenant,
        event.workflow_id,
        event.workflow_version,
        event.action,
        event.step_status.value,
        event.error_type,
        event.error_message,
        event.started_at or event.occurred_at,
        event.occurred_at,
        max(event.duration_seconds, 0.0),
        _depends_on(event.depends_on),
    )


def _execution_row(event: ExecutionEvent) -> tuple[Any, ...]:
    """An execution fact's columns, as `core.events.execution_fact` derives them."""
    return (
        event.event_id,
        event.execution_id,
        event.tenant,
        event.workflow_id,
        event.workflow_version,
        event.execution_status.value,
        event.error_type,
        event.error_message,
        event.started_at or event.occurred_at,
        event.occurred_at,
        max(event.duration_seconds, 0.0),
        max(event.estimated_time_saved_seconds, 0.0),
        event.business_value,
        event.parent_execution_id,
    )


def _ledger_row(event: ExecutionEvent) -> tuple[Any, ...]:
    if _is_step_fact(event):
        fact, step_id, attempt = _STEP_FACT, event.step_id, max(event.attempt, 1)
    elif _is_execution_fact(event):
        fact, step_id, attempt = _EXECUTION_FACT, EXECUTION_LEVEL, 0
    else:
        fact, step_id, attempt = 0, event.step_id, 0
    return (
        event.event_id,
        event.tenant,
        event.workflow_id,
        event.occurred_at,
        fact,
        event.execution_id,
        step_id,
        attempt,
    )


def _arrays(
    prefix: str, columns: tuple[tuple[str, str], ...], rows: list[tuple[Any, ...]]
) -> dict[str, list[Any]]:
    if not rows:
        return {f"{prefix}{name}": [] for name, _ in columns}
    return {
        f"{prefix}{name}": list(values)
        for (name, _), values in zip(columns, zip(*rows, strict=True), strict=True)
    }


def _depends_on(step_ids: tuple[str, ...]) -> str:
    # The JSON array that json.dumps(list(step_ids)) writes, without a call per fact for the
    # common shapes; anything that might need escaping goes through json.
    if not step_ids:
        return "[]"
    if all(_plain(step_id) for step_id in step_ids):
        return "[" + ", ".join(f'"{step_id}"' for step_id in step_ids) + "]"
    return json.dumps(list(step_ids))


def _plain(value: str) -> bool:
    return value.isascii() and value.isprintable() and '"' not in value and "\\" not in value


class PostgresBatchIngest:
    """Facts and rollups in one statement; the ledger only for what no fact records."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def store_new(self, events: Sequence[ExecutionEvent], now: datetime) -> set[str]:
        if not events:
            return set()
        steps = [_step_row(e) for e in events if _is_step_fact(e)]
        executions = [_execution_row(e) for e in events if _is_execution_fact(e)]
        new_ids: set[str] = set()
        if steps or executions:
            parameters = {
                **_arrays("s_", _STEP_ROWS, steps),
                **_arrays("x_", _EXECUTION_ROWS, executions),
            }
            # A generic plan guesses ten rows per array and joins by nested loops, several
            # times slower from the sixth batch on a connection; planning costs ~1 ms.
            await self._session.execute(_CUSTOM_PLAN)
            result = await self._session.execute(_INGEST, parameters)
            new_ids.update(event_id for (event_id,) in result.all())
        if len(new_ids) < len(events):
            leftovers = [_ledger_row(e) for e in events if e.event_id not in new_ids]
            ledger: dict[str, Any] = {**_arrays("", _LEDGER_ROWS, leftovers), "now": now}
            result = await self._session.execute(_RECORD_LEFTOVERS, ledger)
            new_ids.update(event_id for (event_id,) in result.all())
        return new_ids


class StepwiseBatchIngest:
    """The batch in steps through the repositories; the SQLite path."""

    def __init__(
        self, events: SqlEventLedger, facts: SqlFactStore, rollups: SqlRollupStore
    ) -> None:
        self._events = events
        self._facts = facts
        self._rollups = rollups

    async def store_new(self, events: Sequence[ExecutionEvent], now: datetime) -> set[str]:
        new_ids = await self._events.record_new(events, now)
        new = tuple(e for e in events if e.event_id in new_ids)
        stored = await self._facts.add(derive_facts(new))
        deltas = rollup_deltas(stored)
        if not deltas.is_empty:
            await self._rollups.apply(deltas)
        return new_ids

"""A batch of events into the ledger, the facts and the rollups: per dialect.

On Postgres the whole batch is one statement. The events travel once, as one array per
column, and data-modifying CTEs record their ids, insert the facts of the new ones (in the
batch's order, as the stepwise path does) and add exactly the facts inserted now to the
minute and hour rollups, histograms and error counts.
Per batch that is one round trip and no per-fact Python beyond building the arrays.

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
from analytics_service.core.histogram import bucket_index
from analytics_service.core.rollups import (
    EXECUTION_LEVEL,
    HOUR_RESOLUTION,
    MINUTE_RESOLUTION,
    UNKNOWN_ERROR_TYPE,
    minute_of,
    rollup_deltas,
)
from analytics_service.storage.event_ledger import SqlEventLedger
from analytics_service.storage.fact_store import SqlFactStore
from analytics_service.storage.rollup_store import SqlRollupStore

_NOT_A_FACT, _STEP_FACT, _EXECUTION_FACT = 0, 1, 2

# The batch as Postgres sees it: one array parameter per column, one element per event.
_BATCH = (
    ("event_id", "text"),
    ("tenant", "text"),
    ("workflow_id", "text"),
    ("occurred_at", "timestamptz"),
    ("fact", "smallint"),
    ("execution_id", "text"),
    ("step_id", "text"),
    ("attempt", "integer"),
    ("workflow_version", "integer"),
    ("action", "text"),
    ("status", "text"),
    ("error_type", "text"),
    ("error_message", "text"),
    ("started_at", "timestamptz"),
    ("duration_seconds", "float8"),
    ("depends_on", "text"),
    ("estimated_time_saved_seconds", "float8"),
    ("business_value", "float8"),
    ("parent_execution_id", "text"),
    ("minute", "bigint"),
    ("hour", "bigint"),
    ("bucket", "integer"),
)

_STEP_FACT_COLUMNS = (
    "execution_id, step_id, attempt, tenant, workflow_id, workflow_version, action, status, "
    "error_type, error_message, started_at, finished_at, duration_seconds, depends_on, event_id"
)
_EXECUTION_FACT_COLUMNS = (
    "execution_id, tenant, workflow_id, workflow_version, status, error_type, error_message, "
    "started_at, finished_at, duration_seconds, estimated_time_saved_seconds, business_value, "
    "parent_execution_id, event_id"
)
_KEY = "tenant, workflow_id, step_id"
# Statuses by value; step and execution statuses share the values counted here.
_COMPLETED = ExecutionStatus.COMPLETED.value
_FAILED = StepStatus.FAILED.value
_TIMED_OUT = StepStatus.TIMED_OUT.value


def _status_count(status: str) -> str:
    return f"count(*) FILTER (WHERE status = '{status}')"


_MINUTE_SUMS = f"""
    count(*) AS total,
    {_status_count(_COMPLETED)} AS completed,
    {_status_count(ExecutionStatus.COMPLETED_WITH_ERRORS.value)} AS completed_with_errors,
    {_status_count(_FAILED)} AS failed,
    {_status_count(_TIMED_OUT)} AS timed_out,
    {_status_count(StepStatus.SKIPPED.value)} AS skipped,
    {_status_count(StepStatus.CANCELLED.value)} AS cancelled,
    count(*) FILTER (WHERE attempt > 1) AS retries,
    sum(duration_seconds) AS duration_sum,
    min(duration_seconds) AS duration_min,
    max(duration_seconds) AS duration_max,
    sum(CASE WHEN status = '{_COMPLETED}' THEN estimated_time_saved_seconds ELSE 0 END)
        AS time_saved_sum,
    sum(CASE WHEN status = '{_COMPLETED}' THEN business_value ELSE 0 END) AS business_value_sum,
    max(action COLLATE "C") AS action"""
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
_HOUR_SUMS = ", ".join(
    [
        *(f"sum({name}) AS {name}" for name in _ADDED),
        "min(duration_min) AS duration_min",
        "max(duration_max) AS duration_max",
        'max(action COLLATE "C") AS action',
    ]
)
_ROLLUP_VALUES = (*_ADDED, "duration_min", "duration_max", "action")
_ROLLUP_UPDATES = ", ".join(
    [
        *(f"{name} = rollups.{name} + EXCLUDED.{name}" for name in _ADDED),
        "duration_min = LEAST(rollups.duration_min, EXCLUDED.duration_min)",
        "duration_max = GREATEST(rollups.duration_max, EXCLUDED.duration_max)",
        # The greatest action name wins, so the result does not depend on arrival order.
        "action = GREATEST(rollups.action, EXCLUDED.action)",
    ]
)
_ROLLUP_KEY = f"{_KEY}, resolution, minute"

# Rollup rows are written in key order so that concurrent batches cannot deadlock.
_INGEST = text(
    f"""
WITH batch AS (
    SELECT * FROM unnest({", ".join(f"CAST(:{name} AS {kind}[])" for name, kind in _BATCH)})
        WITH ORDINALITY AS b({", ".join(name for name, _ in _BATCH)}, position)
), new_events AS (
    INSERT INTO ingested_events (event_id, tenant, workflow_id, occurred_at, ingested_at)
    SELECT event_id, tenant, workflow_id, occurred_at, CAST(:now AS timestamptz) FROM batch
    ORDER BY position
    ON CONFLICT DO NOTHING RETURNING event_id
), fresh AS (
    SELECT batch.* FROM batch JOIN new_events USING (event_id)
), new_steps AS (
    INSERT INTO step_facts ({_STEP_FACT_COLUMNS})
    SELECT {_STEP_FACT_COLUMNS.replace("finished_at", "occurred_at")}
    FROM fresh WHERE fact = {_STEP_FACT} ORDER BY position
    ON CONFLICT DO NOTHING RETURNING execution_id, step_id, attempt
), new_executions AS (
    INSERT INTO execution_facts ({_EXECUTION_FACT_COLUMNS})
    SELECT {_EXECUTION_FACT_COLUMNS.replace("finished_at", "occurred_at")}
    FROM fresh WHERE fact = {_EXECUTION_FACT} ORDER BY position
    ON CONFLICT DO NOTHING RETURNING execution_id
), stored AS (
    SELECT fresh.* FROM fresh JOIN new_steps USING (execution_id, step_id, attempt)
    WHERE fresh.fact = {_STEP_FACT}
    UNION ALL
    SELECT fresh.* FROM fresh JOIN new_executions USING (execution_id)
    WHERE fresh.fact = {_EXECUTION_FACT}
), minutes AS (
    SELECT {_KEY}, minute, hour, {_MINUTE_SUMS}
    FROM stored GROUP BY {_KEY}, minute, hour
), rollup_rows AS (
    INSERT INTO rollups ({_ROLLUP_KEY}, {", ".join(_ROLLUP_VALUES)})
    SELECT * FROM (
        SELECT {_KEY}, {MINUTE_RESOLUTION} AS resolution, minute, {", ".join(_ROLLUP_VALUES)}
        FROM minutes
        UNION ALL
        SELECT {_KEY}, {HOUR_RESOLUTION}, hour, {_HOUR_SUMS}
        FROM minutes GROUP BY {_KEY}, hour
    ) AS deltas
    ORDER BY {_ROLLUP_KEY}
    ON CONFLICT ({_ROLLUP_KEY}) DO UPDATE SET {_ROLLUP_UPDATES}
    RETURNING 1
), minute_buckets AS (
    SELECT {_KEY}, minute, hour, bucket, count(*) AS count
    FROM stored GROUP BY {_KEY}, minute, hour, bucket
), histogram_rows AS (
    INSERT INTO rollup_histograms ({_ROLLUP_KEY}, bucket, count)
    SELECT * FROM (
        SELECT {_KEY}, {MINUTE_RESOLUTION} AS resolution, minute, bucket, count
        FROM minute_buckets
        UNION ALL
        SELECT {_KEY}, {HOUR_RESOLUTION}, hour, bucket, sum(count)
        FROM minute_buckets GROUP BY {_KEY}, hour, bucket
    ) AS deltas
    ORDER BY {_ROLLUP_KEY}, bucket
    ON CONFLICT ({_ROLLUP_KEY}, bucket)
    DO UPDATE SET count = rollup_histograms.count + EXCLUDED.count
    RETURNING 1
), minute_errors AS (
    SELECT {_KEY}, minute, hour,
        CASE WHEN error_type = '' THEN '{UNKNOWN_ERROR_TYPE}' ELSE error_type END
            AS error_type,
        count(*) AS count
    FROM stored
    WHERE fact = {_STEP_FACT} AND status IN ('{_FAILED}', '{_TIMED_OUT}')
    GROUP BY {_KEY}, minute, hour, 6
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
SELECT event_id FROM new_events
"""
)

_CUSTOM_PLAN = text("SET LOCAL plan_cache_mode = force_custom_plan")


def _row(event: ExecutionEvent) -> tuple[Any, ...]:
    """One event as the batch's columns; the fact fields as `core.events` derives them."""
    kind = event.kind
    if kind is EventKind.STEP_STATUS_CHANGED and event.step_status.is_terminal:
        fact, status, step_id = _STEP_FACT, event.step_status.value, event.step_id
    elif kind is EventKind.EXECUTION_STATUS_CHANGED and event.execution_status.is_terminal:
        fact, status, step_id = _EXECUTION_FACT, event.execution_status.value, EXECUTION_LEVEL
    else:
        fact, status, step_id = _NOT_A_FACT, "", event.step_id
    occurred_at = event.occurred_at
    minute = minute_of(occurred_at)
    seconds = max(event.duration_seconds, 0.0)
    return (
        event.event_id,
        event.tenant,
        event.workflow_id,
        occurred_at,
        fact,
        event.execution_id,
        step_id,
        max(event.attempt, 1) if fact == _STEP_FACT else 0,
        event.workflow_version,
        event.action if fact == _STEP_FACT else "",
        status,
        event.error_type,
        event.error_message,
        event.started_at or occurred_at,
        seconds,
        _depends_on(event.depends_on),
        max(event.estimated_time_saved_seconds, 0.0) if fact == _EXECUTION_FACT else 0.0,
        event.business_value if fact == _EXECUTION_FACT else 0.0,
        event.parent_execution_id,
        minute,
        minute // HOUR_RESOLUTION * HOUR_RESOLUTION,
        bucket_index(seconds),
    )


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
    """The batch in one statement: ledger, facts and rollups from the same arrays."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def store_new(self, events: Sequence[ExecutionEvent], now: datetime) -> set[str]:
        if not events:
            return set()
        columns = zip(*map(_row, events), strict=True)
        parameters: dict[str, Any] = {
            name: list(values) for (name, _), values in zip(_BATCH, columns, strict=True)
        }
        parameters["now"] = now
        # A generic plan guesses ten rows per array and joins the CTEs by nested loops,
        # 5-10x slower from the sixth batch on a connection; planning per batch costs ~1 ms.
        await self._session.execute(_CUSTOM_PLAN)
        result = await self._session.execute(_INGEST, parameters)
        return {event_id for (event_id,) in result.all()}


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

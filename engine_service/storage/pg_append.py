"""A batch of appends on Postgres in one statement.

The generic path takes six round trips and builds a SQLAlchemy parameter set per row;
on Postgres the whole batch is one statement of data-modifying CTEs over `unnest`ed
arrays. The execution rows are updated only where the expected sequence (and the lease
owner) match; every other write is gated on all of them matching, and the caller rolls
the transaction back when they did not.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from engine_service.core.state import ExecutionEvent, ExecutionState
from engine_service.storage.attempts import attempt_rows
from engine_service.storage.codec import dumps, event_to_json, state_snapshot
from engine_service.storage.notices import NOTIFY_CHANNEL, notice_payloads

Append = tuple[ExecutionState, Sequence[ExecutionEvent]]

_APPEND = text(
    f"""
WITH v AS (
    SELECT * FROM unnest(
        CAST(:ids AS text[]), CAST(:expected AS bigint[]), CAST(:statuses AS text[]),
        CAST(:started AS timestamptz[]), CAST(:finished AS timestamptz[]),
        CAST(:lasts AS bigint[]), CAST(:snapshot_sequences AS bigint[]),
        CAST(:snapshots AS text[])
    ) AS v(id, expected, status, started_at, finished_at, last_sequence,
           snapshot_sequence, snapshot)
), updated AS (
    UPDATE executions AS e SET
        status = v.status, started_at = v.started_at, finished_at = v.finished_at,
        last_sequence = v.last_sequence,
        snapshot_sequence = COALESCE(v.snapshot_sequence, e.snapshot_sequence),
        state = COALESCE(CAST(v.snapshot AS jsonb), e.state)
    FROM v
    WHERE e.id = v.id AND e.last_sequence = v.expected
      AND NOT EXISTS (
          SELECT 1 FROM leases AS l
          WHERE l.execution_id = e.id AND :owner <> '' AND l.owner <> :owner)
    RETURNING e.id
), ok AS (
    SELECT count(*) = cardinality(CAST(:ids AS text[])) AS all_matched FROM updated
), new_events AS (
    INSERT INTO execution_events
        (execution_id, sequence, event_id, tenant, kind, created_at, payload)
    SELECT x.execution_id, x.sequence, x.event_id, x.tenant, x.kind, x.created_at,
           CAST(x.payload AS jsonb)
    FROM unnest(
        CAST(:event_executions AS text[]), CAST(:event_sequences AS bigint[]),
        CAST(:event_ids AS text[]), CAST(:event_tenants AS text[]),
        CAST(:event_kinds AS text[]), CAST(:event_times AS timestamptz[]),
        CAST(:event_payloads AS text[])
    ) AS x(execution_id, sequence, event_id, tenant, kind, created_at, payload), ok
    WHERE ok.all_matched
), attempts AS (
    INSERT INTO step_attempts AS a
        (execution_id, step_id, attempt, action, status, started_at, finished_at,
         duration_seconds, error_type)
    SELECT r.* FROM unnest(
        CAST(:attempt_executions AS text[]), CAST(:attempt_steps AS text[]),
        CAST(:attempt_numbers AS integer[]), CAST(:attempt_actions AS text[]),
        CAST(:attempt_statuses AS text[]), CAST(:attempt_started AS timestamptz[]),
        CAST(:attempt_finished AS timestamptz[]), CAST(:attempt_durations AS float8[]),
        CAST(:attempt_errors AS text[])
    ) AS r, ok
    WHERE ok.all_matched
    ON CONFLICT (execution_id, step_id, attempt) DO UPDATE SET
        status = EXCLUDED.status, finished_at = EXCLUDED.finished_at,
        duration_seconds = EXCLUDED.duration_seconds, error_type = EXCLUDED.error_type
), released AS (
    DELETE FROM leases
    WHERE execution_id = ANY(CAST(:finished_ids AS text[])) AND (SELECT all_matched FROM ok)
), notified AS (
    SELECT pg_notify('{NOTIFY_CHANNEL}', notice)
    FROM unnest(CAST(:notices AS text[])) AS notice, ok
    WHERE ok.all_matched
)
SELECT (SELECT all_matched FROM ok), (SELECT count(*) FROM notified)
"""
)


async def append_batch(
    connection: AsyncConnection,
    batch: Sequence[Append],
    *,
    owner: str,
    needs_snapshot: Any,
) -> bool:
    """Writes the batch; False (nothing usable written: roll back) if any check failed."""
    parameters = {
        "owner": owner,
        **_execution_columns(batch, needs_snapshot),
        **_event_columns([e for _, events in batch for e in events]),
        **_attempt_columns([e for _, events in batch for e in events]),
        "finished_ids": [state.id for state, _ in batch if state.status.is_terminal],
        "notices": notice_payloads(batch, owner),
    }
    matched, _ = (await connection.execute(_APPEND, parameters)).one()
    return bool(matched)


def _execution_columns(batch: Sequence[Append], needs_snapshot: Any) -> dict[str, list[Any]]:
    snapshots = [needs_snapshot(events) for _, events in batch]
    return {
        "ids": [state.id for state, _ in batch],
        "expected": [events[0].sequence - 1 for _, events in batch],
        "statuses": [state.status.value for state, _ in batch],
        "started": [state.started_at for state, _ in batch],
        "finished": [state.finished_at for state, _ in batch],
        "lasts": [state.last_sequence for state, _ in batch],
        "snapshot_sequences": [
            state.last_sequence if take else None
            for (state, _), take in zip(batch, snapshots, strict=True)
        ],
        "snapshots": [
            dumps(state_snapshot(state)) if take else None
            for (state, _), take in zip(batch, snapshots, strict=True)
        ],
    }


def _event_columns(events: Sequence[ExecutionEvent]) -> dict[str, list[Any]]:
    return {
        "event_executions": [e.execution_id for e in events],
        "event_sequences": [e.sequence for e in events],
        "event_ids": [e.event_id for e in events],
        "event_tenants": [e.tenant for e in events],
        "event_kinds": [e.kind.value for e in events],
        "event_times": [e.timestamp for e in events],
        "event_payloads": [dumps(event_to_json(e)) for e in events],
    }


def _attempt_columns(events: Sequence[ExecutionEvent]) -> dict[str, list[Any]]:
    rows = attempt_rows(events)
    return {
        f"attempt_{column}": [row[key] for row in rows]
        for column, key in (
            ("executions", "execution_id"),
            ("steps", "step_id"),
            ("numbers", "attempt"),
            ("actions", "action"),
            ("statuses", "status"),
            ("started", "started_at"),
            ("finished", "finished_at"),
            ("durations", "duration_seconds"),
            ("errors", "error_type"),
        )
    }

"""A batch of appends on Postgres: one statement, one round trip, its own transaction.

The generic path takes six round trips and builds a SQLAlchemy parameter set per row;
on Postgres the whole batch is one statement of data-modifying CTEs over `unnest`ed
arrays, sent by asyncpg directly (SQLAlchemy's per-statement work and the BEGIN and
COMMIT round trips were a quarter of the engine's CPU in a profile of the benchmark).
A single statement is atomic, so it needs no transaction of its own: it first locks
the batch's execution rows that are at the expected sequence and at the lease epoch the
writer holds (so a writer whose lease was claimed since commits nothing: fencing), and
writes anything only if that is every one of them; otherwise it writes nothing and
reports so, and the caller finds out which check failed.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from typing import Any, NamedTuple

import asyncpg
from sqlalchemy.engine import make_url

from engine_service.core.state import ExecutionEvent, ExecutionState
from engine_service.storage.attempts import attempt_rows
from engine_service.storage.codec import dumps, event_to_json, state_snapshot
from engine_service.storage.notices import NOTIFY_CHANNEL, notice_payloads


class Append(NamedTuple):
    """One `append` call: the events, the state they lead to, the writer's lease epoch."""

    state: ExecutionState
    events: Sequence[ExecutionEvent]
    epoch: int


_APPEND = f"""
WITH v AS (
    SELECT * FROM unnest(
        CAST(:ids AS text[]), CAST(:expected AS bigint[]), CAST(:statuses AS text[]),
        CAST(:started AS timestamptz[]), CAST(:finished AS timestamptz[]),
        CAST(:lasts AS bigint[]), CAST(:snapshot_sequences AS bigint[]),
        CAST(:snapshots AS text[]), CAST(:epochs AS bigint[])
    ) AS v(id, expected, status, started_at, finished_at, last_sequence,
           snapshot_sequence, snapshot, epoch)
), current AS (
    -- Locked until the statement ends; a row changed meanwhile (a claim moved its
    -- epoch) is re-checked.
    SELECT e.id FROM executions AS e JOIN v ON e.id = v.id
    WHERE e.last_sequence = v.expected AND e.lease_epoch = v.epoch
    FOR UPDATE OF e
), ok AS (
    SELECT count(*) = cardinality(CAST(:ids AS text[])) AS all_matched FROM current
), updated AS (
    UPDATE executions AS e SET
        status = v.status, started_at = v.started_at, finished_at = v.finished_at,
        last_sequence = v.last_sequence,
        snapshot_sequence = COALESCE(v.snapshot_sequence, e.snapshot_sequence),
        state = COALESCE(CAST(v.snapshot AS jsonb), e.state)
    FROM v, ok
    WHERE e.id = v.id AND ok.all_matched
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
        (execution_id, step_id, attempt, kind, action, status, started_at, finished_at,
         duration_seconds, error_type)
    SELECT r.* FROM unnest(
        CAST(:attempt_executions AS text[]), CAST(:attempt_steps AS text[]),
        CAST(:attempt_numbers AS integer[]), CAST(:attempt_kinds AS text[]),
        CAST(:attempt_actions AS text[]),
        CAST(:attempt_statuses AS text[]), CAST(:attempt_started AS timestamptz[]),
        CAST(:attempt_finished AS timestamptz[]), CAST(:attempt_durations AS float8[]),
        CAST(:attempt_errors AS text[])
    ) AS r, ok
    WHERE ok.all_matched
    ON CONFLICT (execution_id, step_id, attempt, kind) DO UPDATE SET
        status = EXCLUDED.status, finished_at = EXCLUDED.finished_at,
        duration_seconds = EXCLUDED.duration_seconds, error_type = EXCLUDED.error_type
    WHERE a.status = 'RUNNING'  -- a finished row stays as it ended
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


def _positional(statement: str) -> tuple[str, tuple[str, ...]]:
    """`:name` parameters as asyncpg's `$n`, and the names in `$n` order."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    return re.sub(r"(?<!:):([a-z_]+)", number, statement), tuple(names)


_STATEMENT, _PARAMETERS = _positional(_APPEND)


class PgAppender:
    """Writes batches of appends through its own asyncpg connections, one per lane of
    the group committer (opened on first use, closed by `close`)."""

    def __init__(self, database_url: str, connections: int) -> None:
        url = make_url(database_url).set(drivername="postgresql")
        self._dsn = url.render_as_string(hide_password=False)
        self._connections = connections
        self._pool: asyncpg.Pool | None = None
        self._opening = asyncio.Lock()

    async def write(self, batch: Sequence[Append], *, owner: str, needs_snapshot: Any) -> bool:
        """Writes the batch; False, having written nothing, if any check failed."""
        parameters = batch_parameters(batch, owner=owner, needs_snapshot=needs_snapshot)
        pool = await self._open()
        async with pool.acquire() as connection:
            try:
                matched, _ = await connection.fetchrow(
                    _STATEMENT, *(parameters[name] for name in _PARAMETERS)
                )
            except (asyncpg.InternalClientError, asyncio.CancelledError):
                # The connection is mid-protocol (the server went away, or this call was
                # cancelled half-way): it must not serve another batch.
                connection.terminate()
                raise
        return bool(matched)

    async def _open(self) -> asyncpg.Pool:
        async with self._opening:
            if self._pool is None:
                self._pool = await asyncpg.create_pool(
                    self._dsn, min_size=1, max_size=self._connections
                )
            return self._pool

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None


def batch_parameters(batch: Sequence[Append], *, owner: str, needs_snapshot: Any) -> dict[str, Any]:
    return {
        **_execution_columns(batch, needs_snapshot),
        **_event_columns([e for a in batch for e in a.events]),
        **_attempt_columns([e for a in batch for e in a.events]),
        "finished_ids": [a.state.id for a in batch if a.state.status.is_terminal],
        "notices": notice_payloads([(a.state, a.events) for a in batch], owner),
    }


def _execution_columns(batch: Sequence[Append], needs_snapshot: Any) -> dict[str, list[Any]]:
    snapshots = [needs_snapshot(a.events) for a in batch]
    return {
        "ids": [a.state.id for a in batch],
        "expected": [a.events[0].sequence - 1 for a in batch],
        "statuses": [a.state.status.value for a in batch],
        "started": [a.state.started_at for a in batch],
        "finished": [a.state.finished_at for a in batch],
        "lasts": [a.state.last_sequence for a in batch],
        "snapshot_sequences": [
            a.state.last_sequence if take else None
            for a, take in zip(batch, snapshots, strict=True)
        ],
        "snapshots": [
            dumps(state_snapshot(a.state)) if take else None
            for a, take in zip(batch, snapshots, strict=True)
        ],
        "epochs": [a.epoch for a in batch],
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
            ("kinds", "kind"),
            ("actions", "action"),
            ("statuses", "status"),
            ("started", "started_at"),
            ("finished", "finished_at"),
            ("durations", "duration_seconds"),
            ("errors", "error_type"),
        )
    }

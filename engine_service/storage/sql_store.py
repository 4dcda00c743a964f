"""`ExecutionStore` on SQLAlchemy async: Postgres through asyncpg, SQLite through aiosqlite.

Appends from concurrent executions are grouped into shared transactions (group commit,
see `GroupCommitter`), so throughput is not bound by one fsync per state change.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Select,
    and_,
    bindparam,
    delete,
    func,
    insert,
    or_,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from engine_service.core.definitions import DefinitionLimits, parse_definition
from engine_service.core.errors import ConcurrentModification, LeaseLost, NotFound, StorageError
from engine_service.core.model import WorkflowDefinition
from engine_service.core.state import EventKind, ExecutionEvent, ExecutionState, replay
from engine_service.core.store import (
    FIRST_EPOCH,
    ExecutionQuery,
    ExecutionStore,
    Lease,
    Page,
    WorkflowQuery,
    decode_page_token,
    encode_page_token,
    page_bounds,
)
from engine_service.storage.attempts import KEY, UNFINISHED, attempt_rows
from engine_service.storage.codec import (
    event_from_json,
    event_to_json,
    execution_columns,
    progress_columns,
    snapshot_from_row,
    state_snapshot,
)
from engine_service.storage.command_store import SqlCommandStore
from engine_service.storage.group_commit import GroupCommitter
from engine_service.storage.lease_store import SqlLeaseStore
from engine_service.storage.models import (
    execution_events,
    executions,
    idempotency_keys,
    leases,
    step_attempts,
    workflow_definitions,
)
from engine_service.storage.notices import NOTIFY_CHANNEL, notice_payloads
from engine_service.storage.pg_append import Append, PgAppender
from engine_service.storage.schedule_store import SqlScheduleStore
from engine_service.storage.unavailable import reports_unreachable_database, unreachable

# Stored definitions passed validation when registered; loading them must not fail
# because a limit was lowered since.
_LOADING_LIMITS = DefinitionLimits(
    max_steps=10**9, max_depends_on=10**9, max_definition_bytes=10**12, max_id_length=10**6
)
# Events between snapshots of an execution's state; reads fold at most this many.
SNAPSHOT_EVERY = 64


@reports_unreachable_database
class SqlExecutionStore(SqlLeaseStore, SqlScheduleStore, SqlCommandStore, ExecutionStore):
    def __init__(
        self,
        engine: AsyncEngine,
        *,
        owner: str = "",
        max_batch: int = 512,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        """`owner` names this engine process in the notices of its commits."""
        self._engine = engine
        self._owner = owner
        self._on_close = on_close
        # SQLite has one writer at a time; Postgres flushes concurrent commits together.
        writers = 4 if engine.dialect.name == "postgresql" else 1
        self._appender = (
            PgAppender(engine.url.render_as_string(hide_password=False), writers)
            if engine.dialect.name == "postgresql"
            else None
        )
        self._committer: GroupCommitter[Append] = GroupCommitter(
            self._write_appends, max_batch=max_batch, writers=writers
        )
        self._definitions: dict[tuple[str, str, int], WorkflowDefinition] = {}

    @property
    def engine(self) -> AsyncEngine:
        return self._engine

    @property
    def dialect(self) -> str:
        return self._engine.dialect.name

    async def close(self) -> None:
        await self._committer.close()
        if self._appender is not None:
            await self._appender.close()
        await self._engine.dispose()
        if self._on_close is not None:
            self._on_close()
            self._on_close = None

    # ---- workflows -----------------------------------------------------------------

    async def add_workflow(self, definition: WorkflowDefinition) -> WorkflowDefinition:
        for _ in range(5):
            try:
                return await self._insert_next_version(definition)
            except IntegrityError:
                continue  # another writer took that version number first: take the next
        raise ConcurrentModification(execution_id=definition.id, expected_sequence=0)

    async def _insert_next_version(self, definition: WorkflowDefinition) -> WorkflowDefinition:
        async with self._engine.begin() as connection:
            latest = await connection.scalar(
                select(func.max(workflow_definitions.c.version)).where(
                    workflow_definitions.c.tenant == definition.tenant,
                    workflow_definitions.c.workflow_id == definition.id,
                )
            )
            stored = replace(definition, version=(latest or 0) + 1)
            await connection.execute(
                insert(workflow_definitions).values(
                    tenant=stored.tenant,
                    workflow_id=stored.id,
                    version=stored.version,
                    name=stored.name,
                    labels=dict(stored.labels),
                    definition=dict(stored.source),
                    created_at=datetime.now(UTC),
                )
            )
        self._definitions[(stored.tenant, stored.id, stored.version)] = stored
        return stored

    async def get_workflow(
        self, tenant: str, workflow_id: str, version: int = 0
    ) -> WorkflowDefinition:
        cached = self._definitions.get((tenant, workflow_id, version))
        if cached is not None:
            return cached
        query = select(workflow_definitions).where(
            workflow_definitions.c.tenant == tenant,
            workflow_definitions.c.workflow_id == workflow_id,
        )
        if version > 0:
            query = query.where(workflow_definitions.c.version == version)
        query = query.order_by(workflow_definitions.c.version.desc()).limit(1)
        async with self._engine.connect() as connection:
            row = (await connection.execute(query)).first()
        if row is None:
            key = workflow_id if version == 0 else f"{workflow_id}@{version}"
            raise NotFound(kind="workflow", key=key)
        return self._load_definition(row)

    def _load_definition(self, row: Any) -> WorkflowDefinition:
        key = (row.tenant, row.workflow_id, row.version)
        if key not in self._definitions:
            parsed = parse_definition(
                {**row.definition, "tenant": row.tenant}, limits=_LOADING_LIMITS
            )
            self._definitions[key] = replace(parsed, version=row.version)
        return self._definitions[key]

    async def list_workflows(self, query: WorkflowQuery) -> Page[WorkflowDefinition]:
        """Only the page's definitions are read and parsed. Without labels to match the
        page is cut in SQL; labels (JSON, which the two dialects query differently) are
        matched here, on the labels column alone."""
        table = workflow_definitions
        keys = (table.c.tenant, table.c.workflow_id, table.c.version)
        rows = select(*keys, table.c.labels) if query.labels else select(*keys)
        if query.tenant is not None:
            rows = rows.where(table.c.tenant == query.tenant)
        if not query.all_versions:
            rows = rows.where(table.c.version == _latest_version())
        rows = rows.order_by(*keys)
        offset = decode_page_token(query.page_token)
        size = page_bounds(query.page_size)
        async with self._engine.connect() as connection:
            if query.labels:
                found = [
                    (row.tenant, row.workflow_id, row.version)
                    for row in await connection.execute(rows)
                    if all((row.labels or {}).get(k) == v for k, v in query.labels.items())
                ][offset : offset + size + 1]
            else:
                found = [
                    tuple(row)
                    for row in await connection.execute(rows.offset(offset).limit(size + 1))
                ]
            chosen = found[:size]
            await self._load_definitions(connection, chosen)
        return Page(
            tuple(self._definitions[key] for key in chosen),
            encode_page_token(offset + size) if len(found) > size else "",
        )

    async def _load_definitions(
        self, connection: AsyncConnection, keys: Sequence[tuple[str, str, int]]
    ) -> None:
        """Read and parse the definitions at `keys` not parsed yet; parsing (validation:
        some 20 ms a definition) runs on a worker thread, off the event loop."""
        missing = [key for key in keys if key not in self._definitions]
        if not missing:
            return
        table = workflow_definitions
        wanted = tuple_(table.c.tenant, table.c.workflow_id, table.c.version).in_(missing)
        rows = (await connection.execute(select(table).where(wanted))).all()
        await asyncio.to_thread(lambda: [self._load_definition(row) for row in rows])

    # ---- executions ----------------------------------------------------------------

    async def create_execution(
        self,
        state: ExecutionState,
        events: Sequence[ExecutionEvent],
        *,
        lease: Lease | None = None,
    ) -> tuple[ExecutionState, bool]:
        try:
            async with self._engine.begin() as connection:
                if state.idempotency_key:
                    await connection.execute(
                        insert(idempotency_keys).values(
                            tenant=state.tenant, key=state.idempotency_key, execution_id=state.id
                        )
                    )
                epoch = FIRST_EPOCH if lease is not None else 0
                await connection.execute(
                    insert(executions).values(**execution_columns(state), lease_epoch=epoch)
                )
                if lease is not None:
                    await connection.execute(
                        insert(leases).values(
                            execution_id=state.id,
                            owner=lease.owner,
                            expires_at=lease.expires_at,
                            epoch=epoch,
                        )
                    )
                await _insert_events(connection, events)
                await _record_attempts(connection, self.dialect, events)
                await self._notify(connection, [Append(state, events, 0)])
        except IntegrityError:
            if not state.idempotency_key:
                raise
            return await self._existing_for_key(state.tenant, state.idempotency_key), False
        return state, True

    async def _existing_for_key(self, tenant: str, key: str) -> ExecutionState:
        async with self._engine.connect() as connection:
            execution_id = await connection.scalar(
                select(idempotency_keys.c.execution_id).where(
                    idempotency_keys.c.tenant == tenant, idempotency_keys.c.key == key
                )
            )
        if execution_id is None:
            raise NotFound(kind="idempotency key", key=key)
        return await self.get_execution(execution_id)

    def append(
        self, state: ExecutionState, events: Sequence[ExecutionEvent], *, epoch: int = 0
    ) -> Awaitable[None]:
        # Queued now, not when first awaited: the runner stages writes without awaiting.
        if not events:
            done = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done
        return self._committer.enqueue(Append(state, events, epoch), key=state.id)

    async def _write_appends(self, batch: Sequence[Append]) -> None:
        """One batch of appends, atomically, in a fixed number of round trips."""
        try:
            await self._write_merged(_merged(batch))
        except Exception as exc:
            if unreachable(exc):
                raise StorageError(f"the database is unreachable: {type(exc).__name__}") from exc
            raise

    async def _write_merged(self, batch: Sequence[Append]) -> None:
        if self._appender is not None:
            if not await self._appender.write(
                batch, owner=self._owner, needs_snapshot=_needs_snapshot
            ):
                async with self._engine.begin() as connection:
                    await self._check_sequences(connection, batch)  # raises the precise error
                raise ConcurrentModification(execution_id=batch[0][0].id, expected_sequence=-1)
            return
        async with self._engine.begin() as connection:
            await self._write_stepwise(connection, batch)

    async def _write_stepwise(self, connection: AsyncConnection, batch: Sequence[Append]) -> None:
        await self._check_sequences(connection, batch)
        progress = [{"b_id": state.id, **progress_columns(state)} for state, _, _ in batch]
        await connection.execute(_UPDATE_PROGRESS, progress)
        snapshots = [
            {
                "b_id": state.id,
                "snapshot_sequence": state.last_sequence,
                "state": state_snapshot(state),
            }
            for state, events, _ in batch
            if _needs_snapshot(events)
        ]
        if snapshots:
            await connection.execute(_UPDATE_SNAPSHOT, snapshots)
        all_events = [event for _, events, _ in batch for event in events]
        await _insert_events(connection, all_events)
        await _record_attempts(connection, self.dialect, all_events)
        finished = [state.id for state, _, _ in batch if state.status.is_terminal]
        if finished:
            await connection.execute(delete(leases).where(leases.c.execution_id.in_(finished)))
        await self._notify(connection, batch)

    async def _notify(self, connection: AsyncConnection, batch: Sequence[Append]) -> None:
        """Wake tailing readers in other engine processes (delivered on commit)."""
        if self.dialect != "postgresql":
            return
        payloads = notice_payloads([(a.state, a.events) for a in batch], self._owner)
        await connection.execute(_NOTIFY, {"payloads": payloads})

    async def _check_sequences(self, connection: AsyncConnection, batch: Sequence[Append]) -> None:
        """Lock the batch's executions and refuse any append from a stale lease epoch or
        a stale sequence."""
        expected: dict[str, int] = {}
        for state, events, _ in batch:
            if state.id in expected:  # two appends of one execution in one batch
                expected[state.id] = min(expected[state.id], events[0].sequence - 1)
            else:
                expected[state.id] = events[0].sequence - 1
        locked = (
            select(
                executions.c.id,
                executions.c.last_sequence,
                executions.c.lease_epoch,
                leases.c.owner,
            )
            .outerjoin(leases, leases.c.execution_id == executions.c.id)
            .where(executions.c.id.in_(sorted(expected)))
        )
        if self.dialect == "postgresql":
            locked = locked.with_for_update(of=executions)
        rows = {row.id: row for row in await connection.execute(locked)}
        for state, _, epoch in batch:
            row = rows.get(state.id)
            if row is not None and row.lease_epoch != epoch:
                raise LeaseLost(execution_id=state.id, owner=row.owner or "")
        for execution_id, sequence in expected.items():
            row = rows.get(execution_id)
            if row is None or row.last_sequence != sequence:
                raise ConcurrentModification(execution_id=execution_id, expected_sequence=sequence)

    async def get_execution(self, execution_id: str) -> ExecutionState:
        states = await self._load(executions.c.id == execution_id)
        if not states:
            raise NotFound(kind="execution", key=execution_id)
        return states[0]

    async def list_executions(self, query: ExecutionQuery) -> Page[ExecutionState]:
        offset = decode_page_token(query.page_token)
        size = page_bounds(query.page_size)
        ids = (
            _filtered(select(executions.c.id), query)
            .order_by(executions.c.created_at.desc(), executions.c.id.desc())
            .offset(offset)
            .limit(size + 1)
        )
        async with self._engine.connect() as connection:
            page_ids = list(await connection.scalars(ids))
        by_id = {s.id: s for s in await self._load(executions.c.id.in_(page_ids[:size]))}
        states = tuple(by_id[i] for i in page_ids[:size])
        return Page(states, encode_page_token(offset + size) if len(page_ids) > size else "")

    async def _load(self, where: Any) -> list[ExecutionState]:
        """Executions matching `where`: each snapshot with its later events folded in.

        The events are bounded by each row's own snapshot and last sequence as read, so
        appends committing between the two queries cannot tear the result.
        """
        async with self._engine.connect() as connection:
            rows = (await connection.execute(select(executions).where(where))).mappings().all()
            behind = [r for r in rows if r["last_sequence"] > r["snapshot_sequence"]]
            pending: dict[str, list[ExecutionEvent]] = {}
            if behind:
                tail = (
                    select(execution_events.c.execution_id, execution_events.c.payload)
                    .where(or_(*(_events_after_snapshot(r) for r in behind)))
                    .order_by(execution_events.c.execution_id, execution_events.c.sequence)
                )
                for execution_id, payload in await connection.execute(tail):
                    pending.setdefault(execution_id, []).append(event_from_json(payload))
        return [replay(snapshot_from_row(r), pending.get(r["id"], [])) for r in rows]

    async def read_events(
        self, execution_id: str, after_sequence: int = 0, limit: int = 0
    ) -> list[ExecutionEvent]:
        statement = (
            select(execution_events.c.payload)
            .where(
                execution_events.c.execution_id == execution_id,
                execution_events.c.sequence > after_sequence,
            )
            .order_by(execution_events.c.sequence)
        )
        if limit > 0:
            statement = statement.limit(limit)
        async with self._engine.connect() as connection:
            payloads = list(await connection.scalars(statement))
            if not payloads:
                exists = await connection.scalar(
                    select(func.count()).where(executions.c.id == execution_id)
                )
                if not exists:
                    raise NotFound(kind="execution", key=execution_id)
        return [event_from_json(p) for p in payloads]

    async def unfinished_executions(self) -> list[ExecutionState]:
        states = await self._load(executions.c.finished_at.is_(None))
        states.sort(key=lambda s: (s.created_at, s.id))
        return [s for s in states if not s.status.is_terminal]


_UPDATE_PROGRESS = (
    update(executions)
    .where(executions.c.id == bindparam("b_id"))
    .values(
        status=bindparam("status"),
        started_at=bindparam("started_at"),
        finished_at=bindparam("finished_at"),
        last_sequence=bindparam("last_sequence"),
    )
)
_UPDATE_SNAPSHOT = (
    update(executions)
    .where(executions.c.id == bindparam("b_id"))
    .values(snapshot_sequence=bindparam("snapshot_sequence"), state=bindparam("state"))
)


_NOTIFY = text(
    f"SELECT pg_notify('{NOTIFY_CHANNEL}', payload) FROM unnest(CAST(:payloads AS text[])) "
    "AS payload"
)


def _merged(batch: Sequence[Append]) -> list[Append]:
    """One append per execution and epoch: consecutive appends of one execution are
    contiguous. (Appends of one execution at two epochs cannot both be right: the batch
    fails, and each is tried alone.)"""
    merged: dict[tuple[str, int], Append] = {}
    for state, events, epoch in batch:
        earlier = merged.get((state.id, epoch))
        combined = [*earlier.events, *events] if earlier else list(events)
        merged[(state.id, epoch)] = Append(state, combined, epoch)
    return list(merged.values())


def _events_after_snapshot(row: Any) -> Any:
    return and_(
        execution_events.c.execution_id == row["id"],
        execution_events.c.sequence > row["snapshot_sequence"],
        execution_events.c.sequence <= row["last_sequence"],
    )


def _needs_snapshot(events: Sequence[ExecutionEvent]) -> bool:
    """Snapshot on execution status changes and every SNAPSHOT_EVERY events."""
    if any(e.kind is EventKind.EXECUTION_STATUS_CHANGED for e in events):
        return True
    return events[-1].sequence // SNAPSHOT_EVERY != (events[0].sequence - 1) // SNAPSHOT_EVERY


def _latest_version() -> Any:
    latest = workflow_definitions.alias("latest")
    return (
        select(func.max(latest.c.version))
        .where(
            latest.c.tenant == workflow_definitions.c.tenant,
            latest.c.workflow_id == workflow_definitions.c.workflow_id,
        )
        .scalar_subquery()
    )


def _filtered(statement: Select[Any], query: ExecutionQuery) -> Select[Any]:
    conditions = []
    if query.tenant is not None:
        conditions.append(executions.c.tenant == query.tenant)
    if query.workflow_id:
        conditions.append(executions.c.workflow_id == query.workflow_id)
    if query.statuses:
        conditions.append(executions.c.status.in_(sorted(s.value for s in query.statuses)))
    if query.created_after is not None:
        conditions.append(executions.c.created_at >= query.created_after)
    if query.created_before is not None:
        conditions.append(executions.c.created_at < query.created_before)
    if query.parent_execution_id:
        conditions.append(executions.c.parent_execution_id == query.parent_execution_id)
    return statement.where(and_(*conditions)) if conditions else statement


async def _insert_events(connection: AsyncConnection, events: Sequence[ExecutionEvent]) -> None:
    if not events:
        return
    await connection.execute(
        insert(execution_events),
        [
            {
                "execution_id": e.execution_id,
                "sequence": e.sequence,
                "event_id": e.event_id,
                "tenant": e.tenant,
                "kind": e.kind.value,
                "created_at": e.timestamp,
                "payload": event_to_json(e),
                "delivered_at": None,
            }
            for e in events
        ],
    )


async def _record_attempts(
    connection: AsyncConnection, dialect: str, events: Sequence[ExecutionEvent]
) -> None:
    """Keep `step_attempts` in step with the step events (see `storage.attempts`)."""
    rows = attempt_rows(events)
    if rows:
        statement = _upsert(dialect)(step_attempts)
        statement = statement.on_conflict_do_update(
            index_elements=list(KEY),
            set_={
                "status": statement.excluded.status,
                "finished_at": statement.excluded.finished_at,
                "duration_seconds": statement.excluded.duration_seconds,
                "error_type": statement.excluded.error_type,
            },
            where=step_attempts.c.status == UNFINISHED,  # a finished row stays as it ended
        )
        await connection.execute(statement, rows)


@functools.cache
def _upsert(dialect: str) -> Any:
    return postgresql.insert if dialect == "postgresql" else sqlite.insert

"""The lease half of `SqlExecutionStore`: claiming executions and renewing leases.

An execution's lease epoch is kept twice, each where the statement that checks it locks:
`executions.lease_epoch` fences appends (the append locks the execution row, and a
Postgres row lock re-reads that row, not the others, when it had to wait), and
`leases.epoch` fences renewals (which lock the lease row). A claim moves both, in one
transaction.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import or_, select, text, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from engine_service.core.state import ExecutionState
from engine_service.core.store import Claim, Lease
from engine_service.storage.models import executions, leases

# Leases renewed per statement on SQLite: two parameters each, well under the 32766 a
# statement may bind, however many executions a process drives. Postgres takes them all
# in two arrays (a long `IN` list of pairs is slow to plan and, past ~10,000, refused).
RENEWALS_PER_STATEMENT = 1000
_RENEW = text(
    "UPDATE leases AS l SET expires_at = :expires_at "
    "FROM unnest(CAST(:ids AS text[]), CAST(:epochs AS bigint[])) AS h(execution_id, epoch) "
    "WHERE l.execution_id = h.execution_id AND l.epoch = h.epoch AND l.owner = :owner "
    "RETURNING l.execution_id"
)


class SqlLeaseStore:
    """Mixed into `SqlExecutionStore`; uses its engine and its `_load`."""

    _engine: AsyncEngine

    async def _load(self, where: Any) -> list[ExecutionState]:
        raise NotImplementedError  # pragma: no cover - SqlExecutionStore's

    async def claim_executions(
        self, lease: Lease, *, now: datetime, limit: int, take_over: bool = False
    ) -> list[Claim]:
        async with self._engine.begin() as connection:
            epochs = await self._claim(connection, lease, now=now, limit=limit, take_over=take_over)
        if not epochs:
            return []
        states = await self._load(executions.c.id.in_(sorted(epochs)))
        states.sort(key=lambda s: (s.created_at, s.id))
        return [Claim(s, epochs[s.id]) for s in states if not s.status.is_terminal]

    async def _claim(
        self,
        connection: AsyncConnection,
        lease: Lease,
        *,
        now: datetime,
        limit: int,
        take_over: bool,
    ) -> dict[str, int]:
        """Lease the candidates at their next epoch; the epochs of those it got."""
        candidates = (
            select(executions.c.id, executions.c.lease_epoch)
            .outerjoin(leases, leases.c.execution_id == executions.c.id)
            .where(executions.c.finished_at.is_(None))
            .order_by(executions.c.created_at, executions.c.id)
            .limit(limit)
        )
        if not take_over:
            candidates = candidates.where(
                or_(leases.c.execution_id.is_(None), leases.c.expires_at < now)
            )
        dialect = self._engine.dialect.name
        if dialect == "postgresql":
            # Replicas claiming at once skip each other's rows instead of waiting.
            candidates = candidates.with_for_update(of=executions, skip_locked=True)
        found = {row.id: row.lease_epoch + 1 for row in await connection.execute(candidates)}
        if not found:
            return {}
        insert = _upsert(dialect)(leases).values(
            [
                {
                    "execution_id": i,
                    "owner": lease.owner,
                    "expires_at": lease.expires_at,
                    "epoch": e,
                }
                for i, e in found.items()
            ]
        )
        # The expiry read above may be stale (a renewal may have committed since): the
        # lease row, locked now, is checked again, and a lease renewed meanwhile stays.
        statement = insert.on_conflict_do_update(
            index_elements=["execution_id"],
            set_={
                "owner": insert.excluded.owner,
                "expires_at": insert.excluded.expires_at,
                "epoch": insert.excluded.epoch,
            },
            where=None if take_over else leases.c.expires_at < now,
        ).returning(leases.c.execution_id)
        claimed = sorted(await connection.scalars(statement))
        if claimed:
            await connection.execute(
                update(executions)
                .where(executions.c.id.in_(claimed))
                .values(lease_epoch=executions.c.lease_epoch + 1)
            )
        return {i: found[i] for i in claimed}

    async def renew_leases(self, lease: Lease, held: Mapping[str, int]) -> set[str]:
        pairs = sorted(held.items())
        if not pairs:
            return set()
        async with self._engine.begin() as connection:
            if self._engine.dialect.name == "postgresql":
                renewed = await connection.execute(
                    _RENEW,
                    {
                        "expires_at": lease.expires_at,
                        "owner": lease.owner,
                        "ids": [i for i, _ in pairs],
                        "epochs": [e for _, e in pairs],
                    },
                )
                return set(renewed.scalars())
            return await _renew_in_chunks(connection, lease, pairs)


async def _renew_in_chunks(
    connection: AsyncConnection, lease: Lease, pairs: list[tuple[str, int]]
) -> set[str]:
    kept: set[str] = set()
    for start in range(0, len(pairs), RENEWALS_PER_STATEMENT):
        chunk = pairs[start : start + RENEWALS_PER_STATEMENT]
        renewed = await connection.execute(
            update(leases)
            .where(
                leases.c.owner == lease.owner,
                tuple_(leases.c.execution_id, leases.c.epoch).in_(chunk),
            )
            .values(expires_at=lease.expires_at)
            .returning(leases.c.execution_id)
        )
        kept.update(renewed.scalars())
    return kept


@functools.cache
def _upsert(dialect: str) -> Any:
    return postgresql.insert if dialect == "postgresql" else sqlite.insert

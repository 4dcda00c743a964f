"""Set-based writes for both dialects: a batch is a few multi-row statements, not a loop.

Rows go out as multi-row `INSERT ... VALUES ... ON CONFLICT`, in chunks that stay under
the drivers' bind-parameter limits (32767 for asyncpg and SQLite).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import ColumnElement, Table, func
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

MAX_BIND_PARAMETERS = 30_000


class Merge(enum.Enum):
    """How an upsert combines the stored value with the incoming one."""

    ADD = "add"
    LEAST = "least"
    GREATEST = "greatest"


Row = Mapping[str, Any]


def _chunks(rows: Sequence[Row], width: int) -> list[Sequence[Row]]:
    size = max(MAX_BIND_PARAMETERS // max(width, 1), 1)
    return [rows[i : i + size] for i in range(0, len(rows), size)]


def dialect_name(session: AsyncSession) -> str:
    return session.get_bind().dialect.name


def _insert(session: AsyncSession, table: Table) -> Any:
    if dialect_name(session) == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def _merged(dialect: str, merge: Merge, stored: Any, incoming: Any) -> ColumnElement[Any]:
    if merge is Merge.ADD:
        return stored + incoming  # type: ignore[no-any-return]
    # Two-argument min/max are SQLite's scalar functions; Postgres names them least/greatest.
    if merge is Merge.LEAST:
        return (
            func.least(stored, incoming) if dialect == "postgresql" else func.min(stored, incoming)
        )
    return (
        func.greatest(stored, incoming) if dialect == "postgresql" else func.max(stored, incoming)
    )


async def insert_new(
    session: AsyncSession, table: Table, rows: Sequence[Row], returning: Sequence[str]
) -> list[tuple[Any, ...]]:
    """Insert the rows whose primary key is new; return `returning` of those inserted."""
    inserted: list[tuple[Any, ...]] = []
    if not rows:
        return inserted
    for chunk in _chunks(rows, len(rows[0])):
        statement = (
            _insert(session, table)
            .values(list(chunk))
            .on_conflict_do_nothing()
            .returning(*(table.c[name] for name in returning))
        )
        result = await session.execute(statement)
        inserted.extend(tuple(row) for row in result.all())
    return inserted


async def upsert(
    session: AsyncSession, table: Table, rows: Sequence[Row], merges: Mapping[str, Merge]
) -> None:
    """Insert the rows, or merge them into the stored rows with the same primary key.

    The caller passes one row per key and rows sorted by key, so that concurrent batches
    lock rows in the same order and cannot deadlock.
    """
    if not rows:
        return
    dialect = dialect_name(session)
    keys = [column.name for column in table.primary_key.columns]
    for chunk in _chunks(rows, len(rows[0])):
        statement = _insert(session, table).values(list(chunk))
        changes = {
            name: _merged(dialect, merge, table.c[name], statement.excluded[name])
            for name, merge in merges.items()
        }
        await session.execute(statement.on_conflict_do_update(index_elements=keys, set_=changes))

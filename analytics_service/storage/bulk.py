"""Set-based writes for both dialects: a batch is a few multi-row statements, not a loop.

On Postgres each column travels as one array parameter and the rows come out of
`unnest(...)`: `INSERT ... SELECT * FROM unnest(...) ON CONFLICT ...`. The SQL text is the
same for every batch size, so the driver's prepared statement is reused. On SQLite rows go
out as multi-row `INSERT ... VALUES ... ON CONFLICT`, in chunks under its bind limit.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import ColumnElement, Table, func, text
from sqlalchemy.dialects import sqlite
from sqlalchemy.ext.asyncio import AsyncSession

MAX_BIND_PARAMETERS = 30_000


class Merge(enum.Enum):
    """How an upsert combines the stored value with the incoming one."""

    ADD = "add"
    LEAST = "least"
    GREATEST = "greatest"
    # The incoming value: the caller merged it with the stored one already.
    REPLACE = "replace"


# Column name -> one value per row: the shape Postgres' arrays want, built without a dict
# per row. Every table column must be present.
Columns = Mapping[str, Sequence[Any]]


def _length(columns: Columns) -> int:
    return len(next(iter(columns.values()), ()))


def _row_chunks(columns: Columns) -> list[list[dict[str, Any]]]:
    names = list(columns)
    rows = [dict(zip(names, values, strict=True)) for values in zip(*columns.values(), strict=True)]
    size = max(MAX_BIND_PARAMETERS // max(len(names), 1), 1)
    return [rows[i : i + size] for i in range(0, len(rows), size)]


def dialect_name(session: AsyncSession) -> str:
    return session.get_bind().dialect.name


def _merged(merge: Merge, stored: Any, incoming: Any) -> ColumnElement[Any]:
    """SQLite's merge expressions: its two-argument min/max are scalar functions."""
    if merge is Merge.ADD:
        return stored + incoming  # type: ignore[no-any-return]
    if merge is Merge.REPLACE:
        return incoming  # type: ignore[no-any-return]
    if merge is Merge.LEAST:
        return func.min(stored, incoming)
    return func.max(stored, incoming)


async def insert_new(
    session: AsyncSession, table: Table, columns: Columns, returning: Sequence[str]
) -> list[tuple[Any, ...]]:
    """Insert the rows whose primary key is new; return `returning` of those inserted."""
    if not _length(columns):
        return []
    if dialect_name(session) == "postgresql":
        sql = (
            f"{_unnest_insert(session, table)} "
            f"ON CONFLICT DO NOTHING RETURNING {', '.join(returning)}"
        )
        result = await session.execute(text(sql), _arrays(table, columns))
        return [tuple(row) for row in result.all()]
    inserted: list[tuple[Any, ...]] = []
    for chunk in _row_chunks(columns):
        statement = (
            sqlite.insert(table)
            .values(chunk)
            .on_conflict_do_nothing()
            .returning(*(table.c[name] for name in returning))
        )
        result = await session.execute(statement)
        inserted.extend(tuple(row) for row in result.all())
    return inserted


async def upsert(
    session: AsyncSession, table: Table, columns: Columns, merges: Mapping[str, Merge]
) -> None:
    """Insert the rows, or merge them into the stored rows with the same primary key.

    The caller passes one row per key and rows sorted by key, so that concurrent batches
    lock rows in the same order and cannot deadlock.
    """
    if not _length(columns):
        return
    keys = [column.name for column in table.primary_key.columns]
    if dialect_name(session) == "postgresql":
        changes = ", ".join(
            f"{name} = {_sql_merge(merge, f'{table.name}.{name}', f'EXCLUDED.{name}')}"
            for name, merge in merges.items()
        )
        sql = (
            f"{_unnest_insert(session, table)} "
            f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {changes}"
        )
        await session.execute(text(sql), _arrays(table, columns))
        return
    for chunk in _row_chunks(columns):
        statement = sqlite.insert(table).values(chunk)
        sqlite_changes = {
            name: _merged(merge, table.c[name], statement.excluded[name])
            for name, merge in merges.items()
        }
        await session.execute(
            statement.on_conflict_do_update(index_elements=keys, set_=sqlite_changes)
        )


def _arrays(table: Table, columns: Columns) -> dict[str, list[Any]]:
    return {column.name: list(columns[column.name]) for column in table.columns}


def _unnest_insert(session: AsyncSession, table: Table) -> str:
    """INSERT of every column of `table` from one array parameter per column."""
    dialect = session.get_bind().dialect
    names = [column.name for column in table.columns]
    arrays = ", ".join(
        f"CAST(:{column.name} AS {column.type.compile(dialect=dialect)}[])"
        for column in table.columns
    )
    return f"INSERT INTO {table.name} ({', '.join(names)}) SELECT * FROM unnest({arrays})"


def _sql_merge(merge: Merge, stored: str, incoming: str) -> str:
    if merge is Merge.ADD:
        return f"{stored} + {incoming}"
    if merge is Merge.REPLACE:
        return incoming
    function = "LEAST" if merge is Merge.LEAST else "GREATEST"
    return f"{function}({stored}, {incoming})"

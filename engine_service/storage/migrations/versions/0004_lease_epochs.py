"""Lease epochs: every claim of an execution numbers its holder, and appends are fenced
by it. And `step_attempts.kind`: fallbacks and compensations get rows of their own.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_ATTEMPT_KEY = ["execution_id", "step_id", "attempt"]
# Postgres' name for the key 0001 created; SQLite's key has none.
_PKEY = "step_attempts_pkey"
Timestamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    # Leases taken before epochs existed are all at epoch 0 on both sides: the next
    # claim moves them to 1, as if they had never been claimed.
    op.add_column(
        "executions",
        sa.Column("lease_epoch", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
    )
    op.add_column(
        "leases", sa.Column("epoch", sa.BigInteger(), nullable=False, server_default=sa.text("0"))
    )
    # Rows so far are attempts (some overwritten by a fallback or compensation, which
    # cannot be told apart any more).
    _rekey_attempts([*_ATTEMPT_KEY, "kind"], add=_kind())


def downgrade() -> None:
    op.execute("DELETE FROM step_attempts WHERE kind <> 'ATTEMPT'")
    _rekey_attempts(_ATTEMPT_KEY, drop="kind")
    with op.batch_alter_table("leases") as batch:
        batch.drop_column("epoch")
    with op.batch_alter_table("executions") as batch:
        batch.drop_column("lease_epoch")


def _rekey_attempts(key: list[str], *, add: sa.Column[str] | None = None, drop: str = "") -> None:
    """Give `step_attempts` the primary key `key`, adding or dropping a column."""
    if op.get_bind().dialect.name == "sqlite":
        _rebuild_attempts(key, with_kind=add is not None)
        return
    op.drop_constraint(_PKEY, "step_attempts", type_="primary")
    if add is not None:
        op.add_column("step_attempts", add)
    if drop:
        op.drop_column("step_attempts", drop)
    op.create_primary_key(_PKEY, "step_attempts", key)


def _rebuild_attempts(key: list[str], *, with_kind: bool) -> None:
    """SQLite alters no primary key: a new table, the rows copied over, renamed."""
    columns: list[sa.Column[Any]] = [
        sa.Column("execution_id", sa.String(36), primary_key=True),
        sa.Column("step_id", sa.String(128), primary_key=True),
        sa.Column("attempt", sa.Integer(), primary_key=True),
        sa.Column("action", sa.String(128), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("started_at", Timestamp, nullable=True),
        sa.Column("finished_at", Timestamp, nullable=True),
        sa.Column("duration_seconds", sa.Float(), nullable=True),
        sa.Column("error_type", sa.String(256), nullable=False),
    ]
    copied = ", ".join(c.name for c in columns)
    if with_kind:
        columns.insert(3, _kind())
    for column in columns:
        column.primary_key = column.name in key
    op.create_table("step_attempts_rebuilt", *columns)
    op.execute(f"INSERT INTO step_attempts_rebuilt ({copied}) SELECT {copied} FROM step_attempts")
    op.drop_table("step_attempts")
    op.rename_table("step_attempts_rebuilt", "step_attempts")


def _kind() -> sa.Column[str]:
    return sa.Column("kind", sa.String(16), nullable=False, server_default=sa.text("'ATTEMPT'"))

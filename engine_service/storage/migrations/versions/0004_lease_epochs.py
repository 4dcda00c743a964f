"""Lease epochs: every claim of an execution numbers its holder, and appends are fenced by it.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


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


def downgrade() -> None:
    with op.batch_alter_table("leases") as batch:
        batch.drop_column("epoch")
    with op.batch_alter_table("executions") as batch:
        batch.drop_column("lease_epoch")

"""Commands for the process that drives an execution (cancel, pause, resume).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
Timestamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "execution_commands",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("execution_id", sa.String(36), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("requested_at", Timestamp, nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("inputs", Json, nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
    )
    op.create_index(
        "ix_execution_commands_pending",
        "execution_commands",
        ["requested_at"],
        postgresql_where=sa.text("outcome = 'PENDING'"),
        sqlite_where=sa.text("outcome = 'PENDING'"),
    )


def downgrade() -> None:
    op.drop_index("ix_execution_commands_pending", table_name="execution_commands")
    op.drop_table("execution_commands")

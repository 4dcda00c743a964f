"""Cron schedules, and an index to find the executions a schedule started.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
Timestamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "schedules",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("workflow_id", sa.String(128), nullable=False),
        sa.Column("workflow_version", sa.Integer(), nullable=False),
        sa.Column("cron", sa.String(256), nullable=False),
        sa.Column("time_zone", sa.String(64), nullable=False),
        sa.Column("inputs", Json, nullable=False),
        sa.Column("overlap_policy", sa.String(32), nullable=False),
        sa.Column("missed_run_policy", sa.String(32), nullable=False),
        sa.Column("paused", sa.Boolean(), nullable=False),
        sa.Column("next_run_at", Timestamp, nullable=True),
        sa.Column("last_run_at", Timestamp, nullable=True),
        sa.Column("last_execution_id", sa.String(36), nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("claimed_by", sa.String(128), nullable=False),
        sa.Column("claim_expires_at", Timestamp, nullable=True),
    )
    op.create_index("ix_schedules_tenant_created", "schedules", ["tenant", "created_at"])
    op.create_index("ix_schedules_next_run", "schedules", ["next_run_at"])
    op.create_index(
        "ix_executions_schedule",
        "executions",
        ["schedule_id"],
        postgresql_where=sa.text("schedule_id <> ''"),
        sqlite_where=sa.text("schedule_id <> ''"),
    )


def downgrade() -> None:
    op.drop_index("ix_executions_schedule", table_name="executions")
    op.drop_index("ix_schedules_next_run", table_name="schedules")
    op.drop_index("ix_schedules_tenant_created", table_name="schedules")
    op.drop_table("schedules")

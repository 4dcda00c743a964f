"""The engine's first schema: definitions, executions, attempts, events, keys, leases.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
Timestamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "workflow_definitions",
        sa.Column("tenant", sa.String(128), primary_key=True),
        sa.Column("workflow_id", sa.String(128), primary_key=True),
        sa.Column("version", sa.Integer(), primary_key=True),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("labels", Json, nullable=False),
        sa.Column("definition", Json, nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
    )
    op.create_table(
        "executions",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("workflow_id", sa.String(128), nullable=False),
        sa.Column("workflow_version", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("started_at", Timestamp, nullable=True),
        sa.Column("finished_at", Timestamp, nullable=True),
        sa.Column("parent_execution_id", sa.String(36), nullable=False),
        sa.Column("parent_step_id", sa.String(128), nullable=False),
        sa.Column("idempotency_key", sa.String(256), nullable=False),
        sa.Column("schedule_id", sa.String(64), nullable=False),
        sa.Column("depth", sa.Integer(), nullable=False),
        sa.Column("last_sequence", sa.BigInteger(), nullable=False),
        sa.Column("snapshot_sequence", sa.BigInteger(), nullable=False),
        sa.Column("state", Json, nullable=False),
    )
    op.create_index("ix_executions_tenant_created", "executions", ["tenant", "created_at"])
    op.create_index("ix_executions_status", "executions", ["status"])
    op.create_index("ix_executions_parent", "executions", ["parent_execution_id"])
    op.create_table(
        "idempotency_keys",
        sa.Column("tenant", sa.String(128), primary_key=True),
        sa.Column("key", sa.String(256), primary_key=True),
        sa.Column("execution_id", sa.String(36), nullable=False),
    )
    op.create_table(
        "step_attempts",
        sa.Column("execution_id", sa.String(36), primary_key=True),
        sa.Column("step_id", sa.String(128), primary_key=True),
        sa.Column("attempt", sa.Integer(), primary_key=True),
        sa.Column("action", sa.String(128), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("started_at", Timestamp, nullable=True),
        sa.Column("finished_at", Timestamp, nullable=True),
        sa.Column("duration_seconds", sa.Float(), nullable=True),
        sa.Column("error_type", sa.String(256), nullable=False),
    )
    op.create_table(
        "execution_events",
        sa.Column("execution_id", sa.String(36), primary_key=True),
        sa.Column("sequence", sa.BigInteger(), primary_key=True),
        sa.Column("event_id", sa.String(36), nullable=False, unique=True),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("payload", Json, nullable=False),
        sa.Column("delivered_at", Timestamp, nullable=True),
    )
    op.create_index(
        "ix_execution_events_undelivered",
        "execution_events",
        ["created_at"],
        postgresql_where=sa.text("delivered_at IS NULL"),
        sqlite_where=sa.text("delivered_at IS NULL"),
    )
    op.create_table(
        "leases",
        sa.Column("execution_id", sa.String(36), primary_key=True),
        sa.Column("owner", sa.String(128), nullable=False),
        sa.Column("expires_at", Timestamp, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("leases")
    op.drop_index("ix_execution_events_undelivered", table_name="execution_events")
    op.drop_table("execution_events")
    op.drop_table("step_attempts")
    op.drop_table("idempotency_keys")
    op.drop_index("ix_executions_parent", table_name="executions")
    op.drop_index("ix_executions_status", table_name="executions")
    op.drop_index("ix_executions_tenant_created", table_name="executions")
    op.drop_table("executions")
    op.drop_table("workflow_definitions")

"""Facts, minute rollups with log-bucket histograms, ingest lag, alert rules.

Timestamps are timestamptz on Postgres and naive UTC text on SQLite (see storage.types).

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "alert_events",
        sa.Column("id", sa.String(length=128), nullable=False),
        sa.Column("rule_id", sa.String(length=128), nullable=False),
        sa.Column("tenant", sa.String(length=128), nullable=False),
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.Column("value", sa.Double(), nullable=False),
        sa.Column("threshold", sa.Double(), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_alert_events_rule_occurred", "alert_events", ["rule_id", "occurred_at"], unique=False
    )
    op.create_table(
        "alert_rules",
        sa.Column("id", sa.String(length=128), nullable=False),
        sa.Column("tenant", sa.String(length=128), nullable=False),
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("workflow_id", sa.String(length=256), nullable=False),
        sa.Column("step_id", sa.String(length=256), nullable=False),
        sa.Column("metric", sa.String(length=32), nullable=False),
        sa.Column("comparator", sa.String(length=32), nullable=False),
        sa.Column("threshold", sa.Double(), nullable=False),
        sa.Column("window_seconds", sa.Double(), nullable=False),
        sa.Column("webhook_url", sa.Text(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_alert_rules_tenant_workflow", "alert_rules", ["tenant", "workflow_id"], unique=False
    )
    op.create_table(
        "execution_facts",
        sa.Column("execution_id", sa.String(length=128), nullable=False),
        sa.Column("tenant", sa.String(length=128), nullable=False),
        sa.Column("workflow_id", sa.String(length=256), nullable=False),
        sa.Column("workflow_version", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("error_type", sa.String(length=256), nullable=False),
        sa.Column("error_message", sa.Text(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("duration_seconds", sa.Double(), nullable=False),
        sa.Column("estimated_time_saved_seconds", sa.Double(), nullable=False),
        sa.Column("business_value", sa.Double(), nullable=False),
        sa.Column("parent_execution_id", sa.String(length=128), nullable=False),
        sa.Column("event_id", sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint("execution_id"),
    )
    op.create_index(
        "ix_execution_facts_tenant_finished",
        "execution_facts",
        ["tenant", "finished_at"],
        unique=False,
    )
    op.create_index(
        "ix_execution_facts_tenant_workflow_finished",
        "execution_facts",
        ["tenant", "workflow_id", "finished_at"],
        unique=False,
    )
    op.create_table(
        "ingest_lag",
        sa.Column("tenant", sa.String(length=128), nullable=False),
        sa.Column("workflow_id", sa.String(length=256), nullable=False),
        sa.Column("minute", sa.BigInteger(), nullable=False),
        sa.Column("events", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("lag_sum", sa.Double(), server_default="0", nullable=False),
        sa.Column("lag_max", sa.Double(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("tenant", "workflow_id", "minute"),
    )
    op.create_table(
        "ingested_events",
        sa.Column("event_id", sa.String(length=128), nullable=False),
        sa.Column("tenant", sa.String(length=128), nullable=False),
        sa.Column("workflow_id", sa.String(length=256), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ingested_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("event_id"),
    )
    op.create_index(
        "ix_ingested_events_occurred_at", "ingested_events", ["occurred_at"], unique=False
    )
    op.create_table(
        "rollup_errors",
        sa.Column("tenant", sa.String(length=128), nullable=False),
        sa.Column("workflow_id", sa.String(length=256), nullable=False),
        sa.Column("step_id", sa.String(length=256), nullable=False),
        sa.Column("resolution", sa.Integer(), nullable=False),
        sa.Column("minute", sa.BigInteger(), nullable=False),
        sa.Column("error_type", sa.String(length=256), nullable=False),
        sa.Column("count", sa.BigInteger(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint(
            "tenant", "workflow_id", "step_id", "resolution", "minute", "error_type"
        ),
    )
    op.create_index(
        "ix_rollup_errors_time",
        "rollup_errors",
        ["tenant", "resolution", "minute", "workflow_id"],
        unique=False,
    )
    op.create_table(
        "rollup_histograms",
        sa.Column("tenant", sa.String(length=128), nullable=False),
        sa.Column("workflow_id", sa.String(length=256), nullable=False),
        sa.Column("step_id", sa.String(length=256), nullable=False),
        sa.Column("resolution", sa.Integer(), nullable=False),
        sa.Column("minute", sa.BigInteger(), nullable=False),
        sa.Column("bucket", sa.Integer(), nullable=False),
        sa.Column("count", sa.BigInteger(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint(
            "tenant", "workflow_id", "step_id", "resolution", "minute", "bucket"
        ),
    )
    op.create_index(
        "ix_rollup_histograms_time",
        "rollup_histograms",
        ["tenant", "resolution", "minute", "workflow_id"],
        unique=False,
    )
    op.create_table(
        "rollups",
        sa.Column("tenant", sa.String(length=128), nullable=False),
        sa.Column("workflow_id", sa.String(length=256), nullable=False),
        sa.Column("step_id", sa.String(length=256), nullable=False),
        sa.Column("resolution", sa.Integer(), nullable=False),
        sa.Column("minute", sa.BigInteger(), nullable=False),
        sa.Column("action", sa.String(length=256), server_default="", nullable=False),
        sa.Column("total", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("completed", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("completed_with_errors", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("failed", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("timed_out", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("skipped", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("cancelled", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("retries", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("duration_sum", sa.Double(), server_default="0", nullable=False),
        sa.Column("duration_min", sa.Double(), nullable=False),
        sa.Column("duration_max", sa.Double(), nullable=False),
        sa.Column("time_saved_sum", sa.Double(), server_default="0", nullable=False),
        sa.Column("business_value_sum", sa.Double(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("tenant", "workflow_id", "step_id", "resolution", "minute"),
    )
    op.create_index(
        "ix_rollups_time",
        "rollups",
        ["tenant", "resolution", "minute", "workflow_id"],
        unique=False,
    )
    op.create_table(
        "step_facts",
        sa.Column("execution_id", sa.String(length=128), nullable=False),
        sa.Column("step_id", sa.String(length=256), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("tenant", sa.String(length=128), nullable=False),
        sa.Column("workflow_id", sa.String(length=256), nullable=False),
        sa.Column("workflow_version", sa.Integer(), nullable=False),
        sa.Column("action", sa.String(length=256), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("error_type", sa.String(length=256), nullable=False),
        sa.Column("error_message", sa.Text(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("duration_seconds", sa.Double(), nullable=False),
        sa.Column("depends_on", sa.Text(), nullable=False),
        sa.Column("event_id", sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint("execution_id", "step_id", "attempt"),
    )
    op.create_index(
        "ix_step_facts_tenant_finished", "step_facts", ["tenant", "finished_at"], unique=False
    )
    op.create_index(
        "ix_step_facts_tenant_workflow_finished",
        "step_facts",
        ["tenant", "workflow_id", "finished_at"],
        unique=False,
    )


def downgrade() -> None:

    op.drop_index("ix_step_facts_tenant_workflow_finished", table_name="step_facts")
    op.drop_index("ix_step_facts_tenant_finished", table_name="step_facts")
    op.drop_table("step_facts")
    op.drop_index("ix_rollups_time", table_name="rollups")
    op.drop_table("rollups")
    op.drop_index("ix_rollup_histograms_time", table_name="rollup_histograms")
    op.drop_table("rollup_histograms")
    op.drop_index("ix_rollup_errors_time", table_name="rollup_errors")
    op.drop_table("rollup_errors")
    op.drop_index("ix_ingested_events_occurred_at", table_name="ingested_events")
    op.drop_table("ingested_events")
    op.drop_table("ingest_lag")
    op.drop_index("ix_execution_facts_tenant_workflow_finished", table_name="execution_facts")
    op.drop_index("ix_execution_facts_tenant_finished", table_name="execution_facts")
    op.drop_table("execution_facts")
    op.drop_index("ix_alert_rules_tenant_workflow", table_name="alert_rules")
    op.drop_table("alert_rules")
    op.drop_index("ix_alert_events_rule_occurred", table_name="alert_events")
    op.drop_table("alert_events")

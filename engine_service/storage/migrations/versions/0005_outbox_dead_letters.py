"""Events the outbox relay set aside: analytics refused them for good (with the reason).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

Timestamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "outbox_dead_letters",
        sa.Column("event_id", sa.String(36), primary_key=True),
        sa.Column("execution_id", sa.String(36), nullable=False),
        sa.Column("sequence", sa.BigInteger(), nullable=False),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("code", sa.String(32), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("set_aside_at", Timestamp, nullable=False),
    )
    op.create_index("ix_outbox_dead_letters_set_aside_at", "outbox_dead_letters", ["set_aside_at"])


def downgrade() -> None:
    # Set-aside events go back to the outbox, to be shipped (or set aside) again.
    op.execute(
        "UPDATE execution_events SET delivered_at = NULL "
        "WHERE event_id IN (SELECT event_id FROM outbox_dead_letters)"
    )
    op.drop_index("ix_outbox_dead_letters_set_aside_at", table_name="outbox_dead_letters")
    op.drop_table("outbox_dead_letters")

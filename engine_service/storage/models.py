"""The engine's tables. The Alembic chain in `migrations/` must produce exactly these.

`executions.state` holds the JSON snapshot of an execution (steps, inputs, error); the
columns beside it repeat what queries filter on. `execution_events` is both the durable
history that watchers replay and the outbox the relay ships to analytics.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    Index,
    Integer,
    String,
    Table,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

Json = JSON().with_variant(JSONB(), "postgresql")
Timestamp = DateTime(timezone=True)
ID_LENGTH = 128


class Base(DeclarativeBase):
    pass


class WorkflowDefinitionRow(Base):
    __tablename__ = "workflow_definitions"

    tenant: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    workflow_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(Text, default="")
    labels: Mapped[dict[str, str]] = mapped_column(Json)
    definition: Mapped[dict[str, Any]] = mapped_column(Json)
    created_at: Mapped[datetime] = mapped_column(Timestamp)


class ExecutionRow(Base):
    __tablename__ = "executions"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(ID_LENGTH))
    workflow_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    workflow_version: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    started_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    parent_execution_id: Mapped[str] = mapped_column(String(36), default="")
    parent_step_id: Mapped[str] = mapped_column(String(ID_LENGTH), default="")
    idempotency_key: Mapped[str] = mapped_column(String(256), default="")
    schedule_id: Mapped[str] = mapped_column(String(64), default="")
    depth: Mapped[int] = mapped_column(Integer, default=0)
    last_sequence: Mapped[int] = mapped_column(BigInteger)
    # `state` is the fold of events up to `snapshot_sequence`; later events are folded
    # on read. Rewriting the whole snapshot on every append cost most of the CPU.
    snapshot_sequence: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[dict[str, Any]] = mapped_column(Json)
    # Claims of the execution so far (see `storage.lease_store`): appends must carry it.
    lease_epoch: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))

    __table_args__ = (
        Index("ix_executions_tenant_created", "tenant", "created_at"),
        Index("ix_executions_status", "status"),
        Index("ix_executions_parent", "parent_execution_id"),
    )


class IdempotencyKeyRow(Base):
    __tablename__ = "idempotency_keys"

    tenant: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    key: Mapped[str] = mapped_column(String(256), primary_key=True)
    execution_id: Mapped[str] = mapped_column(String(36))


class StepAttemptRow(Base):
    """One attempt of a step, or the fallback or compensation (`kind`) that followed
    attempt `attempt`; see `storage.attempts`."""

    __tablename__ = "step_attempts"

    execution_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    step_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    attempt: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(
        String(16), primary_key=True, server_default=text("'ATTEMPT'")
    )
    action: Mapped[str] = mapped_column(String(ID_LENGTH))
    status: Mapped[str] = mapped_column(String(32))
    started_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    duration_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    error_type: Mapped[str] = mapped_column(String(256), default="")


class ExecutionEventRow(Base):
    __tablename__ = "execution_events"

    execution_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    sequence: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    event_id: Mapped[str] = mapped_column(String(36), unique=True)
    tenant: Mapped[str] = mapped_column(String(ID_LENGTH))
    kind: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    payload: Mapped[dict[str, Any]] = mapped_column(Json)
    # Set by the outbox relay once analytics acknowledged the event.
    delivered_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)

    __table_args__ = (
        Index(
            "ix_execution_events_undelivered",
            "created_at",
            postgresql_where=text("delivered_at IS NULL"),
            sqlite_where=text("delivered_at IS NULL"),
        ),
    )


class LeaseRow(Base):
    __tablename__ = "leases"

    execution_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    owner: Mapped[str] = mapped_column(String(ID_LENGTH))
    expires_at: Mapped[datetime] = mapped_column(Timestamp)
    # The same as the execution's `lease_epoch`: renewals must carry it.
    epoch: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))


# The tables, for Core statements (the hot paths avoid the ORM unit of work).
workflow_definitions: Table = WorkflowDefinitionRow.__table__  # type: ignore[assignment]
executions: Table = ExecutionRow.__table__  # type: ignore[assignment]
idempotency_keys: Table = IdempotencyKeyRow.__table__  # type: ignore[assignment]
step_attempts: Table = StepAttemptRow.__table__  # type: ignore[assignment]
execution_events: Table = ExecutionEventRow.__table__  # type: ignore[assignment]
leases: Table = LeaseRow.__table__  # type: ignore[assignment]


class ScheduleRow(Base):
    """A cron schedule; `claimed_by`/`claim_expires_at` hold the run an engine is starting."""

    __tablename__ = "schedules"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(ID_LENGTH))
    workflow_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    workflow_version: Mapped[int] = mapped_column(Integer)
    cron: Mapped[str] = mapped_column(String(256))
    time_zone: Mapped[str] = mapped_column(String(64))
    inputs: Mapped[dict[str, Any]] = mapped_column(Json)
    overlap_policy: Mapped[str] = mapped_column(String(32))
    missed_run_policy: Mapped[str] = mapped_column(String(32))
    paused: Mapped[bool] = mapped_column(Boolean)
    next_run_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    last_run_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    last_execution_id: Mapped[str] = mapped_column(String(36))
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    claimed_by: Mapped[str] = mapped_column(String(ID_LENGTH))
    claim_expires_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)

    __table_args__ = (
        Index("ix_schedules_tenant_created", "tenant", "created_at"),
        Index("ix_schedules_next_run", "next_run_at"),
    )


schedules: Table = ScheduleRow.__table__  # type: ignore[assignment]
# The overlap policies look up a schedule's unfinished executions.
Index(
    "ix_executions_schedule",
    executions.c.schedule_id,
    postgresql_where=text("schedule_id <> ''"),
    sqlite_where=text("schedule_id <> ''"),
)


class ExecutionCommandRow(Base):
    """A cancel, pause or resume for the process that drives the execution to apply
    (see `core.commands`); `outcome` is PENDING until it does."""

    __tablename__ = "execution_commands"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    execution_id: Mapped[str] = mapped_column(String(36))
    kind: Mapped[str] = mapped_column(String(16))
    requested_at: Mapped[datetime] = mapped_column(Timestamp)
    reason: Mapped[str] = mapped_column(Text)
    inputs: Mapped[dict[str, Any]] = mapped_column(Json)
    outcome: Mapped[str] = mapped_column(String(16))
    detail: Mapped[str] = mapped_column(Text)


execution_commands: Table = ExecutionCommandRow.__table__  # type: ignore[assignment]
# Processes look for the pending commands on every lease round.
Index(
    "ix_execution_commands_pending",
    execution_commands.c.requested_at,
    postgresql_where=text("outcome = 'PENDING'"),
    sqlite_where=text("outcome = 'PENDING'"),
)


class OutboxDeadLetterRow(Base):
    """An event the outbox relay set aside: analytics refused it for good (`code`, `reason`).

    Its `execution_events.delivered_at` is set too, so it leaves the outbox; replaying it
    (`python -m engine_service.relay dead-letters replay`) clears both.
    """

    __tablename__ = "outbox_dead_letters"

    event_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    execution_id: Mapped[str] = mapped_column(String(36))
    sequence: Mapped[int] = mapped_column(BigInteger)
    tenant: Mapped[str] = mapped_column(String(ID_LENGTH))
    code: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str] = mapped_column(Text)
    set_aside_at: Mapped[datetime] = mapped_column(Timestamp)

    __table_args__ = (Index("ix_outbox_dead_letters_set_aside_at", "set_aside_at"),)


outbox_dead_letters: Table = OutboxDeadLetterRow.__table__  # type: ignore[assignment]

"""The analytics schema, declared once: migrations are checked against it."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Double,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

from analytics_service.storage.types import IntegerList, UtcDateTime

metadata = MetaData()

ID = 128
NAME = 256
STATUS = 32


def _counter(name: str) -> Column[int]:
    return Column(name, BigInteger, nullable=False, server_default="0")


def _amount(name: str) -> Column[float]:
    return Column(name, Double, nullable=False, server_default="0")


# Event ids accepted (until retention) that no fact row records: events that yield no fact,
# and on Postgres a second event for an attempt or execution that already has its fact.
# With the facts' event ids it makes ingest idempotent by event id.
ingested_events = Table(
    "ingested_events",
    metadata,
    Column("event_id", String(ID), primary_key=True),
    Column("tenant", String(ID), nullable=False),
    Column("workflow_id", String(NAME), nullable=False),
    Column("occurred_at", UtcDateTime, nullable=False),
    Column("ingested_at", UtcDateTime, nullable=False),
    Index("ix_ingested_events_occurred_at", "occurred_at"),
)

step_facts = Table(
    "step_facts",
    metadata,
    Column("execution_id", String(ID), primary_key=True),
    Column("step_id", String(NAME), primary_key=True),
    Column("attempt", Integer, primary_key=True),
    Column("tenant", String(ID), nullable=False),
    Column("workflow_id", String(NAME), nullable=False),
    Column("workflow_version", Integer, nullable=False),
    Column("action", String(NAME), nullable=False),
    Column("status", String(STATUS), nullable=False),
    Column("error_type", String(NAME), nullable=False),
    Column("error_message", Text, nullable=False),
    Column("started_at", UtcDateTime, nullable=False),
    Column("finished_at", UtcDateTime, nullable=False),
    Column("duration_seconds", Double, nullable=False),
    # JSON array of step ids, for the critical path.
    Column("depends_on", Text, nullable=False),
    Column("event_id", String(ID), nullable=False),
    Index("ix_step_facts_tenant_workflow_finished", "tenant", "workflow_id", "finished_at"),
    Index("ix_step_facts_tenant_finished", "tenant", "finished_at"),
)

execution_facts = Table(
    "execution_facts",
    metadata,
    Column("execution_id", String(ID), primary_key=True),
    Column("tenant", String(ID), nullable=False),
    Column("workflow_id", String(NAME), nullable=False),
    Column("workflow_version", Integer, nullable=False),
    Column("status", String(STATUS), nullable=False),
    Column("error_type", String(NAME), nullable=False),
    Column("error_message", Text, nullable=False),
    Column("started_at", UtcDateTime, nullable=False),
    Column("finished_at", UtcDateTime, nullable=False),
    Column("duration_seconds", Double, nullable=False),
    Column("estimated_time_saved_seconds", Double, nullable=False),
    Column("business_value", Double, nullable=False),
    Column("parent_execution_id", String(ID), nullable=False),
    Column("event_id", String(ID), nullable=False),
    Index("ix_execution_facts_tenant_workflow_finished", "tenant", "workflow_id", "finished_at"),
    Index("ix_execution_facts_tenant_finished", "tenant", "finished_at"),
)

# Rollups are keyed by minutes since the epoch, at a resolution of 1 (minute rows) or 60
# (hour rows keyed by the hour's first minute); step_id "" is the execution level.
rollups = Table(
    "rollups",
    metadata,
    Column("tenant", String(ID), primary_key=True),
    Column("workflow_id", String(NAME), primary_key=True),
    Column("step_id", String(NAME), primary_key=True),
    Column("resolution", Integer, primary_key=True),
    Column("minute", BigInteger, primary_key=True),
    Column("action", String(NAME), nullable=False, server_default=""),
    _counter("total"),
    _counter("completed"),
    _counter("completed_with_errors"),
    _counter("failed"),
    _counter("timed_out"),
    _counter("skipped"),
    _counter("cancelled"),
    _counter("retries"),
    _amount("duration_sum"),
    Column("duration_min", Double, nullable=False),
    Column("duration_max", Double, nullable=False),
    _amount("time_saved_sum"),
    _amount("business_value_sum"),
    # The log-bucket histogram of the durations (see core.histogram): bucket indexes and
    # the count of each. SQLite keeps them merged (ascending, each bucket once). Postgres
    # appends each batch's buckets and merges them with the SQL function histogram_merge
    # (migration 0002) once they pass batch_ingest.HISTOGRAM_APPEND_LIMIT entries: readers
    # sum the counts of a bucket.
    Column("histogram_buckets", IntegerList, nullable=False),
    Column("histogram_counts", IntegerList, nullable=False),
    # Time-bounded reads across steps or workflows; the primary key serves one step.
    Index("ix_rollups_time", "tenant", "resolution", "minute", "workflow_id"),
)

rollup_errors = Table(
    "rollup_errors",
    metadata,
    Column("tenant", String(ID), primary_key=True),
    Column("workflow_id", String(NAME), primary_key=True),
    Column("step_id", String(NAME), primary_key=True),
    Column("resolution", Integer, primary_key=True),
    Column("minute", BigInteger, primary_key=True),
    Column("error_type", String(NAME), primary_key=True),
    _counter("count"),
    # Time-bounded reads across steps or workflows; the primary key serves one step.
    Index("ix_rollup_errors_time", "tenant", "resolution", "minute", "workflow_id"),
)


# Keyed by the minute of ingestion, not of the events.
ingest_lag = Table(
    "ingest_lag",
    metadata,
    Column("tenant", String(ID), primary_key=True),
    Column("workflow_id", String(NAME), primary_key=True),
    Column("minute", BigInteger, primary_key=True),
    _counter("events"),
    _amount("lag_sum"),
    _amount("lag_max"),
)

alert_rules = Table(
    "alert_rules",
    metadata,
    Column("id", String(ID), primary_key=True),
    Column("tenant", String(ID), nullable=False),
    Column("name", String(NAME), nullable=False),
    Column("workflow_id", String(NAME), nullable=False),
    Column("step_id", String(NAME), nullable=False),
    Column("metric", String(STATUS), nullable=False),
    Column("comparator", String(STATUS), nullable=False),
    Column("threshold", Double, nullable=False),
    Column("window_seconds", Double, nullable=False),
    Column("webhook_url", Text, nullable=False),
    Column("enabled", Boolean, nullable=False),
    Column("state", String(STATUS), nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Index("ix_alert_rules_tenant_workflow", "tenant", "workflow_id"),
)

alert_events = Table(
    "alert_events",
    metadata,
    Column("id", String(ID), primary_key=True),
    Column("rule_id", String(ID), nullable=False),
    Column("tenant", String(ID), nullable=False),
    Column("state", String(STATUS), nullable=False),
    Column("value", Double, nullable=False),
    Column("threshold", Double, nullable=False),
    Column("occurred_at", UtcDateTime, nullable=False),
    Column("message", Text, nullable=False),
    Index("ix_alert_events_rule_occurred", "rule_id", "occurred_at"),
)

"""Alembic environment: always given a live connection by `migrations.migrate`."""

from __future__ import annotations

from alembic import context

from engine_service.storage.migrations import VERSION_TABLE
from engine_service.storage.models import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    version_table=VERSION_TABLE,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()

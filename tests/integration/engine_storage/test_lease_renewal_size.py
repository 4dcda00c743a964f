"""Renewing every lease of a process that drives tens of thousands of executions."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import insert

from engine_service.core.store import Lease
from engine_service.storage import SqlExecutionStore, open_store
from engine_service.storage.models import leases

pytestmark = pytest.mark.timeout(120)

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
# Two bound parameters a lease: past the 32767 one statement may carry.
DRIVEN = 17_000


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[SqlExecutionStore]:
    sql = await open_store(database_url)
    try:
        yield sql
    finally:
        await sql.close()


async def test_a_renewal_of_more_leases_than_one_statement_can_bind(
    store: SqlExecutionStore,
) -> None:
    held = {f"execution-{i:05}": 3 for i in range(DRIVEN)}
    async with store.engine.begin() as connection:
        await connection.execute(
            insert(leases),
            [{"execution_id": i, "owner": "me", "expires_at": T0, "epoch": 3} for i in held],
        )
    renewal = Lease("me", T0 + timedelta(seconds=30))
    assert await store.renew_leases(renewal, held) == set(held)

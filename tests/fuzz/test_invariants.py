"""The partial-row rules of the fuzz tier find partial rows (they could fail)."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import insert

from engine_service.storage import open_store
from engine_service.storage.models import execution_events, idempotency_keys
from tests.fuzz.invariants import ENGINE_RULES, broken_rules_at


async def test_the_engine_rules_find_rows_a_half_applied_request_would_leave(
    database_url: str,
) -> None:
    store = await open_store(database_url)
    try:
        async with store.engine.begin() as connection:
            await connection.execute(
                insert(idempotency_keys).values(tenant="t", key="k", execution_id="gone")
            )
            await connection.execute(
                insert(execution_events).values(
                    execution_id="gone",
                    sequence=1,
                    event_id="e",
                    tenant="t",
                    kind="EXECUTION_STATUS_CHANGED",
                    created_at=datetime.now(UTC),
                    payload={},
                )
            )
    finally:
        await store.close()
    assert await broken_rules_at(database_url, {}) == []
    broken = await broken_rules_at(database_url, ENGINE_RULES)
    assert [rule.split(":")[0] for rule in broken] == [
        "an event of no execution",
        "an idempotency key of no execution",
    ]

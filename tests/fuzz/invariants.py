"""No partial rows: what a half-applied request would leave behind, asked of the database.

Each query returns the rows that break one rule; a clean database returns none. The
engine's run after it stopped, so nothing is in flight; analytics' after the burst.
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from engine_service.storage import create_database_engine

ENGINE_RULES = {
    "an execution whose events are not exactly 1..last_sequence": """
        SELECT e.id FROM executions e
        LEFT JOIN (SELECT execution_id, count(*) AS n, min(sequence) AS lo, max(sequence) AS hi
                   FROM execution_events GROUP BY execution_id) v ON v.execution_id = e.id
        WHERE v.n IS NULL OR v.n <> e.last_sequence OR v.lo <> 1 OR v.hi <> e.last_sequence
    """,
    "an event of no execution": """
        SELECT v.execution_id FROM execution_events v
        LEFT JOIN executions e ON e.id = v.execution_id WHERE e.id IS NULL
    """,
    "an execution of no stored workflow version": """
        SELECT e.id FROM executions e
        LEFT JOIN workflow_definitions w ON w.tenant = e.tenant
            AND w.workflow_id = e.workflow_id AND w.version = e.workflow_version
        WHERE w.workflow_id IS NULL
    """,
    "an idempotency key of no execution": """
        SELECT k.key FROM idempotency_keys k
        LEFT JOIN executions e ON e.id = k.execution_id WHERE e.id IS NULL
    """,
    "a step attempt of no execution": """
        SELECT a.execution_id FROM step_attempts a
        LEFT JOIN executions e ON e.id = a.execution_id WHERE e.id IS NULL
    """,
    "a schedule of no workflow": """
        SELECT s.id FROM schedules s
        WHERE NOT EXISTS (SELECT 1 FROM workflow_definitions w
                          WHERE w.tenant = s.tenant AND w.workflow_id = s.workflow_id)
    """,
}

ANALYTICS_RULES = {
    "a step fact whose minute and hour rollups disagree": """
        SELECT m.tenant, m.workflow_id, m.step_id FROM
            (SELECT tenant, workflow_id, step_id, sum(total) AS n FROM rollups
             WHERE resolution = 1 GROUP BY tenant, workflow_id, step_id) m
        FULL OUTER JOIN
            (SELECT tenant, workflow_id, step_id, sum(total) AS n FROM rollups
             WHERE resolution = 60 GROUP BY tenant, workflow_id, step_id) h
            ON h.tenant = m.tenant AND h.workflow_id = m.workflow_id AND h.step_id = m.step_id
        WHERE m.n IS NULL OR h.n IS NULL OR m.n <> h.n
    """,
    "step facts that the minute rollups do not count": """
        SELECT f.tenant, f.workflow_id, f.step_id FROM
            (SELECT tenant, workflow_id, step_id, count(*) AS n FROM step_facts
             GROUP BY tenant, workflow_id, step_id) f
        LEFT JOIN
            (SELECT tenant, workflow_id, step_id, sum(total) AS n FROM rollups
             WHERE resolution = 1 AND step_id <> '' GROUP BY tenant, workflow_id, step_id) r
            ON r.tenant = f.tenant AND r.workflow_id = f.workflow_id AND r.step_id = f.step_id
        WHERE r.n IS NULL OR r.n <> f.n
    """,
}


async def broken_rules_at(database_url: str, rules: dict[str, str]) -> list[str]:
    """`broken_rules` of the database at `database_url`, on a connection of its own."""
    engine = create_database_engine(database_url)
    try:
        return await broken_rules(engine, rules)
    finally:
        await engine.dispose()


async def broken_rules(engine: AsyncEngine, rules: dict[str, str]) -> list[str]:
    """Each rule with the first rows that break it."""
    broken: list[str] = []
    async with engine.connect() as connection:
        for rule, query in rules.items():
            rows = (await connection.execute(text(query))).fetchmany(5)
            if rows:
                broken.append(f"{rule}: {[tuple(row) for row in rows]}")
    return broken

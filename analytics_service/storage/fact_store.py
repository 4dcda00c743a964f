"""Step attempt and execution facts: one row each, for drill-down and CSV."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Row, Select, Table, and_, delete, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from analytics_service.core.events import (
    ExecutionFact,
    ExecutionStatus,
    Facts,
    StepAttemptFact,
    StepStatus,
)
from analytics_service.core.ports import FactFilter
from analytics_service.storage.bulk import insert_new
from analytics_service.storage.models import execution_facts, step_facts

_FAILED = (StepStatus.FAILED.value, StepStatus.TIMED_OUT.value)


def step_columns(facts: Sequence[StepAttemptFact]) -> dict[str, list[Any]]:
    columns: dict[str, list[Any]] = {
        name: [getattr(fact, name) for fact in facts]
        for name in step_facts.c.keys()  # noqa: SIM118
        if name not in ("status", "depends_on")
    }
    columns["status"] = [fact.status.value for fact in facts]
    columns["depends_on"] = [json.dumps(list(fact.depends_on)) for fact in facts]
    return columns


def execution_columns(facts: Sequence[ExecutionFact]) -> dict[str, list[Any]]:
    columns: dict[str, list[Any]] = {
        name: [getattr(fact, name) for fact in facts]
        for name in execution_facts.c.keys()  # noqa: SIM118
        if name != "status"
    }
    columns["status"] = [fact.status.value for fact in facts]
    return columns


def _step_fact(row: Row[Any]) -> StepAttemptFact:
    values = dict(row._mapping)
    values["status"] = StepStatus(values["status"])
    values["depends_on"] = tuple(json.loads(values["depends_on"]))
    return StepAttemptFact(**values)


def _execution_fact(row: Row[Any]) -> ExecutionFact:
    values = dict(row._mapping)
    values["status"] = ExecutionStatus(values["status"])
    return ExecutionFact(**values)


def _selected(table: Table, selection: FactFilter) -> list[ColumnElement[bool]]:
    conditions = [
        table.c.tenant == selection.tenant,
        table.c.finished_at >= selection.start,
        table.c.finished_at < selection.end,
    ]
    if selection.workflow_id:
        conditions.append(table.c.workflow_id == selection.workflow_id)
    if selection.step_id and "step_id" in table.c:
        conditions.append(table.c.step_id == selection.step_id)
    if selection.statuses:
        conditions.append(table.c.status.in_(selection.statuses))
    return conditions


class SqlFactStore:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def add(self, facts: Facts) -> Facts:
        step_keys = await insert_new(
            self._session,
            step_facts,
            step_columns(facts.steps),
            ["execution_id", "step_id", "attempt"],
        )
        execution_keys = await insert_new(
            self._session,
            execution_facts,
            execution_columns(facts.executions),
            ["execution_id"],
        )
        new_steps = set(step_keys)
        new_executions = {key for (key,) in execution_keys}
        return Facts(
            steps=tuple(
                f for f in facts.steps if (f.execution_id, f.step_id, f.attempt) in new_steps
            ),
            executions=tuple(f for f in facts.executions if f.execution_id in new_executions),
        )

    async def prune(self, before: datetime) -> int:
        pruned = 0
        for table in (step_facts, execution_facts):
            result = await self._session.execute(delete(table).where(table.c.finished_at < before))
            pruned += int(result.rowcount)  # type: ignore[attr-defined]
        return pruned

    async def recent_failures(self, selection: FactFilter, limit: int) -> list[StepAttemptFact]:
        statement = (
            select(step_facts)
            .where(*_selected(step_facts, selection), step_facts.c.status.in_(_FAILED))
            .order_by(
                step_facts.c.finished_at.desc(),
                step_facts.c.execution_id,
                step_facts.c.step_id,
                step_facts.c.attempt.desc(),
            )
            .limit(limit)
        )
        return [_step_fact(row) for row in await self._session.execute(statement)]

    async def steps_of_latest_executions(
        self, selection: FactFilter, executions: int
    ) -> list[StepAttemptFact]:
        latest = (
            select(step_facts.c.execution_id)
            .where(*_selected(step_facts, selection))
            .group_by(step_facts.c.execution_id)
            .order_by(func.max(step_facts.c.finished_at).desc(), step_facts.c.execution_id)
            .limit(executions)
            .subquery()
        )
        statement = select(step_facts).where(
            step_facts.c.execution_id.in_(select(latest.c.execution_id))
        )
        return [_step_fact(row) for row in await self._session.execute(statement)]

    async def step_page(
        self, selection: FactFilter, after: StepAttemptFact | None, limit: int
    ) -> list[StepAttemptFact]:
        order = (
            step_facts.c.finished_at,
            step_facts.c.execution_id,
            step_facts.c.step_id,
            step_facts.c.attempt,
        )
        statement = _page(step_facts, selection, order, limit)
        if after is not None:
            position = (after.finished_at, after.execution_id, after.step_id, after.attempt)
            statement = statement.where(_after(order, position))
        return [_step_fact(row) for row in await self._session.execute(statement)]

    async def execution_page(
        self, selection: FactFilter, after: ExecutionFact | None, limit: int
    ) -> list[ExecutionFact]:
        order = (execution_facts.c.finished_at, execution_facts.c.execution_id)
        statement = _page(execution_facts, selection, order, limit)
        if after is not None:
            statement = statement.where(_after(order, (after.finished_at, after.execution_id)))
        return [_execution_fact(row) for row in await self._session.execute(statement)]


def _page(table: Table, selection: FactFilter, order: tuple[Any, ...], limit: int) -> Select[Any]:
    return select(table).where(*_selected(table, selection)).order_by(*order).limit(limit)


def _after(order: tuple[Any, ...], position: tuple[Any, ...]) -> ColumnElement[bool]:
    """Keyset pagination: rows strictly after `position` in `order`."""
    # Spelled out rather than as a row-value comparison so each value binds with its type.
    clauses: list[ColumnElement[bool]] = []
    for i, column in enumerate(order):
        equal_before = [order[j] == position[j] for j in range(i)]
        clauses.append(and_(*equal_before, column > position[i]))
    return or_(*clauses)

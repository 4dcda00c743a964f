"""Alert rules and the transitions they went through."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from sqlalchemy import Row, delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from analytics_service.core.alerts import (
    AlertEvent,
    AlertMetric,
    AlertRule,
    AlertRuleChanges,
    AlertState,
    Comparator,
)
from analytics_service.storage.alert_notices import NOTIFY, alert_payload
from analytics_service.storage.models import alert_events, alert_rules


def _rule_row(rule: AlertRule) -> dict[str, Any]:
    row = asdict(rule)
    row.update(metric=rule.metric.value, comparator=rule.comparator.value, state=rule.state.value)
    return row


def _rule(row: Row[Any]) -> AlertRule:
    values = dict(row._mapping)
    values.update(
        metric=AlertMetric(values["metric"]),
        comparator=Comparator(values["comparator"]),
        state=AlertState(values["state"]),
    )
    return AlertRule(**values)


def _changed_columns(changes: AlertRuleChanges) -> dict[str, Any]:
    columns = {name: value for name, value in asdict(changes).items() if value is not None}
    for name in ("metric", "comparator"):
        if name in columns:
            columns[name] = columns[name].value
    return columns


class SqlAlertStore:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def add_rule(self, rule: AlertRule) -> None:
        await self._session.execute(alert_rules.insert().values(_rule_row(rule)))

    async def get_rule(self, rule_id: str) -> AlertRule | None:
        row = (
            await self._session.execute(select(alert_rules).where(alert_rules.c.id == rule_id))
        ).first()
        return None if row is None else _rule(row)

    async def list_rules(
        self, tenant: str, workflow_id: str, after_id: str, limit: int
    ) -> list[AlertRule]:
        statement = select(alert_rules).where(
            alert_rules.c.tenant == tenant, alert_rules.c.id > after_id
        )
        if workflow_id:
            statement = statement.where(alert_rules.c.workflow_id == workflow_id)
        result = await self._session.execute(statement.order_by(alert_rules.c.id).limit(limit))
        return [_rule(row) for row in result]

    async def update_rule(self, rule_id: str, changes: AlertRuleChanges) -> AlertRule | None:
        columns = _changed_columns(changes)
        if changes.metric is not None or changes.comparator is not None:
            # A new condition starts from scratch rather than inheriting the old one's state.
            columns["state"] = AlertState.OK.value
        if columns:
            await self._session.execute(
                update(alert_rules).where(alert_rules.c.id == rule_id).values(columns)
            )
        return await self.get_rule(rule_id)

    async def delete_rule(self, rule_id: str) -> bool:
        await self._session.execute(delete(alert_events).where(alert_events.c.rule_id == rule_id))
        result = await self._session.execute(delete(alert_rules).where(alert_rules.c.id == rule_id))
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def enabled_rules(self, scopes: Sequence[tuple[str, str]] | None) -> list[AlertRule]:
        statement = select(alert_rules).where(alert_rules.c.enabled.is_(True))
        if scopes is not None:
            tenants = {tenant for tenant, _ in scopes}
            workflows = {workflow for _, workflow in scopes}
            statement = statement.where(
                alert_rules.c.tenant.in_(tenants), alert_rules.c.workflow_id.in_(workflows)
            )
        result = await self._session.execute(statement.order_by(alert_rules.c.id))
        rules = [_rule(row) for row in result]
        if scopes is None:
            return rules
        wanted = set(scopes)
        return [rule for rule in rules if (rule.tenant, rule.workflow_id) in wanted]

    async def transition(self, rule_id: str, expected: AlertState, new: AlertState) -> bool:
        result = await self._session.execute(
            update(alert_rules)
            .where(alert_rules.c.id == rule_id, alert_rules.c.state == expected.value)
            .values(state=new.value)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def add_event(self, event: AlertEvent) -> None:
        row = asdict(event)
        row["state"] = event.state.value
        await self._session.execute(alert_events.insert().values(row))
        if self._session.get_bind().dialect.name == "postgresql":
            # To every replica's WatchAlerts subscribers, once committed (`alert_notices`).
            await self._session.execute(NOTIFY, {"payload": alert_payload(event)})

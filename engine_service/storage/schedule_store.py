"""The schedule half of `SqlExecutionStore`: schedules and the claiming of their runs.

A run is claimed with one conditional UPDATE (`next_run_at` still at the run's time, no
live claim): Postgres re-checks the condition on the row version a concurrent winner left,
and SQLite serialises writers, so exactly one claimer sees a row count of 1. No row lock
is held while the run starts; the claim expires instead, so a replica that dies between
claiming and finishing leaves the run to be claimed again, and the run's idempotency key
makes that second start return the first execution.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, case, delete, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from engine_service.core.errors import NotFound
from engine_service.core.schedules import MissedRunPolicy, OverlapPolicy, Schedule, ScheduleQuery
from engine_service.core.state import ExecutionState
from engine_service.core.store import Page, decode_page_token, encode_page_token, page_bounds
from engine_service.storage.models import executions, schedules


class SqlScheduleStore:
    """Mixed into `SqlExecutionStore`; uses its engine and its execution loader."""

    _engine: AsyncEngine

    if TYPE_CHECKING:

        async def _load(self, where: Any) -> list[ExecutionState]: ...

    async def add_schedule(self, schedule: Schedule) -> Schedule:
        async with self._engine.begin() as connection:
            await connection.execute(
                insert(schedules).values(
                    **_settings(schedule),
                    id=schedule.id,
                    tenant=schedule.tenant,
                    workflow_id=schedule.workflow_id,
                    workflow_version=schedule.workflow_version,
                    next_run_at=_utc(schedule.next_run_at),
                    last_run_at=_utc(schedule.last_run_at),
                    last_execution_id=schedule.last_execution_id,
                    created_at=_utc(schedule.created_at),
                    claimed_by="",
                    claim_expires_at=None,
                )
            )
        return schedule

    async def get_schedule(self, schedule_id: str) -> Schedule:
        async with self._engine.connect() as connection:
            row = (
                (await connection.execute(select(schedules).where(schedules.c.id == schedule_id)))
                .mappings()
                .first()
            )
        if row is None:
            raise NotFound(kind="schedule", key=schedule_id)
        return _from_row(row)

    async def list_schedules(self, query: ScheduleQuery) -> Page[Schedule]:
        offset = decode_page_token(query.page_token)
        size = page_bounds(query.page_size)
        rows = select(schedules)
        if query.tenant is not None:
            rows = rows.where(schedules.c.tenant == query.tenant)
        if query.workflow_id:
            rows = rows.where(schedules.c.workflow_id == query.workflow_id)
        rows = rows.order_by(schedules.c.created_at, schedules.c.id).offset(offset).limit(size + 1)
        async with self._engine.connect() as connection:
            found = [_from_row(r) for r in (await connection.execute(rows)).mappings()]
        more = len(found) > size
        return Page(tuple(found[:size]), encode_page_token(offset + size) if more else "")

    async def update_schedule(self, schedule: Schedule, *, reschedule: bool) -> Schedule:
        values = _settings(schedule)
        if reschedule:
            values["next_run_at"] = _utc(schedule.next_run_at)
        async with self._engine.begin() as connection:
            result = await connection.execute(
                update(schedules).where(schedules.c.id == schedule.id).values(**values)
            )
        if result.rowcount != 1:
            raise NotFound(kind="schedule", key=schedule.id)
        return await self.get_schedule(schedule.id)

    async def delete_schedule(self, schedule_id: str) -> None:
        statement = delete(schedules).where(schedules.c.id == schedule_id)
        async with self._engine.begin() as connection:
            result = await connection.execute(statement)
        if result.rowcount != 1:
            raise NotFound(kind="schedule", key=schedule_id)

    async def due_schedules(self, now: datetime, limit: int) -> list[Schedule]:
        now = _as_utc(now)
        rows = (
            select(schedules)
            .where(
                schedules.c.paused.is_(False),
                schedules.c.next_run_at <= now,
                _unclaimed(now),
            )
            .order_by(schedules.c.next_run_at, schedules.c.id)
            .limit(limit)
        )
        async with self._engine.connect() as connection:
            return [_from_row(r) for r in (await connection.execute(rows)).mappings()]

    async def claim_schedule_run(
        self, schedule_id: str, due: datetime, *, owner: str, now: datetime, until: datetime
    ) -> bool:
        claim = (
            update(schedules)
            .where(
                schedules.c.id == schedule_id,
                schedules.c.next_run_at == _as_utc(due),
                schedules.c.paused.is_(False),
                _unclaimed(_as_utc(now)),
            )
            .values(claimed_by=owner, claim_expires_at=_as_utc(until))
        )
        async with self._engine.begin() as connection:
            result = await connection.execute(claim)
        return bool(result.rowcount == 1)

    async def finish_schedule_run(
        self,
        schedule_id: str,
        due: datetime,
        *,
        owner: str,
        next_run_at: datetime,
        ran_at: datetime | None,
        execution_id: str = "",
    ) -> bool:
        values: dict[str, Any] = {
            "claimed_by": "",
            "claim_expires_at": None,
            # An update that moved the schedule meanwhile wins over the claimed run's next.
            "next_run_at": case(
                (schedules.c.next_run_at == _as_utc(due), _as_utc(next_run_at)),
                else_=schedules.c.next_run_at,
            ),
        }
        if ran_at is not None:
            values.update(last_run_at=_as_utc(ran_at), last_execution_id=execution_id)
        finish = (
            update(schedules)
            .where(schedules.c.id == schedule_id, schedules.c.claimed_by == owner)
            .values(**values)
        )
        async with self._engine.begin() as connection:
            result = await connection.execute(finish)
        return bool(result.rowcount == 1)

    async def unfinished_executions_of_schedule(self, schedule_id: str) -> list[ExecutionState]:
        if not schedule_id:
            return []
        states = await self._load(
            and_(executions.c.schedule_id == schedule_id, executions.c.finished_at.is_(None))
        )
        return [s for s in states if not s.status.is_terminal]


def _unclaimed(now: datetime) -> Any:
    return or_(schedules.c.claimed_by == "", schedules.c.claim_expires_at <= now)


def _settings(schedule: Schedule) -> dict[str, Any]:
    """The columns an update may change (next_run_at aside)."""
    return {
        "cron": schedule.cron,
        "time_zone": schedule.time_zone,
        "inputs": dict(schedule.inputs),
        "overlap_policy": schedule.overlap_policy.value,
        "missed_run_policy": schedule.missed_run_policy.value,
        "paused": schedule.paused,
    }


def _from_row(row: Any) -> Schedule:
    return Schedule(
        id=row["id"],
        tenant=row["tenant"],
        workflow_id=row["workflow_id"],
        workflow_version=row["workflow_version"],
        cron=row["cron"],
        time_zone=row["time_zone"],
        inputs=row["inputs"],
        overlap_policy=OverlapPolicy(row["overlap_policy"]),
        missed_run_policy=MissedRunPolicy(row["missed_run_policy"]),
        paused=bool(row["paused"]),
        next_run_at=_utc(row["next_run_at"]),
        last_run_at=_utc(row["last_run_at"]),
        last_execution_id=row["last_execution_id"],
        created_at=_as_utc(row["created_at"]),
    )


def _as_utc(value: datetime) -> datetime:
    """UTC, so SQLite (which stores timestamps as zone-less text) compares them right."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _utc(value: datetime | None) -> datetime | None:
    return None if value is None else _as_utc(value)

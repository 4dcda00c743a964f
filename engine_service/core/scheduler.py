"""Schedules at work: `ScheduleService` manages them, `Scheduler` starts their runs.

Each tick the scheduler asks the store for due schedules and claims each due run before
acting on it, so with any number of engine replicas one of them handles each run. The
execution it starts carries an idempotency key made of the schedule id and the run's
time, so a run that is claimed again (its claimer died before finishing) still starts
once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from engine_service.core.clock import Clock
from engine_service.core.engine import Engine
from engine_service.core.errors import IllegalTransition, InvalidArgument, NotFound, Problem
from engine_service.core.model import WorkflowDefinition
from engine_service.core.schedules import (
    MissedRunPolicy,
    OverlapPolicy,
    Schedule,
    ScheduleChanges,
    ScheduleQuery,
    apply_changes,
    check_inputs,
    check_schedule,
    latest_run_until,
    new_schedule_id,
    next_run_after,
    run_key,
)
from engine_service.core.state import ExecutionState
from engine_service.core.store import Page

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    # Seconds between looks for due schedules.
    tick_seconds: float = 1.0
    # How long a claimed run stays with its claimer before another replica may take it.
    claim_seconds: float = 60.0
    # A run started later than this after its time counts as missed (MissedRunPolicy).
    misfire_grace_seconds: float = 60.0
    # Due schedules handled per tick.
    batch_size: int = 100
    # CANCEL_PREVIOUS: how long to wait for the previous run to end before starting anyway.
    cancel_wait_seconds: float = 10.0


class ScheduleService:
    """Create, list, update and delete schedules; tenant-scoped like executions."""

    def __init__(self, engine: Engine, clock: Clock | None = None) -> None:
        self._engine = engine
        self._clock = clock or engine.clock

    async def create(self, spec: Schedule) -> Schedule:
        """Store `spec` under a new id; its run bookkeeping is ignored."""
        check_schedule(spec)
        definition = await self._workflow(spec)
        check_inputs(spec.inputs, definition.input_schema)
        now = self._clock.now()
        schedule = replace(
            spec,
            id=new_schedule_id(),
            created_at=now,
            next_run_at=None if spec.paused else next_run_after(spec, now),
            last_run_at=None,
            last_execution_id="",
        )
        return await self._engine.store.add_schedule(schedule)

    async def get(self, schedule_id: str, *, tenant: str | None = None) -> Schedule:
        schedule = await self._engine.store.get_schedule(schedule_id)
        if tenant is not None and schedule.tenant != tenant:
            raise NotFound(kind="schedule", key=schedule_id)
        return schedule

    async def list(self, query: ScheduleQuery) -> Page[Schedule]:
        return await self._engine.store.list_schedules(query)

    async def update(
        self, schedule_id: str, changes: ScheduleChanges, *, tenant: str | None = None
    ) -> Schedule:
        current = await self.get(schedule_id, tenant=tenant)
        updated = apply_changes(current, changes, self._clock.now())
        if changes.inputs is not None:
            definition = await self._workflow(updated)
            check_inputs(updated.inputs, definition.input_schema)
        reschedule = updated.next_run_at != current.next_run_at
        return await self._engine.store.update_schedule(updated, reschedule=reschedule)

    async def delete(self, schedule_id: str, *, tenant: str | None = None) -> None:
        await self.get(schedule_id, tenant=tenant)
        await self._engine.store.delete_schedule(schedule_id)

    async def _workflow(self, schedule: Schedule) -> WorkflowDefinition:
        try:
            return await self._engine.get_workflow(
                schedule.tenant, schedule.workflow_id, schedule.workflow_version
            )
        except NotFound:
            field = "workflow_version" if schedule.workflow_version else "workflow_id"
            problem = Problem(f"schedule.{field}", f"no such workflow: {schedule.workflow_id}")
            raise InvalidArgument(problems=[problem]) from None


class Scheduler:
    """Starts the due runs of every schedule, on a timer or one `tick` at a time."""

    def __init__(
        self,
        engine: Engine,
        config: SchedulerConfig | None = None,
        *,
        clock: Clock | None = None,
        owner: str = "",
    ) -> None:
        self._engine = engine
        self._store = engine.store
        self._clock = clock or engine.clock
        self.config = config or SchedulerConfig()
        self.owner = owner or f"scheduler-{uuid.uuid4().hex}"
        self._task: asyncio.Task[None] | None = None

    # ---- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="scheduler")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _loop(self) -> None:
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("schedule tick failed; trying again next tick")
            await asyncio.sleep(self.config.tick_seconds)

    # ---- one tick ------------------------------------------------------------------

    async def tick(self) -> list[ExecutionState]:
        """Handle every due schedule once; returns the executions started."""
        now = self._clock.now()
        started: list[ExecutionState] = []
        for schedule in await self._store.due_schedules(now, self.config.batch_size):
            try:
                execution = await self._fire(schedule, now)
            except Exception:
                # The claim expires and the run is tried again; other schedules go on.
                log.exception("schedule %s: starting its run failed", schedule.id)
                continue
            if execution is not None:
                started.append(execution)
        return started

    async def _fire(self, schedule: Schedule, now: datetime) -> ExecutionState | None:
        due = schedule.next_run_at
        assert due is not None  # due_schedules returns scheduled ones only
        until = now + timedelta(seconds=self.config.claim_seconds)
        if not await self._store.claim_schedule_run(
            schedule.id, due, owner=self.owner, now=now, until=until
        ):
            return None  # another replica has it, or it changed since we looked
        target = latest_run_until(schedule, due, now)
        execution = None
        if self._runs(schedule, target, now):
            execution = await self._start_run(schedule, target)
        await self._store.finish_schedule_run(
            schedule.id,
            due,
            owner=self.owner,
            next_run_at=next_run_after(schedule, target),
            ran_at=target if execution is not None else None,
            execution_id=execution.id if execution is not None else "",
        )
        return execution

    def _runs(self, schedule: Schedule, target: datetime, now: datetime) -> bool:
        """Whether the latest due run starts: on time, or missed under RUN_ONCE."""
        on_time = now - target <= timedelta(seconds=self.config.misfire_grace_seconds)
        if not on_time and schedule.missed_run_policy is MissedRunPolicy.SKIP:
            log.info("schedule %s: skipping runs missed up to %s", schedule.id, target)
        return on_time or schedule.missed_run_policy is MissedRunPolicy.RUN_ONCE

    async def _start_run(self, schedule: Schedule, scheduled_at: datetime) -> ExecutionState | None:
        key = run_key(schedule.id, scheduled_at)
        running = [
            s
            for s in await self._store.unfinished_executions_of_schedule(schedule.id)
            if s.idempotency_key != key
        ]
        if running and schedule.overlap_policy is OverlapPolicy.SKIP:
            log.info("schedule %s: skipping %s, a run is still going", schedule.id, scheduled_at)
            return None
        if schedule.overlap_policy is OverlapPolicy.CANCEL_PREVIOUS:
            for state in running:
                await self._cancel(schedule, state)
        return await self._start(schedule, key)

    async def _start(self, schedule: Schedule, key: str) -> ExecutionState | None:
        try:
            state, _ = await self._engine.start_execution(
                schedule.tenant,
                schedule.workflow_id,
                version=schedule.workflow_version,
                inputs=schedule.inputs,
                idempotency_key=key,
                schedule_id=schedule.id,
            )
        except (NotFound, InvalidArgument) as exc:
            # Retrying cannot help (the workflow or its input schema changed): move on.
            log.warning("schedule %s: cannot start its workflow: %s", schedule.id, exc)
            return None
        return state

    async def _cancel(self, schedule: Schedule, state: ExecutionState) -> None:
        reason = f"schedule {schedule.id} started a newer run"
        try:
            await asyncio.wait_for(
                self._engine.cancel_execution(state.id, reason=reason),
                self.config.cancel_wait_seconds,
            )
        except IllegalTransition:
            # It ended meanwhile (another replica that drives it is sent the cancel).
            log.warning("schedule %s: could not cancel execution %s", schedule.id, state.id)
        except TimeoutError:
            log.warning("schedule %s: execution %s is slow to cancel", schedule.id, state.id)

"""Cron schedules: the value objects, their validation and the cron arithmetic.

A schedule fires at every instant whose wall-clock time in its zone matches its five-field
cron expression. Daylight-saving transitions follow the rules cron users expect:

- A wall time skipped by a spring-forward gap fires once, shifted by the gap (02:30 on a
  day that jumps from 02:00 to 03:00 fires at 03:30); a run that would land on an instant
  that also matches normally fires once.
- A wall time repeated by a fall-back transition fires at its first occurrence only, so a
  daily job runs once a day; expressions that match every hour fire in both occurrences,
  so an hourly job keeps running every real hour.
"""

from __future__ import annotations

import enum
import heapq
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadCronError, CroniterBadDateError, CroniterError, croniter

from engine_service.core import json_schemas
from engine_service.core.errors import InvalidArgument, Problem

# No time zone moves its clocks by more than this at once, so a window this wide around a
# wall time holds every instant that can map to it.
_MAX_SHIFT = timedelta(hours=2)
_CRON_FIELDS = 5


class OverlapPolicy(enum.StrEnum):
    """What a due run does while an earlier run of the same schedule is not finished."""

    SKIP = "SKIP"
    ALLOW = "ALLOW"
    CANCEL_PREVIOUS = "CANCEL_PREVIOUS"


class MissedRunPolicy(enum.StrEnum):
    """What happens to runs that fell due while no engine was ticking."""

    SKIP = "SKIP"
    RUN_ONCE = "RUN_ONCE"


@dataclass(frozen=True, slots=True)
class Schedule:
    id: str
    tenant: str
    workflow_id: str
    cron: str
    created_at: datetime
    # 0: the latest version at each run.
    workflow_version: int = 0
    # IANA name; "" is UTC.
    time_zone: str = ""
    inputs: Mapping[str, Any] = field(default_factory=dict)
    overlap_policy: OverlapPolicy = OverlapPolicy.SKIP
    missed_run_policy: MissedRunPolicy = MissedRunPolicy.SKIP
    paused: bool = False
    # None only while paused.
    next_run_at: datetime | None = None
    last_run_at: datetime | None = None
    last_execution_id: str = ""


@dataclass(frozen=True, slots=True)
class ScheduleQuery:
    tenant: str | None = None
    workflow_id: str = ""
    # 0: the default page size.
    page_size: int = 0
    page_token: str = ""


@dataclass(frozen=True, slots=True)
class ScheduleChanges:
    """An update: None leaves a field as it is."""

    paused: bool | None = None
    overlap_policy: OverlapPolicy | None = None
    missed_run_policy: MissedRunPolicy | None = None
    cron: str | None = None
    time_zone: str | None = None
    inputs: Mapping[str, Any] | None = None


def new_schedule_id() -> str:
    return str(uuid.uuid4())


def run_key(schedule_id: str, scheduled_at: datetime) -> str:
    """The idempotency key of one scheduled run: a run claimed twice still starts once."""
    return f"schedule:{schedule_id}:{scheduled_at.astimezone(UTC).isoformat()}"


# -- validation ----------------------------------------------------------------------------


def zone_of(schedule: Schedule) -> ZoneInfo:
    return ZoneInfo(schedule.time_zone or "UTC")


def schedule_problems(schedule: Schedule, prefix: str = "schedule") -> list[Problem]:
    """Everything wrong with the cron expression and time zone, each under its field."""
    problems: list[Problem] = []
    if not schedule.workflow_id.strip():
        problems.append(Problem(f"{prefix}.workflow_id", "is required"))
    if schedule.workflow_version < 0:
        problems.append(Problem(f"{prefix}.workflow_version", "must not be negative"))
    problems.extend(_zone_problems(schedule.time_zone, f"{prefix}.time_zone"))
    problems.extend(_cron_problems(schedule.cron, f"{prefix}.cron"))
    return problems


def _zone_problems(name: str, path: str) -> list[Problem]:
    if not name:
        return []
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return [Problem(path, f"not an IANA time zone: {name!r}")]
    return []


def _cron_problems(expression: str, path: str) -> list[Problem]:
    if len(expression.split()) != _CRON_FIELDS:
        fields = "minute hour day-of-month month day-of-week"
        return [Problem(path, f"must have 5 fields ({fields}), got {expression!r}")]
    try:
        croniter(expression, datetime(2000, 1, 1)).get_next(datetime)
    except CroniterBadDateError:
        return [Problem(path, f"never matches a date: {expression!r}")]
    except (CroniterBadCronError, CroniterError, ValueError, KeyError) as exc:
        return [Problem(path, f"not a cron expression: {exc}")]
    return []


def check_schedule(schedule: Schedule, prefix: str = "schedule") -> None:
    problems = schedule_problems(schedule, prefix)
    if problems:
        raise InvalidArgument(problems=problems)


def check_inputs(
    inputs: Mapping[str, Any], schema: Mapping[str, Any] | None, path: str = "schedule.inputs"
) -> None:
    """The fixed inputs must satisfy the workflow's input schema, or every run would fail."""
    if not schema:
        return
    problems = [
        Problem(".".join([path, *(str(p) for p in error.absolute_path)]), error.message)
        for error in json_schemas.validation_errors(dict(inputs), schema)
    ]
    if problems:
        raise InvalidArgument(problems=problems)


def apply_changes(schedule: Schedule, changes: ScheduleChanges, now: datetime) -> Schedule:
    """The schedule after `changes`, validated, with its next run recomputed if needed."""
    updated = replace(
        schedule,
        paused=_or(changes.paused, schedule.paused),
        overlap_policy=_or(changes.overlap_policy, schedule.overlap_policy),
        missed_run_policy=_or(changes.missed_run_policy, schedule.missed_run_policy),
        cron=_or(changes.cron, schedule.cron),
        time_zone=_or(changes.time_zone, schedule.time_zone),
        inputs=_or(changes.inputs, schedule.inputs),
    )
    check_schedule(updated)
    timing_changed = (updated.cron, updated.time_zone) != (schedule.cron, schedule.time_zone)
    unpaused = schedule.paused and not updated.paused
    if updated.paused:
        return replace(updated, next_run_at=None)
    if timing_changed or unpaused or updated.next_run_at is None:
        # Runs that fell due while paused are not owed: count from now.
        return replace(updated, next_run_at=next_run_after(updated, now))
    return updated


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


# -- cron arithmetic -----------------------------------------------------------------------


def next_run_after(schedule: Schedule, instant: datetime) -> datetime:
    """The first instant strictly after `instant` at which `schedule` fires (UTC)."""
    return next(runs_after(schedule, instant))


def runs_after(schedule: Schedule, instant: datetime) -> Iterator[datetime]:
    """Every instant strictly after `instant` at which `schedule` fires, in order (UTC).

    Wall times map to instants in order except near a transition, where a later wall
    time can be an earlier instant; candidates wait in a heap until no later wall time
    can precede them.
    """
    zone = zone_of(schedule)
    every_hour = _matches_every_hour(schedule.cron)
    lookback = _MAX_SHIFT if _near_transition(zone, instant) else timedelta(0)
    pending: list[datetime] = []
    last = instant
    for wall in _wall_times_from(schedule.cron, _wall(instant, zone) - lookback):
        while pending and _settled(pending[0], wall, zone):
            moment = heapq.heappop(pending)
            if moment > last:
                last = moment
                yield moment
        for moment in _instants(wall, zone, every_hour=every_hour):
            if moment > last and moment not in pending:
                heapq.heappush(pending, moment)


def latest_run_until(schedule: Schedule, due: datetime, now: datetime) -> datetime:
    """The last firing instant in [due, now], where `due` is itself a firing instant."""
    # Start close to `now`, so days of downtime on a per-minute schedule stay cheap.
    latest = due
    for start in (max(due, now - timedelta(days=1)), due):
        for moment in runs_after(schedule, start):
            if moment > now:
                break
            latest = moment
        if latest != due or start == due:
            return latest
    return latest


def _settled(moment: datetime, wall: datetime, zone: ZoneInfo) -> bool:
    """Whether no wall time from `wall` on can fire before `moment`."""
    moment_wall = _wall(moment, zone)
    if wall > moment_wall + _MAX_SHIFT:
        return True
    return wall > moment_wall and not _near_transition(zone, moment)


def _near_transition(zone: ZoneInfo, instant: datetime) -> bool:
    before = (instant - _MAX_SHIFT).astimezone(zone).utcoffset()
    after = (instant + _MAX_SHIFT).astimezone(zone).utcoffset()
    return before != after


def _wall(instant: datetime, zone: ZoneInfo) -> datetime:
    return instant.astimezone(zone).replace(tzinfo=None)


def _wall_times_from(expression: str, start: datetime) -> Iterator[datetime]:
    """Naive wall times matching `expression`, strictly after `start`, in order."""
    iterator = croniter(expression, start)
    while True:
        yield iterator.get_next(datetime)


def _instants(wall: datetime, zone: ZoneInfo, *, every_hour: bool) -> list[datetime]:
    earlier = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    later = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    if earlier == later:
        return [earlier]
    if earlier > later:
        # A gap: fold=0 reads the wall time with the offset before the jump, which is the
        # wall time shifted forward by the gap.
        return [earlier]
    # Repeated wall time: the first occurrence, and the second too for hourly expressions.
    return [earlier, later] if every_hour else [earlier]


def _matches_every_hour(expression: str) -> bool:
    hours = croniter(expression, datetime(2000, 1, 1)).expanded[1]
    return hours == ["*"] or set(hours) == set(range(24))

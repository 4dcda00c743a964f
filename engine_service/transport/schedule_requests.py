"""Schedule requests into domain values, every problem named by its field.

Enum fields left UNSPECIFIED mean the default on create and "unchanged" on update;
numbers the contract does not define are refused rather than guessed at.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from stepstream.v1 import engine_pb2

from engine_service.core.errors import Problem
from engine_service.core.schedules import (
    MissedRunPolicy,
    OverlapPolicy,
    Schedule,
    ScheduleChanges,
    ScheduleQuery,
)
from engine_service.transport import mapping
from engine_service.transport.requests import RequestCheck

E = TypeVar("E")


def schedule_spec(
    request: engine_pb2.CreateScheduleRequest, tenant: str, inputs: dict[str, Any]
) -> Schedule:
    """What the client asks for (`inputs` already converted); the schedule service
    assigns the id and the times."""
    given = request.schedule
    check = RequestCheck()
    if not request.HasField("schedule"):
        check.problems.append(Problem("schedule", "is required"))
    if given.id:
        check.problems.append(Problem("schedule.id", "is assigned by the server; leave it empty"))
    overlap = _enum(check, given.overlap_policy, "schedule.overlap_policy", _overlap)
    missed = _enum(check, given.missed_run_policy, "schedule.missed_run_policy", _missed)
    check.done()
    return Schedule(
        id="",
        tenant=tenant,
        workflow_id=given.workflow_id,
        workflow_version=given.workflow_version,
        cron=given.cron,
        time_zone=given.time_zone,
        inputs=inputs,
        overlap_policy=overlap or OverlapPolicy.SKIP,
        missed_run_policy=missed or MissedRunPolicy.SKIP,
        paused=given.paused,
        created_at=datetime.min.replace(tzinfo=UTC),
    )


def schedule_changes(
    request: engine_pb2.UpdateScheduleRequest, inputs: dict[str, Any] | None
) -> ScheduleChanges:
    """The changes asked for; `inputs` is the converted `inputs` field, None when unset."""
    check = RequestCheck().required(request.schedule_id, "schedule_id")
    overlap = _enum(check, request.overlap_policy, "overlap_policy", _overlap)
    missed = _enum(check, request.missed_run_policy, "missed_run_policy", _missed)
    check.done()
    return ScheduleChanges(
        paused=request.paused if request.HasField("paused") else None,
        overlap_policy=overlap,
        missed_run_policy=missed,
        cron=request.cron if request.HasField("cron") else None,
        time_zone=request.time_zone if request.HasField("time_zone") else None,
        inputs=inputs,
    )


def schedule_query(request: engine_pb2.ListSchedulesRequest, tenant: str) -> ScheduleQuery:
    RequestCheck().non_negative(request.page_size, "page_size").done()
    return ScheduleQuery(
        tenant=tenant,
        workflow_id=request.workflow_id,
        page_size=request.page_size,
        page_token=request.page_token,
    )


def _overlap(value: int) -> OverlapPolicy | None:
    return mapping.overlap_policy_from_proto(value)


def _missed(value: int) -> MissedRunPolicy | None:
    return mapping.missed_run_policy_from_proto(value)


def _enum(
    check: RequestCheck, value: int, field: str, convert: Callable[[int], E | None]
) -> E | None:
    try:
        return convert(value)
    except ValueError:
        check.problems.append(Problem(field, f"not a defined value: {value}"))
        return None

"""Schedules as values: validation, next-run arithmetic across DST, and updates."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine_service.core.errors import InvalidArgument
from engine_service.core.schedules import (
    OverlapPolicy,
    Schedule,
    ScheduleChanges,
    apply_changes,
    check_schedule,
    latest_run_until,
    next_run_after,
    run_key,
    runs_after,
)

relaxed = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=40)
NEW_YORK = ZoneInfo("America/New_York")
CREATED = datetime(2026, 1, 1, tzinfo=UTC)


def schedule(cron: str, time_zone: str = "", **fields: object) -> Schedule:
    return Schedule("s1", "default", "w", cron, CREATED, time_zone=time_zone, **fields)  # type: ignore[arg-type]


def runs(cron: str, time_zone: str, start: datetime, count: int) -> list[datetime]:
    found = []
    for moment in runs_after(schedule(cron, time_zone), start):
        found.append(moment)
        if len(found) == count:
            return found
    raise AssertionError("unreachable")


def local(year: int, month: int, day: int, hour: int, minute: int = 0, fold: int = 0) -> datetime:
    """A New York wall time as a UTC instant; `fold=1` is a repeated time's second pass."""
    return datetime(year, month, day, hour, minute, tzinfo=NEW_YORK, fold=fold).astimezone(UTC)


# -- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cron", "time_zone", "fields"),
    [
        ("not cron", "", ["schedule.cron"]),
        ("* * * * * *", "", ["schedule.cron"]),
        ("61 * * * *", "", ["schedule.cron"]),
        ("0 0 30 2 *", "", ["schedule.cron"]),
        ("0 9 * * *", "Mars/Olympus_Mons", ["schedule.time_zone"]),
        ("0 9 * * *", "../../etc/passwd", ["schedule.time_zone"]),
        ("", "Nowhere", ["schedule.time_zone", "schedule.cron"]),
    ],
)
def test_bad_cron_or_zone_names_the_field(cron: str, time_zone: str, fields: list[str]) -> None:
    with pytest.raises(InvalidArgument) as caught:
        check_schedule(schedule(cron, time_zone))
    assert [p.path for p in caught.value.problems] == fields


def test_missing_workflow_and_negative_version_are_named() -> None:
    bad = Schedule("s", "t", " ", "0 9 * * *", CREATED, workflow_version=-1)
    with pytest.raises(InvalidArgument) as caught:
        check_schedule(bad)
    paths = [p.path for p in caught.value.problems]
    assert paths == ["schedule.workflow_id", "schedule.workflow_version"]


def test_a_valid_schedule_passes() -> None:
    check_schedule(schedule("*/5 9-17 * * MON-FRI", "Europe/Paris"))


# -- next runs -----------------------------------------------------------------------------


def test_next_run_is_strictly_after_the_instant() -> None:
    every_five = schedule("*/5 * * * *")
    at = datetime(2026, 5, 1, 12, 5, tzinfo=UTC)
    assert next_run_after(every_five, at) == datetime(2026, 5, 1, 12, 10, tzinfo=UTC)
    assert next_run_after(every_five, at - timedelta(microseconds=1)) == at


def test_a_named_zone_fires_at_its_local_time() -> None:
    nine_in_paris = schedule("0 9 * * *", "Europe/Paris")
    winter = next_run_after(nine_in_paris, datetime(2026, 1, 10, tzinfo=UTC))
    summer = next_run_after(nine_in_paris, datetime(2026, 7, 10, tzinfo=UTC))
    assert winter == datetime(2026, 1, 10, 8, tzinfo=UTC)
    assert summer == datetime(2026, 7, 10, 7, tzinfo=UTC)


def test_daily_run_in_a_spring_forward_gap_runs_once_shifted_by_the_gap() -> None:
    # 2026-03-08 in New York: 02:00 EST jumps to 03:00 EDT, so 02:30 does not exist.
    found = runs("30 2 * * *", "America/New_York", local(2026, 3, 7, 12), 3)
    assert found == [local(2026, 3, 8, 3, 30), local(2026, 3, 9, 2, 30), local(2026, 3, 10, 2, 30)]


def test_hourly_run_keeps_one_hour_apart_across_spring_forward() -> None:
    found = runs("30 * * * *", "America/New_York", local(2026, 3, 8, 0), 4)
    gaps = {b - a for a, b in itertools.pairwise(found)}
    assert found[0] == local(2026, 3, 8, 0, 30)
    assert gaps == {timedelta(hours=1)}


def test_daily_run_in_a_fall_back_repeat_runs_once() -> None:
    # 2026-11-01 in New York: 01:00-02:00 happens twice (EDT, then EST).
    found = runs("30 1 * * *", "America/New_York", local(2026, 10, 31, 12), 3)
    assert found == [
        local(2026, 11, 1, 1, 30),
        local(2026, 11, 2, 1, 30),
        local(2026, 11, 3, 1, 30),
    ]


def test_hourly_run_fires_in_both_occurrences_of_a_repeated_hour() -> None:
    found = runs("30 * * * *", "America/New_York", local(2026, 11, 1, 0), 4)
    assert found == [
        local(2026, 11, 1, 0, 30),
        local(2026, 11, 1, 1, 30),
        local(2026, 11, 1, 1, 30, fold=1),
        local(2026, 11, 1, 2, 30),
    ]


def test_next_run_from_inside_a_repeated_hour() -> None:
    every_twenty = schedule("*/20 * * * *", "America/New_York")
    inside_second_one = local(2026, 11, 1, 1, 10, fold=1)
    assert next_run_after(every_twenty, inside_second_one) == local(2026, 11, 1, 1, 20, fold=1)


@relaxed
@given(
    minute=st.sampled_from(["*", "*/7", "15", "0,30", "5-10"]),
    hour=st.sampled_from(["*", "1", "2", "*/3", "0-4"]),
    start=st.one_of(
        # Around New York's two transitions of 2026 (06:00 UTC on 03-08 and 11-01) ...
        st.sampled_from([datetime(2026, 3, 8, 6), datetime(2026, 11, 1, 6)]).flatmap(
            lambda t: st.integers(-300, 120).map(lambda m: t + timedelta(minutes=m))
        ),
        # ... and anywhere else.
        st.datetimes(min_value=datetime(2026, 1, 1), max_value=datetime(2026, 12, 31)),
    ),
)
def test_runs_match_a_minute_by_minute_scan(minute: str, hour: str, start: datetime) -> None:
    """In New York, over three hours: every run the scan finds, in order, no duplicates."""
    cron = f"{minute} {hour} * * *"
    begin = start.replace(tzinfo=UTC, second=0, microsecond=0)
    end = begin + timedelta(hours=3)
    expected = _scan(cron, begin, end)
    found = _take_until(runs_after(schedule(cron, "America/New_York"), begin), end)
    assert found == expected


def _take_until(moments: Iterator[datetime], end: datetime) -> list[datetime]:
    taken: list[datetime] = []
    for moment in moments:
        if moment > end:
            return taken
        taken.append(moment)
    return taken


def _scan(cron: str, begin: datetime, end: datetime) -> list[datetime]:
    """Instants in (begin, end] whose New York wall time matches, minus the DST rules'
    exceptions, which these expressions only meet in the transition hours."""
    found: list[datetime] = []
    minute_field, hour_field = cron.split()[:2]
    moment = begin + timedelta(minutes=1)
    while moment <= end:
        wall = moment.astimezone(NEW_YORK).replace(tzinfo=None)
        shifted = wall - timedelta(hours=1)  # a skipped wall time fires an hour later
        if _matches(minute_field, hour_field, wall) or (
            _skipped(shifted) and _matches(minute_field, hour_field, shifted)
        ):
            found.append(moment)
        moment += timedelta(minutes=1)
    return [t for t in found if _kept(t, hour_field)]


def _matches(minute_field: str, hour_field: str, wall: datetime) -> bool:
    return _field_matches(minute_field, wall.minute) and _field_matches(hour_field, wall.hour)


def _skipped(wall: datetime) -> bool:
    round_trip = wall.replace(tzinfo=NEW_YORK).astimezone(UTC).astimezone(NEW_YORK)
    return round_trip.replace(tzinfo=None) != wall


def _kept(moment: datetime, hour_field: str) -> bool:
    # The second occurrence of a repeated wall time fires only for every-hour expressions.
    wall = moment.astimezone(NEW_YORK)
    return hour_field == "*" or wall.fold == 0 or not _is_repeated(wall)


def _is_repeated(wall: datetime) -> bool:
    naive = wall.replace(tzinfo=None)
    first = naive.replace(tzinfo=NEW_YORK, fold=0).utcoffset()
    second = naive.replace(tzinfo=NEW_YORK, fold=1).utcoffset()
    return first != second


def _field_matches(field: str, value: int) -> bool:
    if field == "*":
        return True
    if field.startswith("*/"):
        return value % int(field[2:]) == 0
    if "-" in field:
        low, high = (int(x) for x in field.split("-"))
        return low <= value <= high
    return value in {int(x) for x in field.split(",")}


def test_latest_run_until_finds_the_last_missed_run_cheaply() -> None:
    every_minute = schedule("* * * * *")
    due = datetime(2026, 1, 1, tzinfo=UTC)
    now = datetime(2026, 3, 1, 0, 0, 30, tzinfo=UTC)
    assert latest_run_until(every_minute, due, now) == datetime(2026, 3, 1, tzinfo=UTC)
    yearly = schedule("0 0 1 1 *")
    assert latest_run_until(yearly, datetime(2020, 1, 1, tzinfo=UTC), now) == datetime(
        2026, 1, 1, tzinfo=UTC
    )
    assert latest_run_until(yearly, due, due) == due


def test_run_keys_differ_per_run_and_ignore_the_zone_an_instant_is_written_in() -> None:
    at = datetime(2026, 5, 1, 12, tzinfo=UTC)
    assert run_key("s", at) == run_key("s", at.astimezone(NEW_YORK))
    assert run_key("s", at) != run_key("s", at + timedelta(minutes=1))
    assert run_key("s", at) != run_key("t", at)


# -- updates -------------------------------------------------------------------------------


def test_pausing_clears_the_next_run_and_unpausing_counts_from_now() -> None:
    hourly = schedule("0 * * * *", next_run_at=datetime(2026, 1, 1, 1, tzinfo=UTC))
    paused = apply_changes(hourly, ScheduleChanges(paused=True), CREATED)
    assert paused.paused
    assert paused.next_run_at is None
    later = datetime(2026, 1, 5, 10, 30, tzinfo=UTC)
    resumed = apply_changes(paused, ScheduleChanges(paused=False), later)
    assert resumed.next_run_at == datetime(2026, 1, 5, 11, tzinfo=UTC)


def test_a_new_cron_or_zone_recomputes_the_next_run_other_changes_keep_it() -> None:
    due = datetime(2026, 1, 1, 1, tzinfo=UTC)
    hourly = schedule("0 * * * *", next_run_at=due)
    moved = apply_changes(hourly, ScheduleChanges(cron="30 * * * *"), CREATED)
    assert moved.next_run_at == datetime(2026, 1, 1, 0, 30, tzinfo=UTC)
    zoned = apply_changes(
        hourly, ScheduleChanges(cron="0 9 * * *", time_zone="Asia/Tokyo"), CREATED
    )
    assert zoned.next_run_at == datetime(2026, 1, 1, 0, tzinfo=UTC) + timedelta(hours=24)
    kept = apply_changes(
        hourly, ScheduleChanges(overlap_policy=OverlapPolicy.ALLOW, inputs={"a": 1}), CREATED
    )
    assert (kept.next_run_at, kept.overlap_policy, kept.inputs) == (
        due,
        OverlapPolicy.ALLOW,
        {"a": 1},
    )


def test_a_bad_change_names_the_field_and_changes_nothing() -> None:
    hourly = schedule("0 * * * *")
    with pytest.raises(InvalidArgument) as caught:
        apply_changes(hourly, ScheduleChanges(time_zone="Atlantis/Capital"), CREATED)
    assert [p.path for p in caught.value.problems] == ["schedule.time_zone"]

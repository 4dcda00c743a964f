"""Rollup deltas: what a batch adds, independent of how the facts were batched."""

from __future__ import annotations

from datetime import timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from analytics_service.core.events import (
    ExecutionEvent,
    ExecutionStatus,
    StepStatus,
    derive_facts,
    unique_by_id,
)
from analytics_service.core.histogram import bucket_index
from analytics_service.core.rollups import (
    EXECUTION_LEVEL,
    HOUR_RESOLUTION,
    MINUTE_RESOLUTION,
    RollupCounts,
    RollupDeltas,
    RollupKey,
    minute_of,
    rollup_deltas,
)
from tests.unit.analytics.builders import T0, execution_event, step_event

EVENTS = (
    step_event("e1", "fetch", seconds=2.0),
    step_event("e1", "charge", status=StepStatus.FAILED, error_type="CardDeclined", seconds=1.0),
    step_event("e1", "charge", attempt=2, seconds=3.0),
    step_event("e2", "fetch", seconds=4.0, finished_at=T0 + timedelta(seconds=90)),
    step_event("e2", "charge", status=StepStatus.TIMED_OUT, seconds=30.0),
    execution_event("e1", seconds=7.0, time_saved=60.0, business_value=2.5),
    execution_event("e2", status=ExecutionStatus.FAILED, seconds=40.0, business_value=9.0),
)


def merged(parts: list[RollupDeltas]) -> dict[RollupKey, RollupCounts]:
    total: dict[RollupKey, RollupCounts] = {}
    for part in parts:
        for key, counts in part.counts.items():
            total[key] = total[key].merge(counts) if key in total else counts
    return total


def test_counts_statuses_retries_and_durations_per_step_and_minute() -> None:
    deltas = rollup_deltas(derive_facts(EVENTS))
    charge = deltas.counts[RollupKey("default", "orders", "charge", minute_of(T0))]
    assert (charge.total, charge.completed, charge.failed, charge.timed_out) == (3, 1, 1, 1)
    assert charge.retries == 1
    assert charge.duration_sum == 34.0
    assert (charge.duration_min, charge.duration_max) == (1.0, 30.0)
    charge_key = RollupKey("default", "orders", "charge", minute_of(T0))
    assert deltas.errors[(charge_key, "CardDeclined")] == 1
    assert deltas.errors[(charge_key, "unknown")] == 1


def test_the_execution_level_counts_return_on_investment_of_successes_only() -> None:
    deltas = rollup_deltas(derive_facts(EVENTS))
    executions = deltas.counts[RollupKey("default", "orders", EXECUTION_LEVEL, minute_of(T0))]
    assert (executions.total, executions.completed, executions.failed) == (2, 1, 1)
    assert executions.time_saved_sum == 60.0
    assert executions.business_value_sum == 2.5


def test_histogram_buckets_count_each_duration() -> None:
    deltas = rollup_deltas(derive_facts(EVENTS))
    key = RollupKey("default", "orders", "fetch", minute_of(T0 + timedelta(seconds=90)))
    assert deltas.histogram[(key, bucket_index(4.0))] == 1


def test_non_terminal_events_yield_no_facts() -> None:
    running = step_event("e3", "fetch", status=StepStatus.RUNNING)
    retrying = step_event("e3", "fetch", status=StepStatus.RETRYING)
    assert derive_facts((running, retrying)).steps == ()


@settings(max_examples=40, deadline=None)
@given(st.permutations(EVENTS), st.integers(min_value=1, max_value=len(EVENTS)))
def test_any_batching_and_order_merges_to_the_same_rollups(
    ordered: list[ExecutionEvent], batch_size: int
) -> None:
    events = tuple(ordered)
    batches = [events[i : i + batch_size] for i in range(0, len(events), batch_size)]
    parts = [rollup_deltas(derive_facts(batch)) for batch in batches]
    assert merged(parts) == rollup_deltas(derive_facts(EVENTS)).counts


def test_a_repeated_event_counts_once() -> None:
    assert unique_by_id(EVENTS + EVENTS[:3]) == EVENTS


def test_hour_rows_are_the_sum_of_their_minute_rows() -> None:
    deltas = rollup_deltas(derive_facts(EVENTS))
    minutes = [c for k, c in deltas.counts.items() if k.resolution == MINUTE_RESOLUTION]
    hours = [c for k, c in deltas.counts.items() if k.resolution == HOUR_RESOLUTION]
    total = RollupCounts()
    for counts in minutes:
        total = total.merge(counts)
    hour_total = RollupCounts()
    for counts in hours:
        hour_total = hour_total.merge(counts)
    assert hour_total == total
    assert all(k.minute % 60 == 0 for k in deltas.counts if k.resolution == HOUR_RESOLUTION)

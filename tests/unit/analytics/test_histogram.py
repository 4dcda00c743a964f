"""The log-bucket histogram: bounded relative error, exact merging."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analytics_service.core.histogram import (
    RELATIVE_ERROR,
    Histogram,
    bucket_index,
    bucket_value,
)

durations = st.floats(min_value=1e-6, max_value=1e6, allow_nan=False)


def percentile_cont(values: list[float], q: float) -> float:
    """Postgres' percentile_cont: linear interpolation between the neighbouring ranks."""
    ordered = sorted(values)
    rank = q * (len(ordered) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (rank - low) * (ordered[high] - ordered[low])


@given(durations)
def test_every_value_is_represented_within_the_relative_error(seconds: float) -> None:
    represented = bucket_value(bucket_index(seconds))
    assert abs(represented - seconds) <= RELATIVE_ERROR * seconds * (1 + 1e-9)


@settings(max_examples=50, deadline=None)
@given(st.lists(durations, min_size=1, max_size=300), st.sampled_from([0.5, 0.95, 0.99, 0.0, 1.0]))
def test_quantiles_are_within_one_percent_of_percentile_cont(values: list[float], q: float) -> None:
    estimate = Histogram.of(values).quantile(q)
    exact = percentile_cont(values, q)
    assert estimate is not None
    assert abs(estimate - exact) <= RELATIVE_ERROR * exact * (1 + 1e-9)


@given(st.lists(durations, max_size=50), st.lists(durations, max_size=50))
def test_merging_equals_building_from_all_values(left: list[float], right: list[float]) -> None:
    assert Histogram.of(left).merge(Histogram.of(right)) == Histogram.of(left + right)


def test_zero_durations_share_a_bucket_and_read_as_zero() -> None:
    histogram = Histogram.of([0.0, 0.0, 2.0])
    assert histogram.quantile(0.0) == 0.0
    assert histogram.quantile(0.5) == 0.0
    assert histogram.quantile(1.0) == pytest.approx(2.0, rel=RELATIVE_ERROR)


def test_empty_histogram_has_no_quantile() -> None:
    assert Histogram().quantile(0.5) is None

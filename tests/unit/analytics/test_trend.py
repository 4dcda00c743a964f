"""Least-squares trends: direction, R², p-value, and too few points said as such."""

from __future__ import annotations

import math

import pytest

from analytics_service.core.trend import (
    TrendDirection,
    fit_trend,
    regularized_incomplete_beta,
    student_t_two_sided,
)


def test_a_steadily_increasing_series_is_increasing_with_a_perfect_fit() -> None:
    fit = fit_trend([1.0, 2.0, 3.0, 4.0, 5.0])
    assert fit.direction is TrendDirection.INCREASING
    assert fit.slope == pytest.approx(1.0)
    assert fit.r_squared == pytest.approx(1.0)
    assert fit.p_value < 1e-6


def t4_two_sided(t: float) -> float:
    """Student's t with 4 degrees of freedom has a closed-form CDF: an independent check."""
    a = 1 + t * t / 4
    cdf = 0.5 + 3 / 8 * (t / math.sqrt(a)) * (1 - t * t / (12 * a))
    return 2 * (1 - cdf)


def test_a_noisy_decreasing_series_has_the_least_squares_fit() -> None:
    values = [10.2, 7.9, 6.1, 3.8, 2.2, -0.1]
    # By hand: x = 0..5, Sxx = 17.5, Sxy = -35.45.
    mean = sum(values) / len(values)
    syy = sum((v - mean) ** 2 for v in values)
    residual = syy - 35.45**2 / 17.5
    t = (35.45 / 17.5) / math.sqrt(residual / 4 / 17.5)

    fit = fit_trend(values)

    assert fit.direction is TrendDirection.DECREASING
    assert fit.slope == pytest.approx(-35.45 / 17.5)
    assert fit.r_squared == pytest.approx(35.45**2 / (17.5 * syy))
    assert fit.p_value == pytest.approx(t4_two_sided(t), rel=1e-6)


@pytest.mark.parametrize("t", [0.5, 1.0, 2.0, 3.5, 8.0])
def test_p_values_match_the_closed_form_for_four_degrees_of_freedom(t: float) -> None:
    assert student_t_two_sided(t, 4) == pytest.approx(t4_two_sided(t), rel=1e-9)


def test_a_flat_series_is_flat() -> None:
    fit = fit_trend([5.0, 5.0, 5.0, 5.0])
    assert fit.direction is TrendDirection.FLAT
    assert fit.slope == 0.0


def test_noise_without_trend_is_flat() -> None:
    fit = fit_trend([5.0, 4.0, 6.0, 5.0, 4.0, 6.0])
    assert fit.direction is TrendDirection.FLAT
    assert fit.p_value > 0.05


@pytest.mark.parametrize("points", [[], [1.0], [1.0, 2.0]])
def test_fewer_than_three_points_is_insufficient_data(points: list[float]) -> None:
    fit = fit_trend(points)
    assert fit.direction is TrendDirection.INSUFFICIENT_DATA
    assert fit.points == len(points)


@pytest.mark.parametrize(
    ("t", "degrees", "expected"),
    [(2.0, 10, 0.073388), (1.0, 1, 0.5), (3.0, 5, 0.030099), (0.0, 4, 1.0), (12.706, 1, 0.05)],
)
def test_student_t_two_sided_matches_tables(t: float, degrees: int, expected: float) -> None:
    assert student_t_two_sided(t, degrees) == pytest.approx(expected, abs=2e-5)


def test_incomplete_beta_is_symmetric() -> None:
    a, b, x = 2.5, 4.0, 0.3
    assert regularized_incomplete_beta(a, b, x) == pytest.approx(
        1 - regularized_incomplete_beta(b, a, 1 - x)
    )

"""Least-squares trends over bucketed series, with R² and the slope's two-sided p-value."""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass

MIN_POINTS = 3
# A slope counts as a trend only when it is this unlikely under "no trend".
SIGNIFICANCE = 0.05


class TrendDirection(enum.Enum):
    INCREASING = "increasing"
    DECREASING = "decreasing"
    FLAT = "flat"
    INSUFFICIENT_DATA = "insufficient_data"


@dataclass(frozen=True)
class TrendFit:
    direction: TrendDirection
    points: int
    slope: float = 0.0
    r_squared: float = 0.0
    p_value: float = 1.0


def fit_trend(values: Sequence[float]) -> TrendFit:
    """Fit value = a + slope * i over bucket positions i = 0, 1, ...

    Fewer than MIN_POINTS points leave nothing to test and say so rather than guess.
    """
    n = len(values)
    if n < MIN_POINTS:
        return TrendFit(direction=TrendDirection.INSUFFICIENT_DATA, points=n)
    mean_x = (n - 1) / 2
    mean_y = math.fsum(values) / n
    sxx = math.fsum((i - mean_x) ** 2 for i in range(n))
    sxy = math.fsum((i - mean_x) * (y - mean_y) for i, y in enumerate(values))
    syy = math.fsum((y - mean_y) ** 2 for y in values)
    slope = sxy / sxx
    if syy <= _negligible(mean_y, n):
        return TrendFit(direction=TrendDirection.FLAT, points=n)
    residual = max(syy - slope * sxy, 0.0)
    r_squared = min(max(1 - residual / syy, 0.0), 1.0)
    p_value = _slope_p_value(slope, sxx, residual, n)
    return TrendFit(
        direction=_direction(slope, p_value),
        points=n,
        slope=slope,
        r_squared=r_squared,
        p_value=p_value,
    )


def _negligible(mean: float, n: int) -> float:
    # Rounding noise of values that are really all equal.
    return (1e-12 * max(abs(mean), 1.0)) ** 2 * n


def _direction(slope: float, p_value: float) -> TrendDirection:
    if p_value >= SIGNIFICANCE or slope == 0:
        return TrendDirection.FLAT
    return TrendDirection.INCREASING if slope > 0 else TrendDirection.DECREASING


def _slope_p_value(slope: float, sxx: float, residual: float, n: int) -> float:
    degrees = n - 2
    standard_error = math.sqrt(residual / degrees / sxx)
    if standard_error == 0:
        return 0.0
    t = abs(slope / standard_error)
    return student_t_two_sided(t, degrees)


def student_t_two_sided(t: float, degrees: int) -> float:
    """P(|T| >= t) for Student's t with `degrees` degrees of freedom."""
    x = degrees / (degrees + t * t)
    return regularized_incomplete_beta(degrees / 2, 0.5, x)


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b) by Lentz's continued fraction (Numerical Recipes, betai)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    front = math.exp(log_front)
    if x < (a + 1) / (a + b + 2):
        return front * _beta_fraction(a, b, x) / a
    return 1 - front * _beta_fraction(b, a, 1 - x) / b


def _beta_fraction(a: float, b: float, x: float) -> float:
    tiny = 1e-300
    c, d = 1.0, 1 - (a + b) * x / (a + 1)
    d = 1 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 300):
        for numerator in _fraction_terms(a, b, x, m):
            d = 1 + numerator * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + numerator / c
            c = c if abs(c) > tiny else tiny
            step = c * d
            result *= step
        if abs(step - 1) < 1e-14:
            break
    return result


def _fraction_terms(a: float, b: float, x: float, m: int) -> tuple[float, float]:
    even = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
    odd = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
    return even, odd

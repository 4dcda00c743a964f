"""Alert conditions and the FIRING/RESOLVED state machine."""

from __future__ import annotations

import pytest

from analytics_service.core.alerts import AlertState, Comparator, next_state


@pytest.mark.parametrize(
    ("comparator", "below", "equal", "above"),
    [
        (Comparator.GREATER_THAN, False, False, True),
        (Comparator.GREATER_OR_EQUAL, False, True, True),
        (Comparator.LESS_THAN, True, False, False),
        (Comparator.LESS_OR_EQUAL, True, True, False),
        (Comparator.EQUAL, False, True, False),
        (Comparator.NOT_EQUAL, True, False, True),
    ],
)
def test_every_comparator_applies_its_condition(
    comparator: Comparator, below: bool, equal: bool, above: bool
) -> None:
    assert comparator.holds(0.4, 0.5) is below
    assert comparator.holds(0.5, 0.5) is equal
    assert comparator.holds(0.6, 0.5) is above


@pytest.mark.parametrize(
    ("current", "holds", "expected"),
    [
        (AlertState.OK, True, AlertState.FIRING),
        (AlertState.OK, False, None),
        (AlertState.FIRING, True, None),
        (AlertState.FIRING, False, AlertState.RESOLVED),
        (AlertState.RESOLVED, True, AlertState.FIRING),
        (AlertState.RESOLVED, False, None),
    ],
)
def test_transitions(current: AlertState, holds: bool, expected: AlertState | None) -> None:
    assert next_state(current, holds) is expected

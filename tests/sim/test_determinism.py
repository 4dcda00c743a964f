"""The simulator itself: one seed is one run, event for event, so any failure it reports
replays from its seed."""

from __future__ import annotations

from typing import Any

import pytest

from tests.sim.faults import Shape, make_faults
from tests.sim.record import Record
from tests.sim.schedule import run_world
from tests.sim.tiers import MemoryTier
from tests.sim.workflows import make_scenario


def fingerprint(record: Record) -> list[Any]:
    """Everything that happened, in order, ids included."""
    events = [
        (e.execution_id, e.sequence, e.timestamp, e.kind, e.step_id, e.step_status, e.attempt)
        for execution in sorted(record.executions)
        for e in record.events[execution]
    ]
    attempts = [
        (a.process, a.execution_id, a.step_id, a.role, a.attempt, a.began, a.ended, a.outcome)
        for a in record.ledger.attempts
    ]
    commands = [(c.kind, c.target, c.process, c.issued, c.result) for c in record.commands]
    return [events, attempts, commands, record.fault_log, record.ended]


@pytest.mark.parametrize("seed", range(0, 120, 7))
def test_the_same_seed_gives_the_same_run(seed: int) -> None:
    scenario = make_scenario(seed)
    shape = Shape(duration=20.0, processes=scenario.processes, commits=(30,) * scenario.processes)
    faults = make_faults(seed, shape, single_process=scenario.single_process)
    first = run_world(scenario, faults, MemoryTier(), seed, "determinism")
    again = run_world(scenario, faults, MemoryTier(), seed, "determinism")
    assert fingerprint(first) == fingerprint(again)
    assert first.executions, "the schedule ran nothing"

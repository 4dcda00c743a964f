"""One schedule, from its seed to its violations.

Seed `s` draws the scenario (workflows and commands) of `s // FAULTS_PER_SCENARIO` and
the faults of `s`, so consecutive seeds share a scenario and its fault-free run, which
is run once on the in-memory store and kept. Everything random comes from the seed:
the scenario and the faults, each engine's jitter (`Engine(rng=...)`), and the ids the
engine draws from `uuid.uuid4`, which is seeded for the run. The same seed gives the
same run, event for event (the SQL tiers wait on real I/O and are reproducible in what
they are asked, not to the event).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import random
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import looptime

from tests.sim.faults import Fault, Shape, make_faults
from tests.sim.history import Violation
from tests.sim.invariants import check
from tests.sim.record import Record
from tests.sim.tiers import MemoryTier, Tier
from tests.sim.workflows import Scenario, make_scenario
from tests.sim.world import World

FAULTS_PER_SCENARIO = 4


@dataclass
class Result:
    seed: int
    tier: str
    violations: list[Violation]
    record: Record
    reference: Record
    wall: float

    @property
    def failed(self) -> bool:
        return bool(self.violations)

    def report(self) -> str:
        lines = [
            f"seed {self.seed} on {self.tier}: {len(self.violations)} violation(s)",
            f"  reproduce: STEPSTREAM_SIM_SEED={self.seed} STEPSTREAM_SIM_SCHEDULES=1 "
            f"(or: PYTHONPATH=. .venv/bin/python -m tests.sim --seed {self.seed})",
            "  faults: " + ("; ".join(f.describe() for f in self.record.faults) or "none"),
        ]
        lines += [f"  - {v}" for v in self.violations]
        return "\n".join(lines)


@contextlib.contextmanager
def _seeded_ids(seed: str) -> Iterator[None]:
    rng = random.Random(seed)
    original = uuid.uuid4
    uuid.uuid4 = lambda: uuid.UUID(int=rng.getrandbits(128), version=4)
    try:
        yield
    finally:
        uuid.uuid4 = original


@contextlib.contextmanager
def _quiet_logs() -> Iterator[None]:
    """The engine logs every fault it rides out: thousands of lines a run."""
    before = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        yield
    finally:
        logging.disable(before)


def run_world(
    scenario: Scenario, faults: tuple[Fault, ...], tier: Tier, seed: int, kind: str
) -> Record:
    # With no I/O to wait for (the in-memory tier), nothing but a timer can happen once
    # no callback is ready, so virtual time may jump at once; looptime's default of 42
    # idle cycles first is for real I/O (the SQL tiers).
    loop = looptime.new_event_loop(start=0.0, noop_cycles=42 if tier.holds_time else 1)
    try:
        with _seeded_ids(f"ids-{kind}-{seed}"), _quiet_logs():
            world = World(scenario, faults, tier, seed, tenant=f"sim-{kind}-{seed}")
            return loop.run_until_complete(world.run())
    finally:
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()
        if tier.holds_time:
            _reclaim_dead_connections()


def _reclaim_dead_connections() -> None:
    """A stopped process's tasks were cancelled wherever they were, some holding a pooled
    connection; the OS would close a dead process's sockets, here the collector does, now
    rather than in some later test (SQLAlchemy warns when it does)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "The garbage collector is trying to clean up")
        gc.collect()


_references: dict[str, tuple[Record, list[Violation]]] = {}


def reference_run(scenario: Scenario) -> tuple[Record, list[Violation]]:
    """The fault-free run of a scenario, and what it broke by itself (kept per scenario)."""
    key = scenario.key
    if key not in _references:
        if len(_references) > 16:
            _references.clear()
        record = run_world(scenario, (), MemoryTier(), scenario.seed, "reference")
        _references[key] = (record, check(record))
    return _references[key]


def simulate(seed: int, tier: Callable[[], Tier] = MemoryTier) -> Result:
    """Schedule `seed`: its scenario and faults drawn, run, checked."""
    made = tier()
    scenario = make_scenario(seed // FAULTS_PER_SCENARIO)
    if made.single_process:
        scenario = scenario.on_one_process()
    reference, _ = reference_run(scenario)
    shape = Shape(reference.ended, scenario.processes, reference.commits)
    faults = make_faults(seed, shape, single_process=scenario.single_process)
    return run_schedule(seed, scenario, faults, made)


def run_schedule(seed: int, scenario: Scenario, faults: tuple[Fault, ...], tier: Tier) -> Result:
    """One schedule as given (a pinned one, say), checked against its fault-free run."""
    began = time.perf_counter()
    reference, broken = reference_run(scenario)
    record = run_world(scenario, faults, tier, seed, "faults")
    violations = [
        Violation(f"{v.invariant} (fault-free run)", v.execution_id, v.detail, v.excerpt)
        for v in broken
    ]
    violations += check(record, reference)
    return Result(seed, tier.name, violations, record, reference, time.perf_counter() - began)

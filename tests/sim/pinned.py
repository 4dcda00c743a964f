"""Schedules that found a bug, kept as they were drawn (tests/sim/pinned/*.json).

A seed names a schedule only as long as the generators draw the same way, so a schedule
worth keeping is stored whole: its scenario (the definitions as submitted, the runs
started, the commands) and its faults. `python -m tests.sim --seed N --pin NAME` writes
one, marked `"open": true` (expected to fail) until the bug is fixed; the tests replay
every one.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tests.sim.faults import Fault
from tests.sim.workflows import CommandPlan, RootPlan, Scenario

DIRECTORY = Path(__file__).parent / "pinned"


def save(name: str, seed: int, scenario: Scenario, faults: tuple[Fault, ...], note: str) -> Path:
    """Keep a schedule that found a bug; it is open (expected to fail) until fixed."""
    path = DIRECTORY / f"{name}.json"
    data = {
        "seed": seed,
        "note": note,
        "open": True,
        "scenario": asdict(scenario),
        "faults": [asdict(f) for f in faults],
    }
    DIRECTORY.mkdir(exist_ok=True)
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    return path


def load(path: Path) -> tuple[int, Scenario, tuple[Fault, ...]]:
    data: dict[str, Any] = json.loads(path.read_text())
    raw = data["scenario"]
    scenario = Scenario(
        seed=raw["seed"],
        definitions=tuple(raw["definitions"]),
        roots=tuple(RootPlan(**r) for r in raw["roots"]),
        commands=tuple(CommandPlan(**c) for c in raw["commands"]),
        processes=raw["processes"],
        slots=raw["slots"],
        single_process=raw["single_process"],
        lease=tuple(raw.get("lease", (10.0, 2.0))),
    )
    return int(data["seed"]), scenario, tuple(Fault(**f) for f in data["faults"])


def is_open(path: Path) -> bool:
    """Whether the bug the schedule found is still open (it is expected to fail)."""
    return bool(json.loads(path.read_text()).get("open", False))


def every() -> list[Path]:
    return sorted(DIRECTORY.glob("*.json"))

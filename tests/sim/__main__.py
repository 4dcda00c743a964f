"""`python -m tests.sim --seed N [--tier memory|sqlite|postgres] [--histories]`: replay
schedules and print what broke."""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from tests.sim import pinned
from tests.sim.history import line
from tests.sim.schedule import Result, run_schedule, simulate
from tests.sim.tiers import MemoryTier, SqlTier, Tier


def _tier(name: str) -> Callable[[], Tier]:
    if name == "memory":
        return MemoryTier
    if name == "sqlite":
        path = os.path.join(tempfile.mkdtemp(prefix="stepstream-sim-"), "sim.db")
        return lambda: SqlTier(f"sqlite+aiosqlite:///{path}")
    url = os.environ.get("STEPSTREAM_SIM_POSTGRES_URL", "")
    if not url:
        raise SystemExit("set STEPSTREAM_SIM_POSTGRES_URL to a scratch database's SQLAlchemy URL")
    return lambda: SqlTier(url)


def _print(result: Result, histories: bool) -> None:
    print(result.report())
    if not histories:
        return
    print("  fault log:")
    for at, what in result.record.fault_log:
        print(f"    t={at:.3f} {what}")
    print("  commands:")
    for command in result.record.commands:
        print(
            f"    t={command.issued:.3f} {command.kind} {command.target[:8]} on {command.process}"
            f" (local={command.local}): {command.result}"
        )
    for run, record in (("with faults", result.record), ("fault-free", result.reference)):
        print(f"  histories ({run}):")
        for state in record.executions.values():
            parent = (
                f" child of {state.parent_execution_id[:8]}/{state.parent_step_id}"
                if state.parent_execution_id
                else ""
            )
            print(f"   {state.id[:8]} {state.workflow_id} {state.status}{parent}")
            for event in record.events[state.id]:
                print("    " + line(event))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--tier", default="memory", choices=("memory", "sqlite", "postgres"))
    parser.add_argument("--histories", action="store_true")
    parser.add_argument("--pin", default="", help="keep the schedule as tests/sim/pinned/NAME.json")
    parser.add_argument("--note", default="", help="what the pinned schedule found")
    parser.add_argument("--replay", default="", help="run a pinned schedule (a .json path)")
    args = parser.parse_args()
    tier = _tier(args.tier)
    if args.replay:
        seed, scenario, faults = pinned.load(Path(args.replay))
        _print(run_schedule(seed, scenario, faults, tier()), args.histories)
        return
    failed = 0
    for seed in range(args.seed, args.seed + args.count):
        result = simulate(seed, tier)
        if result.failed or args.count == 1:
            _print(result, args.histories)
        if args.pin:
            record = result.record
            print("pinned:", pinned.save(args.pin, seed, record.scenario, record.faults, args.note))
        failed += result.failed
    print(f"{failed} of {args.count} schedules broke an invariant")


if __name__ == "__main__":
    main()

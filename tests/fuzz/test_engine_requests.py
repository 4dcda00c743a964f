"""Generated requests against the engine, on SQLite and on Postgres.

Never INTERNAL or UNKNOWN; no unary call frozen; health answered within its 1 s deadline
all along; afterwards the engine still runs a workflow to completion, and the database
holds no partial rows. The counts by status code are printed.
"""

from __future__ import annotations

import logging
import time

import pytest
from stepstream.v1 import engine_pb2

from tests.fuzz.burst import BurstResult, burst_from_another_process, probing
from tests.fuzz.conftest import burst_timeout, requests_per_run
from tests.fuzz.engine_world import EngineWorld, engine_world
from tests.fuzz.invariants import ENGINE_RULES, broken_rules_at
from tests.integration.engine.helpers import chain, execution_status, register, run_to_end

ENGINE_SERVICE = engine_pb2.DESCRIPTOR.services_by_name["EngineService"]


def _report(result: BurstResult, title: str, capsys: pytest.CaptureFixture[str]) -> None:
    with capsys.disabled():
        print(f"\n{result.summary(title)}")
        for method, counts in sorted(result.by_method.items()):
            print(f"  {method}: {dict(counts.most_common())}")


@pytest.mark.timeout(burst_timeout())
async def test_generated_requests_never_break_the_engine(
    database_url: str,
    fuzz_seed: str,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="engine_service")
    async with engine_world(database_url) as world:
        async with probing(world.target, ENGINE_SERVICE.full_name) as probe:
            started = time.perf_counter()
            result = await burst_from_another_process(
                {
                    "service": "engine",
                    "target": world.target,
                    "seed": fuzz_seed,
                    "count": requests_per_run(),
                    "strings": world.strings,
                }
            )
        elapsed = time.perf_counter() - started
        _report(result, f"engine on {database_url.split('+')[0]} in {elapsed:.1f}s", capsys)
        replay = f"replay with STEPSTREAM_FUZZ_SEED={fuzz_seed}"
        assert result.findings == [], f"{replay}:\n" + "\n".join(map(str, result.findings))
        assert probe.missed == [], f"{replay}: health missed {probe.missed[:5]}"
        assert probe.answered > 0
        await _still_runs_workflows(world)
    problems = await broken_rules_at(database_url, ENGINE_RULES)
    assert problems == [], f"{replay}: partial rows: {problems}"
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], f"{replay}: the engine logged errors: {errors[:5]}"


async def _still_runs_workflows(world: EngineWorld) -> None:
    await register(world.stub, chain("after-the-burst", "noop", "echo", echo={"ok": True}))
    execution = await run_to_end(world.stub, "after-the-burst")
    assert execution.status == execution_status("COMPLETED")

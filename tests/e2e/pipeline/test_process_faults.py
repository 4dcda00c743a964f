"""Faults at process level: engine kills, a Postgres stop and an analytics outage, at once.

Concurrent executions of several workflows (layers of delays, retries, a tolerated and a
final failure, a sub-workflow) run on engine and analytics processes sharing one private
Postgres server while the engine is killed with SIGKILL several times in a row (and
restarted each time on the same database), Postgres is stopped mid-run, and analytics
is down for the middle third of the run. Afterwards every execution has ended with the
status its workflow determines, no completed step ran again, every history is gap-free,
the outbox drained, and analytics' totals equal the engine's exactly.

CI runs a reduced size; `make soak` (STEPSTREAM_SOAK=1) runs the issue's: 100
executions, five kills, Postgres down 10 s. The figures are printed (`-s` to see them).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from grpc import aio
from stepstream.v1 import analytics_pb2_grpc, engine_pb2, engine_pb2_grpc

from tests.e2e.pipeline import soak_checks as checks
from tests.e2e.pipeline.fault_rig import Rig
from tests.e2e.pipeline.soak_workload import (
    CHILD,
    FULL,
    Size,
    chosen_size,
    expected_status,
    register_all,
    start_all,
)
from tests.integration.engine.helpers import bounded
from tests.private_postgres import PrivatePostgres

pytestmark = pytest.mark.e2e
SIZE = chosen_size()


@pytest.fixture
async def rig(private_postgres: PrivatePostgres, tmp_path: Path) -> AsyncIterator[Rig]:
    rig = Rig(private_postgres, tmp_path)
    try:
        await rig.start()
        yield rig
    finally:
        await rig.close()


async def all_ended(rig: Rig, seconds: float) -> list[engine_pb2.Execution]:
    """Every execution, once all of them have ended (asked of whichever engine is up)."""

    async def poll() -> list[engine_pb2.Execution]:
        while True:
            async with aio.insecure_channel(rig.current.target) as channel:
                found = await checks.every_execution(engine_pb2_grpc.EngineServiceStub(channel))
            if all(e.status in checks.TERMINAL for e in found):
                return found
            await asyncio.sleep(0.5)

    try:
        return await bounded(poll(), seconds)
    except TimeoutError:
        left = await rig.unfinished()
        raise AssertionError(
            f"{left} executions never ended within {seconds}s; see {rig.engine_log}"
        ) from None


async def drained(rig: Rig, seconds: float) -> float:
    """Seconds until the outbox holds nothing undelivered."""
    began = time.monotonic()

    async def poll() -> None:
        while True:
            if not await rig.backlog():
                return
            await asyncio.sleep(0.2)

    try:
        await bounded(poll(), seconds)
    except TimeoutError:
        raise AssertionError(
            f"{await rig.backlog()} events still undelivered after {seconds}s; "
            f"see {rig.engine_log} and {rig.analytics.log}"
        ) from None
    return time.monotonic() - began


def status_violations(executions: list[engine_pb2.Execution], started: dict[str, str]) -> list[str]:
    """Each run ended as its workflow determines; each parent has exactly one child."""
    problems = [
        f"{e.id} ({e.workflow_id}) ended {checks.execution_status_name(e.status)}"
        for e in executions
        if checks.execution_status_name(e.status) != expected_status(e.workflow_id)
    ]
    children = Counter(e.parent_execution_id for e in executions if e.parent_execution_id)
    parents = [i for i, workflow_id in started.items() if workflow_id == "parent"]
    problems += [f"parent {i} has {children[i]} children" for i in parents if children[i] != 1]
    unplanned = {e.id for e in executions if not e.parent_execution_id} - set(started)
    problems += [f"{i} was never started by the test" for i in sorted(unplanned)]
    assert all(e.workflow_id == CHILD for e in executions if e.parent_execution_id)
    return problems


@dataclass
class Outcome:
    problems: list[str]
    engine: checks.Tally
    analytics: checks.Tally
    overview_executions: int
    lost_attempts: int


async def outcome(
    rig: Rig, started: dict[str, str], executions: list[engine_pb2.Execution]
) -> Outcome:
    """Every check of the ended run, and the figures the report prints."""
    async with aio.insecure_channel(rig.current.target) as channel:
        stub = engine_pb2_grpc.EngineServiceStub(channel)
        histories = await checks.read_histories(stub, [e.id for e in executions])
    problems = status_violations(executions, started)
    for history in histories.values():
        problems += checks.history_violations(history)
    if problems:
        _keep_for_findings(rig, problems, histories)
    problems += await rig.sequence_violations()
    if set_aside := await rig.set_aside():
        problems.append(f"the relay set {set_aside} events aside instead of delivering them")
    ours = checks.engine_tally(histories.values())
    async with aio.insecure_channel(f"127.0.0.1:{rig.analytics.port}") as channel:
        theirs, overview, workflow_retries = await checks.analytics_tally(
            analytics_pb2_grpc.AnalyticsServiceStub(channel), ours.workflows
        )
    problems += checks.tally_differences(ours, theirs)
    if overview != len(executions):
        problems.append(f"analytics' overview counts {overview} executions of {len(executions)}")
    if workflow_retries != sum(ours.retries.values()):
        problems.append(f"analytics' workflow metrics count {workflow_retries} retries")
    lost = sum(
        e.kind == checks.STEP_CHANGED and e.error.type == "EngineRestarted"
        for h in histories.values()
        for e in h.events
    )
    return Outcome(problems, ours, theirs, overview, lost)


def _keep_for_findings(rig: Rig, problems: list[str], histories: dict[str, checks.History]) -> None:
    """The histories a finding names (with their parents and children) beside the logs."""
    named = {i for i in histories if any(i in problem for problem in problems)}
    named |= {histories[i].execution.parent_execution_id for i in named} - {""}
    named |= {i for i, h in histories.items() if h.execution.parent_execution_id in named}
    text = "\n\n".join(checks.describe(histories[i]) for i in sorted(named) if i in histories)
    (rig.engine_log.parent / "findings.txt").write_text("\n".join(problems) + "\n\n" + text)


def report(size: Size, rig: Rig, result: Outcome, run: float, drain: float, events: int) -> str:
    f, ours, theirs = rig.figures, result.engine, result.analytics
    statuses: Counter[str] = Counter()
    for (_, status), n in ours.executions.items():
        statuses[status] += n
    completed = sum(n for (_, _, s), n in ours.attempts.items() if s == "COMPLETED")
    down_from, down_to = f.analytics_down
    restarts = ", ".join(f"{s:.1f}" for s in f.restart_seconds)
    return "\n".join(
        [
            f"process faults ({'full' if size is FULL else 'reduced'} size):",
            f"  executions: {sum(statuses.values())} ({size.executions} started, the rest "
            f"sub-workflow children): {dict(sorted(statuses.items()))}",
            f"  step attempts finished: {ours.total_attempts()} ({completed} steps completed), "
            f"retries {sum(ours.retries.values())}, attempts lost to faults "
            f"{result.lost_attempts}; events {events}",
            f"  kill -9 of the engine: {f.kills} (restarts took {restarts} s)",
            f"  Postgres down {f.database_down_seconds:.1f} s; analytics down "
            f"{down_to - down_from:.1f} s (t={down_from:.1f}..{down_to:.1f} s of a "
            f"{run:.1f} s run)",
            f"  unfinished executions at each fault: {f.unfinished_at}",
            f"  outbox: {f.backlog_at_analytics_return} events held when analytics came back; "
            f"drained to 0 {drain:.1f} s after the last execution ended",
            f"  analytics / engine: executions {sum(theirs.executions.values())} / "
            f"{sum(ours.executions.values())} (overview {result.overview_executions}), "
            f"step attempts {theirs.total_attempts()} / {ours.total_attempts()}, retries "
            f"{sum(theirs.retries.values())} / {sum(ours.retries.values())}",
        ]
    )


@pytest.mark.timeout(SIZE.test_timeout)
async def test_kills_a_database_stop_and_an_analytics_outage_lose_nothing(rig: Rig) -> None:
    size = SIZE
    async with aio.insecure_channel(rig.current.target) as channel:
        stub = engine_pb2_grpc.EngineServiceStub(channel)
        await register_all(stub, size)
        began = time.monotonic()
        started = await start_all(stub, size)
    await asyncio.gather(rig.engine_faults(began, size), rig.analytics_outage(began, size))
    executions = await all_ended(rig, size.end_within_seconds)
    run = time.monotonic() - began
    drain = await drained(rig, size.drain_within_seconds)

    result = await outcome(rig, started, executions)
    print(report(size, rig, result, run, drain, await rig.events()))
    assert not result.problems, "\n".join(result.problems[:50])
    assert rig.figures.kills == size.kills
    # Each fault landed while executions were still running.
    assert all(rig.figures.unfinished_at.values()), rig.figures.unfinished_at
    assert rig.current.process.returncode is None

"""Engine throughput over gRPC against Postgres, next to pgbench on the same database.

    .venv/bin/python -m bench.engine_throughput --executions 100

Starts `python -m engine_service` on a fresh database, runs N concurrent executions of a
10x10 layered DAG of `noop` steps (each step depends on every step of the layer before),
then executions paced to ask for half the peak step rate, and reports steps/s and two
latencies, from the events' own timestamps, measured from the moment a step's last
dependency settled (its COMPLETED event, or the execution's RUNNING event for the first
layer):

- dispatch: to the step's RUNNING event, i.e. until the engine decided to run the step and
  staged the event (the dependency's COMPLETED need not be durable yet: one execution's
  writes are ordered, see `Runner._commit_pipelined`);
- action start: to the moment the step's action was invoked, which is after its RUNNING
  event is durable (the COMPLETED event's time minus the attempt's duration).

Then `pgbench -N` runs on the same database with one client (its default: one transaction
and one fsync at a time, the rate a store without group commit would be bound to); the
ratio of steps/s to that TPS is the figure to watch (target >= 2). `pgbench -N` with
several clients (Postgres's own group commit across connections) is printed beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
from google.protobuf import json_format
from grpc import aio
from stepstream.v1 import engine_pb2, engine_pb2_grpc, events_pb2, workflow_pb2

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
WORKFLOW_ID = "bench_layered_dag"
LAYERS = WIDTH = 10
LISTENING = re.compile(r"engine listening on 127\.0\.0\.1:(\d+)")
TERMINAL = [
    events_pb2.ExecutionStatus.Value(f"EXECUTION_STATUS_{name}")
    for name in ("COMPLETED", "COMPLETED_WITH_ERRORS", "FAILED", "CANCELLED", "TIMED_OUT")
]
RUNNING_STEP = events_pb2.StepStatus.Value("STEP_STATUS_RUNNING")
SETTLED_STEP = {
    events_pb2.StepStatus.Value(f"STEP_STATUS_{name}")
    for name in ("COMPLETED", "FAILED", "TIMED_OUT", "SKIPPED", "CANCELLED")
}
COMPLETED_STEP = events_pb2.StepStatus.Value("STEP_STATUS_COMPLETED")
RUNNING_EXECUTION = events_pb2.ExecutionStatus.Value("EXECUTION_STATUS_RUNNING")


@dataclass(frozen=True)
class RunFigures:
    executions: int
    steps_per_second: float
    dispatch_p50_ms: float
    dispatch_p99_ms: float
    action_start_p50_ms: float
    action_start_p99_ms: float


def layered_dag() -> workflow_pb2.WorkflowDefinition:
    steps: list[dict[str, Any]] = []
    for layer in range(LAYERS):
        for index in range(WIDTH):
            step: dict[str, Any] = {"id": f"l{layer}_{index}", "action": "noop"}
            if layer:
                step["depends_on"] = [f"l{layer - 1}_{i}" for i in range(WIDTH)]
            steps.append(step)
    return json_format.ParseDict(
        {"id": WORKFLOW_ID, "steps": steps}, workflow_pb2.WorkflowDefinition()
    )


# ---- the database and the engine process ------------------------------------------------


def with_database(url: str, database: str) -> str:
    return url.rpartition("/")[0] + "/" + database


async def create_database(admin_url: str) -> str:
    name = f"stepstream_bench_{uuid.uuid4().hex[:10]}"
    connection = await asyncpg.connect(admin_url, timeout=10)
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    return name


async def drop_database(admin_url: str, name: str) -> None:
    connection = await asyncpg.connect(admin_url, timeout=10)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


async def start_engine(database_url: str, log: Path) -> tuple[asyncio.subprocess.Process, int]:
    env = {
        **os.environ,
        "STEPSTREAM_ENGINE_ADDRESS": "127.0.0.1:0",
        "STEPSTREAM_ENGINE_METRICS_PORT": "0",
        "STEPSTREAM_ENGINE_DATABASE_URL": database_url.replace(
            "postgresql://", "postgresql+asyncpg://", 1
        ),
        "STEPSTREAM_ENGINE_MAX_CONCURRENT_STEPS": "100000",
        "STEPSTREAM_ENGINE_WATCH_BUFFER_EVENTS": "10000000",
    }
    sink = log.open("wb")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "engine_service",
        env=env,
        stdout=sink,
        stderr=sink,
    )
    sink.close()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = LISTENING.search(_read(log))
        if found:
            return process, int(found.group(1))
        if process.returncode is not None:
            raise SystemExit(f"the engine exited:\n{_read(log)}")
        await asyncio.sleep(0.1)
    process.kill()
    raise SystemExit("the engine did not start within 60 s")


def _read(log: Path) -> str:
    return log.read_text(errors="replace")


# ---- one measured run -------------------------------------------------------------------


async def run_executions(
    stub: engine_pb2_grpc.EngineServiceAsyncStub, count: int, interval: float = 0.0
) -> list[str]:
    """Start `count` executions (at once, or one every `interval` seconds) and wait until
    all have ended; their ids."""
    watch = stub.WatchExecutions(
        engine_pb2.WatchExecutionsRequest(workflow_id=WORKFLOW_ID, statuses=TERMINAL)
    )
    await asyncio.sleep(0.2)  # let the subscription register before the first start
    request = engine_pb2.StartExecutionRequest(workflow_id=WORKFLOW_ID)
    starts = []
    for _ in range(count):
        starts.append(asyncio.ensure_future(stub.StartExecution(request)))
        if interval:
            await asyncio.sleep(interval)
    started = await asyncio.gather(*starts)
    ids = {response.execution.id for response in started}
    ended: set[str] = set()
    async for response in watch:
        ended.update(e.execution_id for e in response.batch.events if e.execution_id in ids)
        if len(ended) == len(ids):
            break
    watch.cancel()
    return sorted(ids)


async def history(
    stub: engine_pb2_grpc.EngineServiceAsyncStub, execution_id: str
) -> list[events_pb2.ExecutionEvent]:
    request = engine_pb2.WatchExecutionRequest(execution_id=execution_id)
    return [e async for response in stub.WatchExecution(request) for e in response.batch.events]


def latencies(events: list[events_pb2.ExecutionEvent]) -> tuple[list[float], list[float]]:
    """Seconds from each step's dependencies settling to its RUNNING event (dispatch) and
    to its action's invocation (action start)."""
    settled: dict[str, float] = {}
    running_at = 0.0
    dispatch = []
    action_start = []
    for event in events:
        at = event.timestamp.ToNanoseconds() / 1e9
        if event.execution_status == RUNNING_EXECUTION and not event.step_id:
            running_at = at
        elif event.step_status in SETTLED_STEP:
            settled[event.step_id] = at
            if event.attempt == 1 and event.step_status == COMPLETED_STEP:
                invoked = at - event.duration.ToNanoseconds() / 1e9
                action_start.append(invoked - ready(event, settled, running_at))
        elif event.step_status == RUNNING_STEP and event.attempt == 1:
            dispatch.append(at - ready(event, settled, running_at))
    return dispatch, action_start


def ready(event: events_pb2.ExecutionEvent, settled: dict[str, float], running_at: float) -> float:
    return max((settled[d] for d in event.depends_on), default=running_at)


def percentile_ms(sorted_seconds: list[float], fraction: float) -> float:
    index = min(len(sorted_seconds) - 1, int(len(sorted_seconds) * fraction))
    return sorted_seconds[index] * 1000


async def measure(
    stub: engine_pb2_grpc.EngineServiceAsyncStub, count: int, interval: float = 0.0
) -> RunFigures:
    ids = await run_executions(stub, count, interval)
    histories = [await history(stub, execution_id) for execution_id in ids]
    first = min(h[0].timestamp.ToNanoseconds() for h in histories) / 1e9
    last = max(h[-1].timestamp.ToNanoseconds() for h in histories) / 1e9
    steps = sum(1 for h in histories for e in h if e.step_status == RUNNING_STEP)
    measured = [latencies(h) for h in histories]
    dispatch = sorted(x for d, _ in measured for x in d)
    action_start = sorted(x for _, a in measured for x in a)
    return RunFigures(
        executions=count,
        steps_per_second=steps / (last - first),
        dispatch_p50_ms=statistics.median(dispatch) * 1000,
        dispatch_p99_ms=percentile_ms(dispatch, 0.99),
        action_start_p50_ms=statistics.median(action_start) * 1000,
        action_start_p99_ms=percentile_ms(action_start, 0.99),
    )


# ---- pgbench ----------------------------------------------------------------------------


def pgbench_binary() -> str:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pgbench"))
    if not found:
        raise SystemExit("pgbench not found under /usr/lib/postgresql/*/bin/")
    return found[-1]


def pgbench_tps(database_url: str, clients: int, seconds: int) -> float:
    binary = pgbench_binary()
    subprocess.run([binary, "-i", "-q", database_url], check=True, capture_output=True)
    result = subprocess.run(
        [binary, "-N", "-c", str(clients), "-j", str(clients), "-T", str(seconds), database_url],
        check=True,
        capture_output=True,
        text=True,
    )
    match = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", result.stdout)
    if match is None:
        raise SystemExit(f"cannot read pgbench output:\n{result.stdout}")
    return float(match.group(1))


# ---- main -------------------------------------------------------------------------------


async def benchmark(arguments: argparse.Namespace) -> None:
    admin_url = arguments.postgres_url
    name = await create_database(admin_url)
    database_url = with_database(admin_url, name)
    process: asyncio.subprocess.Process | None = None
    try:
        with tempfile.TemporaryDirectory() as scratch:
            process, port = await start_engine(database_url, Path(scratch) / "engine.log")
            async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = engine_pb2_grpc.EngineServiceStub(channel)
                await stub.RegisterWorkflow(
                    engine_pb2.RegisterWorkflowRequest(definition=layered_dag())
                )
                await measure(stub, min(10, arguments.executions))  # warm-up
                peak = await measure(stub, arguments.executions)
                # Half of peak load: executions started at a pace that asks for half the
                # peak step rate (starting half as many at once would still saturate).
                interval = 2 * LAYERS * WIDTH / peak.steps_per_second
                half = await measure(stub, arguments.paced_executions, interval)
            process.terminate()
            await asyncio.wait_for(process.wait(), 30)
        tps = pgbench_tps(database_url, 1, arguments.pgbench_seconds)
        many = pgbench_tps(database_url, arguments.pgbench_clients, arguments.pgbench_seconds)
    finally:
        if process is not None and process.returncode is None:
            process.kill()
        await drop_database(admin_url, name)
    report(peak, half, tps, many, arguments)


def report(
    peak: RunFigures, half: RunFigures, tps: float, many: float, arguments: argparse.Namespace
) -> None:
    print(f"engine: {LAYERS}x{WIDTH} layered DAG of noop steps, gRPC, Postgres")
    for figures, how in ((peak, "started at once"), (half, "paced at half the peak rate")):
        print(f"  {figures.executions:>5} executions {how}: {figures.steps_per_second:.1f} steps/s")
        print(
            f"        dispatch p50 {figures.dispatch_p50_ms:.2f} ms, p99 "
            f"{figures.dispatch_p99_ms:.2f} ms; action start p50 "
            f"{figures.action_start_p50_ms:.2f} ms, p99 {figures.action_start_p99_ms:.2f} ms"
        )
    seconds = arguments.pgbench_seconds
    print(f"pgbench -N -c 1 -T {seconds}: {tps:.1f} TPS")
    print(
        f"pgbench -N -c {arguments.pgbench_clients} -T {seconds}: {many:.1f} TPS "
        f"(ratio to it: {peak.steps_per_second / many:.2f})"
    )
    print(f"ratio steps/s / pgbench -N TPS: {peak.steps_per_second / tps:.2f} (target >= 2)")
    print(f"dispatch p99 at half of peak load: {half.dispatch_p99_ms:.2f} ms (target < 5 ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--executions", type=int, default=100, help="concurrent executions")
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("STEPSTREAM_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL),
        help="a database on the server where the benchmark database is created",
    )
    parser.add_argument(
        "--paced-executions", type=int, default=30, help="executions for the half-load run"
    )
    parser.add_argument(
        "--pgbench-clients", type=int, default=8, help="clients of the second pgbench run"
    )
    parser.add_argument("--pgbench-seconds", type=int, default=10)
    asyncio.run(benchmark(parser.parse_args()))


if __name__ == "__main__":
    main()

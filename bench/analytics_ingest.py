"""Analytics ingest and query figures on Postgres, each next to a baseline in the same run.

    .venv/bin/python -m bench.analytics_ingest --events 50000 --facts 300000

1. Ingest: N engine events (step attempts with failures and retries, and executions) go
   through the ingest use case in batches - event-id ledger, facts, minute rollups with
   histograms, ingest lag - into a fresh database. Then asyncpg `copy_records_to_table`
   writes the same events, one row each, into a bare table. Reported: both rates in
   events/s and their ratio (target >= 0.5).
2. Queries: ingest continues until the database holds F step facts - through the same
   ingest use case, only in batches of `--fill-batch-size` events spread over the whole
   day, so the facts and rollups are exactly those the service would hold (10M step facts
   take about ten minutes) - then, after an ANALYZE (autovacuum is off on the bench server;
   `--no-analyze` skips it), GetStepMetrics and GetWorkflowMetrics over the whole day are
   timed through a real gRPC server on 127.0.0.1 and, for the same query, through the use
   case directly, alternately, after one untimed round of every query on both paths (the
   first call of a path would otherwise pay for connecting, preparing and cold pages).
   Reported are p50/p95/p99 latency and the largest relative error of the histogram
   percentiles against Postgres' exact `percentile_cont` over the facts.

    .venv/bin/python -m bench.analytics_ingest --events 50000 --facts 10000000 --queries 400
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import math
import os
import random
import statistics
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import grpc
from pydantic import SecretStr
from stepstream.v1 import analytics_pb2, analytics_pb2_grpc

from analytics_service.core.events import EventKind, ExecutionEvent, ExecutionStatus, StepStatus
from analytics_service.core.ingest import Ingestor
from analytics_service.core.queries import AnalyticsQueries, Selection
from analytics_service.core.reports import TimeRange
from analytics_service.main import start
from analytics_service.settings import AnalyticsSettings

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
DAY_START = datetime(2026, 3, 2, tzinfo=UTC)
WORKFLOWS = 5
STEPS = 8
PERCENTILES = {"p50": 0.5, "p95": 0.95, "p99": 0.99}


def _step_events(
    rng: random.Random, workflow: str, execution: str, finished: datetime
) -> Iterator[ExecutionEvent]:
    for index in range(STEPS):
        step = f"step_{index}"
        attempts = 2 if rng.random() < 0.1 else 1
        for attempt in range(1, attempts + 1):
            failed = attempt < attempts or rng.random() < 0.03
            seconds = rng.lognormvariate(math.log(0.5 + index), 0.6)
            yield ExecutionEvent(
                event_id=f"{execution}/{step}/{attempt}",
                tenant="default",
                execution_id=execution,
                workflow_id=workflow,
                workflow_version=1,
                sequence=index * 2 + attempt,
                occurred_at=finished,
                kind=EventKind.STEP_STATUS_CHANGED,
                step_id=step,
                attempt=attempt,
                step_status=StepStatus.FAILED if failed else StepStatus.COMPLETED,
                duration_seconds=seconds,
                error_type="UpstreamTimeout" if failed else "",
                action=f"action_{index}",
                started_at=finished - timedelta(seconds=seconds),
                depends_on=(f"step_{index - 1}",) if index else (),
            )


def events(count: int, seed: int, span_minutes: int = 1440) -> list[ExecutionEvent]:
    """Executions of WORKFLOWS workflows spread over `span_minutes` until `count` events exist."""
    rng = random.Random(seed)
    generated: list[ExecutionEvent] = []
    while len(generated) < count:
        workflow = f"workflow_{rng.randrange(WORKFLOWS)}"
        execution = uuid.UUID(int=rng.getrandbits(128)).hex
        finished = DAY_START + timedelta(seconds=rng.uniform(0, span_minutes * 60 - 1))
        generated.extend(_step_events(rng, workflow, execution, finished))
        generated.append(
            ExecutionEvent(
                event_id=f"{execution}/done",
                tenant="default",
                execution_id=execution,
                workflow_id=workflow,
                workflow_version=1,
                sequence=100,
                occurred_at=finished,
                kind=EventKind.EXECUTION_STATUS_CHANGED,
                execution_status=ExecutionStatus.COMPLETED,
                duration_seconds=rng.lognormvariate(math.log(20), 0.5),
            )
        )
    # The engine's relay ships events in commit order: roughly the order they happened.
    return sorted(generated[:count], key=lambda event: event.occurred_at)


async def ingest_rate(ingestor: Ingestor, batch: list[ExecutionEvent], size: int) -> float:
    started = time.perf_counter()
    for offset in range(0, len(batch), size):
        await ingestor.ingest(batch[offset : offset + size])
    return len(batch) / (time.perf_counter() - started)


COPY_COLUMNS = (
    ("event_id", "text"),
    ("tenant", "text"),
    ("execution_id", "text"),
    ("workflow_id", "text"),
    ("workflow_version", "integer"),
    ("sequence", "bigint"),
    ("occurred_at", "timestamptz"),
    ("kind", "text"),
    ("step_id", "text"),
    ("attempt", "integer"),
    ("status", "text"),
    ("duration_seconds", "double precision"),
    ("error_type", "text"),
    ("action", "text"),
    ("started_at", "timestamptz"),
    ("depends_on", "text"),
)


def copy_record(event: ExecutionEvent) -> tuple[Any, ...]:
    status = event.step_status if event.step_id else event.execution_status
    return (
        event.event_id,
        event.tenant,
        event.execution_id,
        event.workflow_id,
        event.workflow_version,
        event.sequence,
        event.occurred_at,
        event.kind.value,
        event.step_id,
        event.attempt,
        status.value,
        event.duration_seconds,
        event.error_type,
        event.action,
        event.started_at,
        " ".join(event.depends_on),
    )


async def copy_rate(url: str, batch: list[ExecutionEvent]) -> float:
    records = [copy_record(event) for event in batch]
    connection = await asyncpg.connect(url)
    try:
        columns = ", ".join(f"{name} {kind}" for name, kind in COPY_COLUMNS)
        await connection.execute(f"CREATE TABLE bench_copy ({columns})")
        started = time.perf_counter()
        await connection.copy_records_to_table(
            "bench_copy", records=records, columns=[name for name, _ in COPY_COLUMNS]
        )
        return len(records) / (time.perf_counter() - started)
    finally:
        await connection.close()


async def exact_percentiles(url: str, workflow: str, step: str) -> dict[str, float]:
    connection = await asyncpg.connect(url)
    try:
        row = await connection.fetchrow(
            "SELECT percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP "
            "(ORDER BY duration_seconds) FROM step_facts "
            "WHERE tenant = 'default' AND workflow_id = $1 AND step_id = $2",
            workflow,
            step,
        )
        return dict(zip(PERCENTILES, row[0], strict=True))
    finally:
        await connection.close()


def seconds(duration: Any) -> float:
    return float(duration.ToNanoseconds()) / 1e9


async def query_figures(url: str, async_url: str, queries: int) -> dict[str, float]:
    settings = AnalyticsSettings(
        address="127.0.0.1:0",
        metrics_port=0,
        database_url=SecretStr(async_url),
        fact_retention_days=0,
    )
    service = await start(settings)
    grpc_latencies: list[float] = []
    direct_latencies: list[float] = []
    worst_error = 0.0
    step_responses: dict[tuple[str, str | None], analytics_pb2.GetStepMetricsResponse] = {}
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
            stub = analytics_pb2_grpc.AnalyticsServiceStub(channel)
            direct = service.use_cases.queries
            for index in range(2 * WORKFLOWS * STEPS):
                await grpc_query(stub, index)
                await direct_query(direct, index)
            for index in range(queries):
                started = time.perf_counter()
                response = await grpc_query(stub, index)
                grpc_latencies.append(time.perf_counter() - started)
                started = time.perf_counter()
                await direct_query(direct, index)
                direct_latencies.append(time.perf_counter() - started)
                if isinstance(response, analytics_pb2.GetStepMetricsResponse):
                    step_responses.setdefault(query_of(index), response)
        # After the timing: the exact percentiles read every fact of a step.
        for (workflow, step), response in step_responses.items():
            worst_error = max(worst_error, await percentile_error(url, workflow, step, response))
    finally:
        await service.stop(1.0)
    return {
        **{f"grpc_{name}": value for name, value in percentiles_ms(grpc_latencies).items()},
        **{f"direct_{name}": value for name, value in percentiles_ms(direct_latencies).items()},
        "worst_percentile_error": worst_error,
    }


def query_of(index: int) -> tuple[str, str | None]:
    """Workflow and step of the index-th query: odd ones ask for a whole workflow."""
    workflow = f"workflow_{index % WORKFLOWS}"
    return workflow, None if index % 2 else f"step_{index % STEPS}"


async def grpc_query(stub: analytics_pb2_grpc.AnalyticsServiceAsyncStub, index: int) -> Any:
    whole_day = analytics_pb2.TimeRange()
    whole_day.start.FromDatetime(DAY_START)
    whole_day.end.FromDatetime(DAY_START + timedelta(days=1))
    workflow, step = query_of(index)
    if step is None:
        return await stub.GetWorkflowMetrics(
            analytics_pb2.GetWorkflowMetricsRequest(workflow_id=workflow, range=whole_day)
        )
    return await stub.GetStepMetrics(
        analytics_pb2.GetStepMetricsRequest(workflow_id=workflow, step_id=step, range=whole_day)
    )


async def direct_query(queries: AnalyticsQueries, index: int) -> None:
    """The same query without gRPC: the storage and core share of the latency."""
    window = TimeRange(DAY_START, DAY_START + timedelta(days=1))
    workflow, step = query_of(index)
    if step is None:
        await queries.workflow_metrics(Selection("default", workflow, window))
    else:
        await queries.step_metrics(Selection("default", workflow, window, step_id=step))


async def percentile_error(
    url: str, workflow: str, step: str | None, response: analytics_pb2.GetStepMetricsResponse
) -> float:
    assert step is not None
    exact = await exact_percentiles(url, workflow, step)
    duration = response.steps[0].duration
    return max(
        abs(seconds(getattr(duration, name)) - value) / value for name, value in exact.items()
    )


def percentiles_ms(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    return {
        "p50": 1000 * statistics.median(ordered),
        "p95": 1000 * ordered[math.ceil(0.95 * len(ordered)) - 1],
        "p99": 1000 * ordered[math.ceil(0.99 * len(ordered)) - 1],
    }


async def step_fact_count(url: str) -> int:
    connection = await asyncpg.connect(url)
    try:
        return int(await connection.fetchval("SELECT count(*) FROM step_facts"))
    finally:
        await connection.close()


async def analyze(url: str) -> None:
    """What autovacuum's autoanalyze does after bulk inserts, on a server where it is off.

    Without statistics the planner reads a step's rollups through the time index (every
    step of the workflow) instead of the primary key.
    """
    connection = await asyncpg.connect(url)
    try:
        await connection.execute("ANALYZE")
    finally:
        await connection.close()


async def run(arguments: argparse.Namespace) -> None:
    admin = os.environ.get("STEPSTREAM_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)
    name = f"bench_analytics_{uuid.uuid4().hex[:10]}"
    url = f"{admin.rpartition('/')[0]}/{name}"
    async_url = url.replace("postgresql://", "postgresql+asyncpg://", 1)
    connection = await asyncpg.connect(admin)
    await connection.execute(f'CREATE DATABASE "{name}"')
    await connection.close()
    try:
        await measure(arguments, url, async_url)
    finally:
        connection = await asyncpg.connect(admin)
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await connection.close()


async def measure(arguments: argparse.Namespace, url: str, async_url: str) -> None:
    from analytics_service.storage.database import SqlDatabase, create_engine
    from analytics_service.storage.migrate import upgrade

    engine = create_engine(async_url)
    await upgrade(engine)
    database = SqlDatabase(engine)
    ingestor = Ingestor(database, lambda: DAY_START + timedelta(days=1), None)
    sample = events(arguments.events, seed=1, span_minutes=arguments.span_minutes)
    # The generated events stay alive for the whole run, which a service never does: keep the
    # collector from walking them again and again.
    gc.freeze()
    ingest = await ingest_rate(ingestor, sample, arguments.batch_size)
    copy = await copy_rate(url, sample)
    print(
        f"events: {len(sample)} over {arguments.span_minutes} minutes, "
        f"in batches of {arguments.batch_size}"
    )
    print(f"ingest with facts and rollups: {ingest:,.0f} events/s")
    print(f"COPY of the same rows into a bare table: {copy:,.0f} events/s")
    print(f"ratio ingest / COPY: {ingest / copy:.2f} (target >= 0.5)")

    seed = 2
    while (facts := await step_fact_count(url)) < arguments.facts:
        more = events(min(200_000, (arguments.facts - facts) * 10 // 9 + 100), seed=seed)
        gc.freeze()
        await ingest_rate(ingestor, more, arguments.fill_batch_size)
        seed += 1
    await database.close()
    if arguments.analyze:
        await analyze(url)
    figures = await query_figures(url, async_url, arguments.queries)
    print(
        f"step facts: {await step_fact_count(url):,} (filled through the ingest use case in "
        f"batches of {arguments.fill_batch_size}); queries: {arguments.queries}; "
        f"tables analyzed before querying: {'yes' if arguments.analyze else 'no'}"
    )
    for way, label in (("grpc", "through gRPC"), ("direct", "use case, no gRPC, same query")):
        print(
            f"metrics query latency over a whole day ({label}): "
            f"p50 {figures[f'{way}_p50']:.1f} ms, p95 {figures[f'{way}_p95']:.1f} ms, "
            f"p99 {figures[f'{way}_p99']:.1f} ms"
        )
    print(
        "largest relative error of p50/p95/p99 vs exact percentile_cont: "
        f"{100 * figures['worst_percentile_error']:.3f}%"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000, help="events for the ingest figure")
    parser.add_argument(
        "--span-minutes", type=int, default=60, help="time the ingest sample's events span"
    )
    parser.add_argument("--batch-size", type=int, default=1000, help="events per ingest batch")
    parser.add_argument(
        "--fill-batch-size",
        type=int,
        default=10_000,
        help="events per ingest batch while filling the database for the queries",
    )
    parser.add_argument("--facts", type=int, default=300_000, help="step facts for the queries")
    parser.add_argument("--queries", type=int, default=400, help="metrics queries to time")
    parser.add_argument(
        "--analyze",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="ANALYZE before the queries, as autovacuum would (it is off on the bench server)",
    )
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()

"""The processes of the process-fault test and the faults done to them.

One private Postgres server (the test stops it) holds the engine's database and the
analytics service's; the engine and analytics run as `python -m` processes. The engine
is always restarted under the same instance id on the same database, as a restarted pod
would be; its successive incarnations share one log file.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from tests.e2e.engine.processes import EngineProcess, launch
from tests.e2e.pipeline.soak_checks import database_sequence_violations
from tests.e2e.pipeline.soak_workload import MAX_LOST_ATTEMPTS, Size
from tests.e2e.pipeline.test_engine_to_analytics import AnalyticsProcess
from tests.integration.engine.helpers import bounded
from tests.private_postgres import PrivatePostgres

ENGINE_SETTINGS = {
    "instance_id": "soak-engine",
    # Short leases, so a restarted engine takes its runs back within ~8 s. Not shorter:
    # on a loaded 2-core machine a claim of 100 runs takes 1-3 s and renewals then fall
    # behind (see /work/notes/soak_findings.md #2).
    "lease_seconds": "8",
    "lease_interval_seconds": "0.5",
    "max_lost_attempts": str(MAX_LOST_ATTEMPTS),
}
# Events a new incarnation must commit before it is killed: it has taken runs over.
PROGRESS_EVENTS = 10
PROGRESS_WITHIN_SECONDS = 60.0
# Starting a process takes seconds on a loaded 2-core machine; generous, never asserted.
START_WITHIN_SECONDS = 90.0


@dataclass
class Figures:
    kills: int = 0
    restart_seconds: list[float] = field(default_factory=list)
    database_down_seconds: float = 0.0
    analytics_down: tuple[float, float] = (0.0, 0.0)
    # Events the relay held when analytics came back.
    backlog_at_analytics_return: int = 0
    # Executions not yet ended at each fault: every fault must land mid-run.
    unfinished_at: dict[str, int] = field(default_factory=dict)


class Rig:
    def __init__(self, postgres: PrivatePostgres, directory: Path) -> None:
        self.postgres = postgres
        base = f"postgres@127.0.0.1:{postgres.port}"
        self.engine_dsn = f"postgresql://{base}/engine"
        self.engine_url = f"postgresql+asyncpg://{base}/engine"
        self.analytics = AnalyticsProcess(
            f"postgresql+asyncpg://{base}/analytics", directory / "analytics.log"
        )
        self.engine_log = directory / "engine.log"
        self.engine: EngineProcess | None = None
        # Held while Postgres is stopped and while analytics starts (its migrations need
        # the database): the two never overlap.
        self.database_in_use = asyncio.Lock()
        self.figures = Figures()

    async def create_databases(self) -> None:
        admin = await asyncpg.connect(
            f"postgresql://postgres@127.0.0.1:{self.postgres.port}/postgres"
        )
        try:
            for name in ("engine", "analytics"):
                await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()

    async def start(self) -> None:
        await self.create_databases()
        await self.analytics.start(start_within=START_WITHIN_SECONDS)
        await self.launch_engine()

    async def launch_engine(self) -> EngineProcess:
        self.engine = await launch(
            self.engine_url,
            self.engine_log,
            ENGINE_SETTINGS,
            env={"STEPSTREAM_ANALYTICS_TARGET": f"127.0.0.1:{self.analytics.port}"},
            start_within=START_WITHIN_SECONDS,
        )
        return self.engine

    @property
    def current(self) -> EngineProcess:
        assert self.engine is not None
        return self.engine

    async def close(self) -> None:
        if self.engine is not None:
            await self.engine.ensure_stopped()
        await self.analytics.stop()

    # ---- reading the engine's database ------------------------------------------------

    async def scalar(self, query: str) -> int:
        connection = await asyncpg.connect(self.engine_dsn, timeout=10)
        try:
            return int(await connection.fetchval(query))
        finally:
            await connection.close()

    async def events(self) -> int:
        return await self.scalar("SELECT count(*) FROM execution_events")

    async def unfinished(self) -> int:
        return await self.scalar("SELECT count(*) FROM executions WHERE finished_at IS NULL")

    async def backlog(self) -> int:
        return await self.scalar("SELECT count(*) FROM execution_events WHERE delivered_at IS NULL")

    async def set_aside(self) -> int:
        """Events the relay set aside as refused for good: none of these may be."""
        return await self.scalar(
            "SELECT CASE WHEN to_regclass('outbox_dead_letters') IS NULL THEN 0"
            " ELSE (SELECT count(*) FROM outbox_dead_letters) END"
        )

    async def sequence_violations(self) -> list[str]:
        connection = await asyncpg.connect(self.engine_dsn, timeout=10)
        try:
            return await database_sequence_violations(connection)
        finally:
            await connection.close()

    # ---- faults -------------------------------------------------------------------------

    async def until_progress(self, since: int) -> None:
        """Until the engine committed PROGRESS_EVENTS events past `since`."""

        async def poll() -> None:
            while True:
                if await self.events() >= since + PROGRESS_EVENTS:
                    return
                await asyncio.sleep(0.1)

        try:
            await bounded(poll(), PROGRESS_WITHIN_SECONDS)
        except TimeoutError:
            raise AssertionError(
                f"the engine committed nothing for {PROGRESS_WITHIN_SECONDS}s after a fault; "
                f"see {self.engine_log}"
            ) from None

    async def kill_engine(self, label: str) -> None:
        self.figures.unfinished_at[label] = await self.unfinished()
        await self.current.kill()
        self.figures.kills += 1
        began = time.monotonic()
        await self.launch_engine()
        self.figures.restart_seconds.append(time.monotonic() - began)
        await self.until_progress(await self.events())

    async def stop_database(self, seconds: float) -> None:
        async with self.database_in_use:
            self.figures.unfinished_at["database"] = await self.unfinished()
            began = time.monotonic()
            await asyncio.to_thread(self.postgres.stop)
            await asyncio.sleep(seconds)
            await asyncio.to_thread(self.postgres.start)
            self.figures.database_down_seconds = time.monotonic() - began

    async def analytics_outage(self, began: float, size: Size) -> None:
        down_at, up_at = size.analytics_down_at
        await _until(began + down_at)
        async with self.database_in_use:
            self.figures.unfinished_at["analytics"] = await self.unfinished()
        stopped = time.monotonic()
        await self.analytics.stop()
        await _until(began + up_at)
        async with self.database_in_use:
            self.figures.backlog_at_analytics_return = await self.backlog()
            await self.analytics.start(start_within=START_WITHIN_SECONDS)
        self.figures.analytics_down = (stopped - began, time.monotonic() - began)

    async def engine_faults(self, began: float, size: Size) -> None:
        for number, at in enumerate(size.kill_at, start=1):
            await _until(began + at)
            await self.kill_engine(f"kill {number}")
        await _until(began + size.database_down_at)
        await self.stop_database(size.database_down_seconds)


async def _until(moment: float) -> None:
    await asyncio.sleep(max(0.0, moment - time.monotonic()))

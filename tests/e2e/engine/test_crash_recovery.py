"""Kill -9 and replicas: nothing committed is lost, nothing completed runs again.

Each test drives real `python -m engine_service` processes over gRPC and then reads the
event log from the database itself to check the invariants.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import pytest
from grpc import aio
from stepstream.v1 import engine_pb2, engine_pb2_grpc

from engine_service.core.state import ExecutionEvent, StepStatus, blank, replay
from engine_service.storage import open_store
from tests.e2e.engine.processes import EngineProcess, launch
from tests.integration.engine.helpers import bounded, definition, execution_status, register

pytestmark = pytest.mark.e2e
FAST_LEASES = {"lease_seconds": "2", "lease_interval_seconds": "0.3"}
COMPLETED = execution_status("COMPLETED")
TERMINAL = {execution_status(s) for s in ("COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT")}


def diamond() -> dict[str, object]:
    """a -> (b, c) -> d, each step a short delay: runs take ~1 s, so kills land mid-run."""
    delay = {"action": "delay", "parameters": {"seconds": 0.25}}
    return {
        "id": "diamond",
        "steps": [
            {"id": "a", **delay},
            {"id": "b", **delay, "depends_on": ["a"]},
            {"id": "c", **delay, "depends_on": ["a"]},
            {"id": "d", **delay, "depends_on": ["b", "c"]},
        ],
    }


@pytest.fixture
async def processes() -> AsyncIterator[list[EngineProcess]]:
    started: list[EngineProcess] = []
    yield started
    for process in started:
        await process.ensure_stopped()


async def start_many(target: str, count: int) -> list[str]:
    async with aio.insecure_channel(target) as channel:
        stub = engine_pb2_grpc.EngineServiceStub(channel)
        replies = await asyncio.gather(
            *(
                stub.StartExecution(engine_pb2.StartExecutionRequest(workflow_id="diamond"))
                for _ in range(count)
            )
        )
    return [reply.execution.id for reply in replies]


async def wait_until_some_steps_completed(target: str, ids: list[str]) -> None:
    async with aio.insecure_channel(target) as channel:
        stub = engine_pb2_grpc.EngineServiceStub(channel)
        for _ in range(200):
            reply = await stub.GetExecution(engine_pb2.GetExecutionRequest(execution_id=ids[-1]))
            if any(s.status == 5 for s in reply.execution.steps):  # STEP_STATUS_COMPLETED
                return
            await asyncio.sleep(0.05)
    raise AssertionError("no step completed in time")


async def wait_until_all_ended(target: str, ids: Iterable[str], seconds: float = 60) -> None:
    async def poll() -> None:
        async with aio.insecure_channel(target) as channel:
            stub = engine_pb2_grpc.EngineServiceStub(channel)
            for execution_id in ids:
                while True:
                    request = engine_pb2.GetExecutionRequest(execution_id=execution_id)
                    reply = await stub.GetExecution(request)
                    if reply.execution.status in TERMINAL:
                        assert reply.execution.status == COMPLETED, reply.execution
                        break
                    await asyncio.sleep(0.1)

    await bounded(poll(), seconds)


async def check_history(database_url: str, ids: list[str]) -> dict[str, list[ExecutionEvent]]:
    """Every execution completed, gap-free, replays to its state, no completed step re-ran."""
    store = await open_store(database_url, migrate=False)
    histories = {}
    try:
        for execution_id in ids:
            stored = await store.get_execution(execution_id)
            events = await store.read_events(execution_id)
            assert [e.sequence for e in events] == list(range(1, len(events) + 1))
            assert replay(blank(stored), events) == stored
            assert all(s.status is StepStatus.COMPLETED for s in stored.steps.values())
            assert_no_step_ran_after_completing(events)
            histories[execution_id] = events
    finally:
        await store.close()
    return histories


def assert_no_step_ran_after_completing(events: list[ExecutionEvent]) -> None:
    completed: set[str] = set()
    attempts: dict[str, list[int]] = defaultdict(list)
    for event in events:
        if event.step_status is StepStatus.RUNNING:
            assert event.step_id not in completed, f"{event.step_id} ran again after completing"
            attempts[event.step_id].append(event.attempt)
        if event.step_status is StepStatus.COMPLETED:
            assert event.step_id not in completed
            completed.add(event.step_id)
    for numbers in attempts.values():
        assert numbers == list(range(1, len(numbers) + 1))  # each attempt started once


async def test_kill_9_mid_run_then_restart_completes_every_execution(
    database_url: str, tmp_path: Path, processes: list[EngineProcess]
) -> None:
    log = tmp_path / "engine.log"
    first = await launch(database_url, log, {**FAST_LEASES, "instance_id": "first"})
    processes.append(first)
    async with aio.insecure_channel(first.target) as channel:
        await register(engine_pb2_grpc.EngineServiceStub(channel), definition(diamond()))
    ids = await start_many(first.target, 50)
    await wait_until_some_steps_completed(first.target, ids)
    await first.kill()

    second = await launch(database_url, log, {**FAST_LEASES, "instance_id": "second"})
    processes.append(second)
    await wait_until_all_ended(second.target, ids)
    code, _ = await second.stop()  # SQLite admits one process: the check reads after it
    assert code == 0
    histories = await check_history(database_url, ids)
    interrupted = [
        execution_id
        for execution_id, events in histories.items()
        if any(e.error is not None and e.error.type == "EngineRestarted" for e in events)
    ]
    assert interrupted, "the kill should have interrupted running steps"


async def collect_events(target: str, into: dict[str, set[int]], ready: asyncio.Event) -> None:
    async with aio.insecure_channel(target) as channel:
        stub = engine_pb2_grpc.EngineServiceStub(channel)
        call = stub.WatchExecutions(engine_pb2.WatchExecutionsRequest())
        ready.set()
        async for reply in call:
            for event in reply.batch.events:
                into[event.execution_id].add(event.sequence)


async def test_two_replicas_share_work_and_watchers_on_either_see_everything(
    postgres_url: str, tmp_path: Path, processes: list[EngineProcess]
) -> None:
    log = tmp_path / "engine.log"
    one = await launch(postgres_url, log, {**FAST_LEASES, "instance_id": "one"})
    two = await launch(postgres_url, log, {**FAST_LEASES, "instance_id": "two"})
    processes += [one, two]
    async with aio.insecure_channel(one.target) as channel:
        await register(engine_pb2_grpc.EngineServiceStub(channel), definition(diamond()))
    seen: dict[str, dict[str, set[int]]] = {"one": defaultdict(set), "two": defaultdict(set)}
    ready = [asyncio.Event(), asyncio.Event()]
    watchers = [
        asyncio.create_task(collect_events(one.target, seen["one"], ready[0])),
        asyncio.create_task(collect_events(two.target, seen["two"], ready[1])),
    ]
    try:
        await bounded(asyncio.gather(*(r.wait() for r in ready)))
        await asyncio.sleep(0.3)  # the watch streams are open on both servers
        ids = await start_many(one.target, 25) + await start_many(two.target, 25)
        await wait_until_all_ended(one.target, ids)
        histories = await check_history(postgres_url, ids)
        await asyncio.sleep(1.0)  # let the last notifications reach the other replica
    finally:
        for watcher in watchers:
            watcher.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
    for replica in ("one", "two"):
        for execution_id, events in histories.items():
            stored = {e.sequence for e in events}
            assert seen[replica][execution_id] == stored, (replica, execution_id)
    # Nobody lost a lease or wrote to an execution another process drove.
    assert "stopped driving execution" not in log.read_text()


async def test_when_a_replica_dies_the_other_takes_over_its_executions(
    postgres_url: str, tmp_path: Path, processes: list[EngineProcess]
) -> None:
    log = tmp_path / "engine.log"
    doomed = await launch(postgres_url, log, {**FAST_LEASES, "instance_id": "doomed"})
    survivor = await launch(postgres_url, log, {**FAST_LEASES, "instance_id": "survivor"})
    processes += [doomed, survivor]
    async with aio.insecure_channel(doomed.target) as channel:
        await register(engine_pb2_grpc.EngineServiceStub(channel), definition(diamond()))
    ids = await start_many(doomed.target, 25)
    await wait_until_some_steps_completed(doomed.target, ids)
    await doomed.kill()
    await wait_until_all_ended(survivor.target, ids)
    await check_history(postgres_url, ids)
    claims = await _metric(survivor, "stepstream_engine_lease_claims_total")
    assert claims >= 1


async def _metric(process: EngineProcess, name: str) -> float:
    reader, writer = await asyncio.open_connection("127.0.0.1", process.metrics_port)
    writer.write(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
    body = (await bounded(reader.read())).decode()
    writer.close()
    for line in body.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not exported")


async def test_a_second_engine_on_one_sqlite_file_is_refused_with_the_reason(
    sqlite_url: str, tmp_path: Path, processes: list[EngineProcess]
) -> None:
    log = tmp_path / "engine.log"
    processes.append(await launch(sqlite_url, log, {"instance_id": "only"}))
    with pytest.raises(AssertionError, match="the engine exited") as refused:
        await launch(sqlite_url, tmp_path / "second.log", {"instance_id": "second"})
    assert "SQLite supports one engine process" in str(refused.value)
    assert "Postgres" in str(refused.value)


async def test_commands_sent_to_the_replica_that_does_not_drive_the_run(
    postgres_url: str, tmp_path: Path, processes: list[EngineProcess]
) -> None:
    # Slow lease rounds: only the notice can make the driver apply a command quickly.
    leases = {"lease_seconds": "30", "lease_interval_seconds": "20"}
    log = tmp_path / "engine.log"
    driver = await launch(postgres_url, log, {**leases, "instance_id": "driver"})
    other = await launch(postgres_url, log, {**leases, "instance_id": "other"})
    processes += [driver, other]
    slow = {
        "id": "slow",
        "steps": [{"id": "wait", "action": "delay", "parameters": {"seconds": 60}}],
    }
    async with (
        aio.insecure_channel(driver.target) as to_driver,
        aio.insecure_channel(other.target) as to_other,
    ):
        stub = engine_pb2_grpc.EngineServiceStub(to_driver)
        elsewhere = engine_pb2_grpc.EngineServiceStub(to_other)
        await register(stub, definition(slow))
        ids = []
        for _ in range(2):
            reply = await stub.StartExecution(engine_pb2.StartExecutionRequest(workflow_id="slow"))
            ids.append(reply.execution.id)
        paused = await bounded(
            elsewhere.PauseExecution(engine_pb2.PauseExecutionRequest(execution_id=ids[0]))
        )
        assert paused.execution.status == execution_status("PAUSED")
        cancelled = await bounded(
            elsewhere.CancelExecution(
                engine_pb2.CancelExecutionRequest(execution_id=ids[1], reason="not needed")
            )
        )
        assert cancelled.execution.status == execution_status("CANCELLED")
        with pytest.raises(aio.AioRpcError) as refused:
            await bounded(
                elsewhere.CancelExecution(engine_pb2.CancelExecutionRequest(execution_id=ids[1]))
            )
        assert refused.value.code().name == "FAILED_PRECONDITION"
    assert "stopped driving execution" not in log.read_text()

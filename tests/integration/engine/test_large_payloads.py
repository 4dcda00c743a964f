"""Large payloads are converted off the event loop, and arrive whole.

protobuf's Struct conversions are pure Python (about a second per 100,000 values); on
the event loop they would hold every other call and the health checks that long.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from datetime import UTC, datetime

from google.protobuf import struct_pb2
from sqlalchemy import insert
from stepstream.v1 import engine_pb2

from engine_service.storage.models import workflow_definitions
from engine_service.storage.sql_store import SqlExecutionStore
from engine_service.transport import responses
from engine_service.transport.mapping import OFF_LOOP_BYTES
from engine_service.transport.offload import CpuLane
from tests.integration.engine.conftest import Harness
from tests.integration.engine.helpers import (
    WAIT_SECONDS,
    chain,
    execution_status,
    register,
    run_to_end,
    struct,
)


async def test_a_large_payload_is_converted_in_the_cpu_lane() -> None:
    threads: list[int] = []
    lane = CpuLane()

    def convert(item: int) -> int:
        threads.append(threading.get_ident())
        return item + 1

    try:
        small = await responses.converted(convert, [1], [{"x": "y"}], lane)
        large = await responses.converted(convert, [2], [{"x": "y" * OFF_LOOP_BYTES}], lane)
    finally:
        lane.close()
    assert (small, large) == ([2], [3])
    assert threads[0] == threading.get_ident()
    assert threads[1] != threading.get_ident()


async def test_large_inputs_and_outputs_arrive_whole(harness: Harness) -> None:
    numbers = list(range(60_000))  # about 600 KB encoded, well past OFF_LOOP_BYTES
    await register(harness.stub, chain("large", "noop"))
    done = await run_to_end(harness.stub, "large", inputs=struct({"numbers": numbers}))
    assert done.status == execution_status("COMPLETED")
    listed = await harness.stub.ListExecutions(engine_pb2.ListExecutionsRequest())
    (found,) = listed.executions
    received = found.inputs["numbers"]
    assert isinstance(received, struct_pb2.ListValue)
    assert list(received) == numbers


async def test_a_page_of_large_items_ends_early_and_every_item_is_listed_once(
    harness: Harness,
) -> None:
    # 24 schedules and executions of 700 KB inputs each: one page of them was larger than
    # the 16 MiB a response may be, so the list could not be read at all.
    await register(harness.stub, chain("large", "noop"))
    inputs = struct({"text": "x" * 700_000})
    expected = []
    for _ in range(24):
        created = await harness.stub.CreateSchedule(
            engine_pb2.CreateScheduleRequest(
                schedule=engine_pb2.Schedule(workflow_id="large", cron="0 0 1 1 *", inputs=inputs)
            )
        )
        expected.append(created.schedule.id)
    pages = [page async for page in _schedule_pages(harness)]
    assert len(pages) > 1
    assert sorted(s.id for page in pages for s in page) == sorted(expected)


async def _schedule_pages(harness: Harness) -> AsyncIterator[list[engine_pb2.Schedule]]:
    token = ""
    for _ in range(100):
        response = await harness.stub.ListSchedules(
            engine_pb2.ListSchedulesRequest(page_token=token), timeout=WAIT_SECONDS
        )
        yield list(response.schedules)
        token = response.next_page_token
        if not token:
            return
    raise AssertionError("paging never ended")


async def test_a_workflow_page_reads_only_its_own_definitions(harness: Harness) -> None:
    # Every call read and parsed every definition of the tenant, on the event loop: with
    # a thousand definitions, each ListWorkflows held the loop for a second. Shown here by
    # a stored definition the page does not include and that could not even be parsed.
    for name in ("a-first", "b-second"):
        await register(harness.stub, chain(name, "noop"))
    assert isinstance(harness.store, SqlExecutionStore)
    async with harness.store.engine.begin() as connection:
        await connection.execute(
            insert(workflow_definitions).values(
                tenant="default",
                workflow_id="z-unreadable",
                version=1,
                name="",
                labels={},
                definition={"id": "z-unreadable", "steps": "not a list"},
                created_at=datetime.now(UTC),
            )
        )
    first = await harness.stub.ListWorkflows(engine_pb2.ListWorkflowsRequest(page_size=2))
    assert [w.id for w in first.workflows] == ["a-first", "b-second"]
    assert first.next_page_token

"""A definition at the step limit (a 10,000-step chain) over gRPC: it validates and
registers, and the server's event loop keeps serving while it does.

Validating it is seconds of CPU; it runs on a worker thread. The liveness check is the
largest gap between the ticks of a coroutine on the server's loop while the calls run.
Before validation left the loop, that gap was the whole validation (6 s and more). Now
the loop gets the GIL back every switch interval (5 ms), but the garbage collector's
full collections stop every thread: 0.1-0.4 s each, measured with these 10,000 steps in
the heap on 2 cores shared with other test runs. The bound is a liveness check with room
for those, not a speed target.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from grpc import aio
from stepstream.v1 import engine_pb2, engine_pb2_grpc

from tests.integration.engine.helpers import bounded, definition
from tests.integration.engine.servers import serving

pytestmark = pytest.mark.timeout(300)

STEPS = 10_000
LARGEST_GAP_SECONDS = 2.0


def _chain(count: int) -> dict[str, Any]:
    steps: list[dict[str, Any]] = [{"id": "s0", "action": "noop"}]
    steps += [
        {
            "id": f"s{i}",
            "action": "echo",
            "depends_on": [f"s{i - 1}"],
            "parameters": {"previous": f"${{steps.s{i - 1}.status}}"},
            "when": f"steps.s{i - 1}.status == 'COMPLETED'",
        }
        for i in range(1, count)
    ]
    return {"id": "chain", "steps": steps}


async def _largest_gap(done: asyncio.Event) -> float:
    loop = asyncio.get_running_loop()
    largest = 0.0
    last = loop.time()
    while not done.is_set():
        await asyncio.sleep(0.005)
        now = loop.time()
        largest = max(largest, now - last)
        last = now
    return largest


async def test_a_chain_at_the_step_limit_validates_while_the_loop_keeps_serving(
    sqlite_url: str,
) -> None:
    limits = {"max_definition_steps": STEPS, "max_definition_bytes": 16 * 1024 * 1024}
    message = definition(_chain(STEPS))
    async with (
        serving(sqlite_url, **limits) as server,
        aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        stub = engine_pb2_grpc.EngineServiceStub(channel)
        done = asyncio.Event()
        ticker = asyncio.create_task(_largest_gap(done))
        checked = await bounded(
            stub.ValidateWorkflow(engine_pb2.ValidateWorkflowRequest(definition=message)), 240
        )
        registered = await bounded(
            stub.RegisterWorkflow(engine_pb2.RegisterWorkflowRequest(definition=message)), 240
        )
        done.set()
        largest = await ticker
    assert checked.valid, [(p.path, p.message) for p in checked.problems[:3]]
    assert list(checked.plan) == [f"s{i}" for i in range(STEPS)]
    assert len(checked.stages) == STEPS
    assert len(registered.workflow.steps) == STEPS
    assert largest < LARGEST_GAP_SECONDS


async def test_a_chain_past_the_step_limit_is_refused(sqlite_url: str) -> None:
    async with (
        serving(sqlite_url, max_definition_steps=50) as server,
        aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        stub = engine_pb2_grpc.EngineServiceStub(channel)
        message = definition(_chain(51))
        checked = await bounded(
            stub.ValidateWorkflow(engine_pb2.ValidateWorkflowRequest(definition=message))
        )
    assert [(p.path, p.message) for p in checked.problems] == [
        ("steps", "51 steps, over the limit of 50")
    ]

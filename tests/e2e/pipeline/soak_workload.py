"""The workload of the process-fault test: sizes, workflows, and what each run must end as.

Every workflow is a body of delay steps in layers (each step depends on both steps of
the layer before), plus one part that tells the workflows apart: retries that succeed, a
tolerated failure, a final failure, a sub-workflow. Delays are lower bounds on how long
a run takes, whatever the machine: the longest runs last past the last planned fault,
so every fault lands mid-run.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from typing import Any

from stepstream.v1 import engine_pb2, engine_pb2_grpc

from tests.integration.engine.helpers import definition, register, struct


@dataclass(frozen=True, slots=True)
class Size:
    executions: int
    kills: int
    database_down_seconds: float
    # The planned run: faults are placed at fractions of it (analytics is down for its
    # middle third); the run itself ends when the last execution does.
    planned_seconds: float
    layers: int
    shortest_pause: float
    longest_pause: float
    # Bounds on waiting, generous for a loaded 2-core machine; never asserted on.
    end_within_seconds: float
    drain_within_seconds: float
    test_timeout: float

    @property
    def kill_at(self) -> list[float]:
        """Kills spread over the first third of the run, while analytics is up."""
        first, last = 3.0, self.planned_seconds / 3 - 2
        if self.kills == 1:
            return [first]
        step = (last - first) / (self.kills - 1)
        return [first + k * step for k in range(self.kills)]

    @property
    def analytics_down_at(self) -> tuple[float, float]:
        return self.planned_seconds / 3, 2 * self.planned_seconds / 3

    @property
    def database_down_at(self) -> float:
        """Mid-run, inside the analytics outage (analytics cannot start without its
        database, and both use the one server)."""
        return self.planned_seconds / 2 - self.database_down_seconds / 2


# CI: a reduced size, ~60-90 s. `make soak` (STEPSTREAM_SOAK=1): the full size.
REDUCED = Size(
    executions=30,
    kills=2,
    database_down_seconds=3.0,
    planned_seconds=30.0,
    layers=8,
    shortest_pause=0.3,
    longest_pause=2.5,
    end_within_seconds=120.0,
    drain_within_seconds=90.0,
    test_timeout=240.0,
)
FULL = Size(
    executions=100,
    kills=5,
    database_down_seconds=10.0,
    planned_seconds=60.0,
    layers=10,
    shortest_pause=0.4,
    longest_pause=3.5,
    end_within_seconds=300.0,
    drain_within_seconds=120.0,
    test_timeout=900.0,
)


def chosen_size() -> Size:
    return FULL if os.environ.get("STEPSTREAM_SOAK") == "1" else REDUCED


# Each workflow's share of every 20 executions, and the status every one of its runs
# must end with (lost attempts do not count against retries, see MAX_LOST_ATTEMPTS).
MIX = (
    ("steady", 6, "COMPLETED"),
    ("flaky", 5, "COMPLETED"),
    ("tolerant", 3, "COMPLETED_WITH_ERRORS"),
    ("doomed", 2, "FAILED"),
    ("parent", 4, "COMPLETED"),
)
CHILD = "child"
CHILD_STATUS = "COMPLETED"
# Above any number of attempts one step can lose here (one per kill, one per outage),
# so no run fails for having been interrupted: each status follows from its workflow.
MAX_LOST_ATTEMPTS = 20


def _delay(step_id: str, depends_on: list[str]) -> dict[str, Any]:
    return {
        "id": step_id,
        "action": "delay",
        "parameters": {"seconds": "${inputs.pause}"},
        "depends_on": depends_on,
    }


def _body(layers: int) -> tuple[list[dict[str, Any]], list[str]]:
    """`layers` layers of two delays, each depending on both of the layer before;
    the steps and the ids of the last layer."""
    steps: list[dict[str, Any]] = [{"id": "start", "action": "noop"}]
    previous = ["start"]
    for layer in range(layers):
        current = [f"l{layer}a", f"l{layer}b"]
        steps += [_delay(step_id, previous) for step_id in current]
        previous = current
    return steps, previous


def _extra(workflow_id: str) -> dict[str, Any] | None:
    """The step that sets the workflow apart, after the first layer."""
    after = ["l0a", "l0b"]
    if workflow_id == "flaky":
        return {
            "id": "shaky",
            "action": "fail",
            "depends_on": after,
            "parameters": {"times": 2, "error_type": "Flaky"},
            "retry": {"max_attempts": 3, "initial_interval": "0.1s"},
        }
    if workflow_id == "tolerant":
        return {
            "id": "broken",
            "action": "fail",
            "depends_on": after,
            "parameters": {"error_type": "AlwaysBroken"},
            "retry": {"max_attempts": 2, "initial_interval": "0.1s"},
            "continue_on_error": True,
        }
    if workflow_id == "parent":
        return {
            "id": "sub",
            "action": "workflow",
            "depends_on": after,
            "parameters": {"workflow_id": CHILD, "inputs": {"pause": "${inputs.pause}"}},
        }
    return None


def workflow(workflow_id: str, layers: int) -> dict[str, Any]:
    steps, last = _body(layers)
    extra = _extra(workflow_id)
    if extra is not None:
        steps.append(extra)
        last = [*last, extra["id"]]
    if workflow_id == "doomed":
        end = {"id": "end", "action": "fail", "parameters": {"retryable": False}}
    else:
        end = {"id": "end", "action": "noop"}
    steps.append({**end, "depends_on": last})
    return {"id": workflow_id, "steps": steps}


async def register_all(stub: engine_pb2_grpc.EngineServiceAsyncStub, size: Size) -> None:
    await register(stub, definition(workflow(CHILD, 2)))
    for workflow_id, _, _ in MIX:
        await register(stub, definition(workflow(workflow_id, size.layers)))


def plan(size: Size) -> list[tuple[str, float]]:
    """(workflow, pause) per execution: the mix in turn, pauses spread evenly between
    the shortest and the longest."""
    rota = [workflow_id for workflow_id, share, _ in MIX for _ in range(share)]
    spread = size.longest_pause - size.shortest_pause
    last = max(size.executions - 1, 1)
    # n * 7 mod executions visits every rank once (7 is prime to both sizes).
    ranks = [(n * 7) % size.executions for n in range(size.executions)]
    return [
        (rota[n % len(rota)], round(size.shortest_pause + spread * rank / last, 3))
        for n, rank in enumerate(ranks)
    ]


async def start_all(stub: engine_pb2_grpc.EngineServiceAsyncStub, size: Size) -> dict[str, str]:
    """Starts every planned execution at once; execution id -> workflow."""
    planned = plan(size)
    replies = await asyncio.gather(
        *(
            stub.StartExecution(
                engine_pb2.StartExecutionRequest(
                    workflow_id=workflow_id, inputs=struct({"pause": pause})
                )
            )
            for workflow_id, pause in planned
        )
    )
    return {
        reply.execution.id: workflow_id
        for reply, (workflow_id, _) in zip(replies, planned, strict=True)
    }


def expected_status(workflow_id: str) -> str:
    if workflow_id == CHILD:
        return CHILD_STATUS
    return next(status for wid, _, status in MIX if wid == workflow_id)

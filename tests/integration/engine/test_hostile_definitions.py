"""Definitions built to hurt the engine, sent to a real engine process over gRPC: each is
refused with INVALID_ARGUMENT naming the field, and the process lives on.

A separate process, because what these guard against (a crash of the CEL library) would
take the test process down with it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from grpc import aio
from stepstream.v1 import engine_pb2, engine_pb2_grpc

from tests.e2e.engine.processes import EngineProcess, launch
from tests.integration.engine.helpers import bad_fields, bounded, definition, rpc_error, struct

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def engine_process(tmp_path: Path) -> AsyncIterator[EngineProcess]:
    engine = await launch(f"sqlite+aiosqlite:///{tmp_path / 'engine.db'}", tmp_path / "log")
    try:
        yield engine
    finally:
        await engine.ensure_stopped()


def _lit(count: int) -> str:
    return "[" + ",".join(str(n) for n in range(count)) + "]"


HOSTILE: dict[str, tuple[dict[str, Any], str, str]] = {
    "a selection chain the CEL library crashes on": (
        {"when": "inputs" + ".a" * 20000 + " == 1"},
        "steps[1].when",
        "over the limit of 4096",
    ),
    "a transform the CEL library crashes on": (
        {"action": "transform", "parameters": {"expression": "1" + " + 1" * 20000}},
        "steps[1].parameters.expression",
        "over the limit of 4096",
    ),
    "nesting past the limit": (
        {"when": "inputs" + ".a" * 150 + " == 1"},
        "steps[1].when",
        "deep, over the limit of 100",
    ),
    "comprehensions costing seconds": (
        {"when": f"{_lit(300)}.all(a, {_lit(300)}.all(b, {_lit(300)}.all(c, a + b + c >= 0)))"},
        "steps[1].when",
        "over the budget of 50000",
    ),
}


def _workflow(step: dict[str, Any]) -> dict[str, Any]:
    hostile = {"id": "b", "action": "noop", "depends_on": ["a"], **step}
    return {"id": "hostile", "steps": [{"id": "a", "action": "noop"}, hostile]}


async def test_hostile_definitions_and_inputs_are_refused_and_the_engine_lives_on(
    engine_process: EngineProcess,
) -> None:
    async with aio.insecure_channel(engine_process.target) as channel:
        stub = engine_pb2_grpc.EngineServiceStub(channel)
        for name, (step, field, message) in HOSTILE.items():
            hostile = definition(_workflow(step))
            checked = await bounded(
                stub.ValidateWorkflow(engine_pb2.ValidateWorkflowRequest(definition=hostile))
            )
            assert not checked.valid, name
            assert [(p.path, message in p.message) for p in checked.problems] == [(field, True)]
            error = await rpc_error(
                stub.RegisterWorkflow(engine_pb2.RegisterWorkflowRequest(definition=hostile))
            )
            assert bad_fields(error) == [field], name
        await _regex_schemas(stub)
    assert engine_process.process.returncode is None


async def _regex_schemas(stub: engine_pb2_grpc.EngineServiceAsyncStub) -> None:
    """A pattern RE2 cannot run is refused; one Python's `re` would backtrack on for
    ever (2**64 steps) answers at once."""
    backreference = {**_workflow({}), "input_schema": _schema("(a)\\1")}
    error = await rpc_error(
        stub.RegisterWorkflow(
            engine_pb2.RegisterWorkflowRequest(definition=definition(backreference))
        )
    )
    assert bad_fields(error) == ["input_schema.properties.x.pattern"]
    catastrophic = {**_workflow({}), "input_schema": _schema("^(a+)+$")}
    await bounded(
        stub.RegisterWorkflow(
            engine_pb2.RegisterWorkflowRequest(definition=definition(catastrophic))
        )
    )
    inputs = struct({"x": "a" * 64 + "!"})
    error = await rpc_error(
        stub.StartExecution(engine_pb2.StartExecutionRequest(workflow_id="hostile", inputs=inputs))
    )
    assert bad_fields(error) == ["inputs.x"]


def _schema(pattern: str) -> dict[str, Any]:
    return {"type": "object", "properties": {"x": {"type": "string", "pattern": pattern}}}

"""What an action returns or raises that a store cannot keep (a NUL, an over-long error
type) fails its step with a clear error on both databases, instead of failing every write
of the run for ever (on Postgres the run stayed RUNNING, retried each lease round)."""

from __future__ import annotations

from stepstream.v1 import events_pb2

from tests.integration.engine.conftest import Harness
from tests.integration.engine.helpers import bounded, definition, register, run_to_end


async def test_an_output_holding_a_nul_fails_its_step(harness: Harness) -> None:
    # The request holds no NUL: the CEL string escape makes one in the output.
    steps = [{"id": "t", "action": "transform", "parameters": {"expression": "'a\\x00b'"}}]
    await register(harness.stub, definition({"id": "nul", "steps": steps}))
    final = await bounded(run_to_end(harness.stub, "nul"))
    assert final.status == events_pb2.EXECUTION_STATUS_FAILED
    assert final.steps[0].error.type == "OutputNotStorable"


async def test_an_over_long_error_type_is_cut_and_ends_the_run(harness: Harness) -> None:
    parameters = {"error_type": "E" * 300, "message": "bad news", "retryable": False}
    steps = [{"id": "s0", "action": "fail", "parameters": parameters}]
    await register(harness.stub, definition({"id": "long", "steps": steps}))
    final = await bounded(run_to_end(harness.stub, "long"))
    assert final.status == events_pb2.EXECUTION_STATUS_FAILED
    error = final.steps[0].error
    assert error.type.startswith("EEEE")
    assert len(error.type) == 128
    assert error.message.endswith("bad news")

"""Responses built off the event loop when what they carry is large, and pages bounded.

protobuf's Struct and JSON conversions are pure Python, about a second per 100,000
values: a page of large definitions or an execution with a megabyte of inputs would
hold the event loop (health checks, every other call) that long. Each function here
weighs the JSON its values carry (`json.dumps`, in C, about a millisecond per megabyte)
and converts in the CPU lane past `mapping.OFF_LOOP_BYTES`.

A page of a List call also ends early once its items carry PAGE_BYTES of JSON, with a
token for the rest: a hundred executions of a megabyte each would otherwise make a
response larger than any client accepts, and that page could never be read.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from stepstream.v1 import engine_pb2, events_pb2, workflow_pb2

from engine_service.core.model import WorkflowDefinition
from engine_service.core.schedules import Schedule
from engine_service.core.state import ExecutionEvent, ExecutionState
from engine_service.core.store import Page, decode_page_token, encode_page_token
from engine_service.transport import mapping
from engine_service.transport.offload import CpuLane

T = TypeVar("T")
V = TypeVar("V")
# The JSON a page's items may carry; in protobuf it grows by up to about 5.5 times (for
# arrays of small numbers), which keeps a page under the 16 MiB message limit.
PAGE_BYTES = 2 * 1024 * 1024


async def definition_page(
    page: Page[WorkflowDefinition], page_token: str, lane: CpuLane
) -> tuple[list[workflow_pb2.WorkflowDefinition], str]:
    items, token = _fitted(page, page_token, lambda d: (d.source,))
    return await definitions(items, lane), token


async def execution_page(
    page: Page[ExecutionState], page_token: str, lane: CpuLane
) -> tuple[list[engine_pb2.Execution], str]:
    items, token = _fitted(page, page_token, _execution_payloads)
    return await executions(items, lane), token


async def schedule_page(
    page: Page[Schedule], page_token: str, lane: CpuLane
) -> tuple[list[engine_pb2.Schedule], str]:
    items, token = _fitted(page, page_token, lambda s: (s.inputs,))
    return await schedules(items, lane), token


async def definitions(
    items: Sequence[WorkflowDefinition], lane: CpuLane
) -> list[workflow_pb2.WorkflowDefinition]:
    return await converted(mapping.definition_to_proto, items, (d.source for d in items), lane)


async def definition(item: WorkflowDefinition, lane: CpuLane) -> workflow_pb2.WorkflowDefinition:
    (message,) = await definitions([item], lane)
    return message


async def executions(items: Sequence[ExecutionState], lane: CpuLane) -> list[engine_pb2.Execution]:
    payloads = (payload for state in items for payload in _execution_payloads(state))
    return await converted(mapping.execution_to_proto, items, payloads, lane)


async def execution(item: ExecutionState, lane: CpuLane) -> engine_pb2.Execution:
    (message,) = await executions([item], lane)
    return message


async def schedules(items: Sequence[Schedule], lane: CpuLane) -> list[engine_pb2.Schedule]:
    return await converted(mapping.schedule_to_proto, items, (s.inputs for s in items), lane)


async def schedule(item: Schedule, lane: CpuLane) -> engine_pb2.Schedule:
    (message,) = await schedules([item], lane)
    return message


async def batch(
    events: list[ExecutionEvent], batch_id: str, lane: CpuLane
) -> events_pb2.EventBatch:
    if _large(payload for e in events for payload in (e.inputs, e.output)):
        return await lane.run(lambda: mapping.batch_to_proto(events, batch_id))
    return mapping.batch_to_proto(events, batch_id)


def _fitted(
    page: Page[V], page_token: str, payloads_of: Callable[[V], Iterable[Any]]
) -> tuple[Sequence[V], str]:
    """The leading items of `page` that fit in PAGE_BYTES (at least one), and the token
    of the page after them."""
    weight = 0
    for index, item in enumerate(page.items):
        weight += sum(_json_bytes(payload) for payload in payloads_of(item))
        if weight > PAGE_BYTES and index > 0:
            return page.items[:index], encode_page_token(decode_page_token(page_token) + index)
    return page.items, page.next_page_token


def _execution_payloads(state: ExecutionState) -> Iterable[Any]:
    yield state.inputs
    for step in state.steps.values():
        yield step.output


async def converted(
    convert: Callable[[V], T], items: Sequence[V], payloads: Iterable[Any], lane: CpuLane
) -> list[T]:
    """`convert` of each item; in the CPU lane when `payloads` weigh more than
    OFF_LOOP_BYTES."""
    if _large(payloads):
        return await lane.run(lambda: [convert(item) for item in items])
    return [convert(item) for item in items]


def _large(payloads: Iterable[Any]) -> bool:
    """Whether `payloads` hold more than OFF_LOOP_BYTES of JSON (what is not JSON counted
    as its text); weighed one at a time, so a large page stops at its first large item."""
    weight = 0
    for payload in payloads:
        weight += _json_bytes(payload)
        if weight > mapping.OFF_LOOP_BYTES:
            return True
    return False


def _json_bytes(payload: Any) -> int:
    return len(json.dumps(payload, default=str))

"""Responses built off the event loop when what they carry is large.

protobuf's Struct and JSON conversions are pure Python, about a second per 100,000
values: a page of large definitions or an execution with a megabyte of inputs would
hold the event loop (health checks, every other call) that long. Each function here
weighs the JSON its values carry (`json.dumps`, in C, about a millisecond per megabyte)
and converts on a worker thread past `mapping.OFF_LOOP_BYTES`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from stepstream.v1 import engine_pb2, events_pb2, workflow_pb2

from engine_service.core.model import WorkflowDefinition
from engine_service.core.schedules import Schedule
from engine_service.core.state import ExecutionEvent, ExecutionState
from engine_service.transport import mapping

T = TypeVar("T")
V = TypeVar("V")


async def definitions(items: Sequence[WorkflowDefinition]) -> list[workflow_pb2.WorkflowDefinition]:
    return await converted(mapping.definition_to_proto, items, [d.source for d in items])


async def definition(item: WorkflowDefinition) -> workflow_pb2.WorkflowDefinition:
    (message,) = await definitions([item])
    return message


async def executions(items: Sequence[ExecutionState]) -> list[engine_pb2.Execution]:
    payloads = [payload for state in items for payload in _execution_payloads(state)]
    return await converted(mapping.execution_to_proto, items, payloads)


async def execution(item: ExecutionState) -> engine_pb2.Execution:
    (message,) = await executions([item])
    return message


async def schedules(items: Sequence[Schedule]) -> list[engine_pb2.Schedule]:
    return await converted(mapping.schedule_to_proto, items, [s.inputs for s in items])


async def schedule(item: Schedule) -> engine_pb2.Schedule:
    (message,) = await schedules([item])
    return message


async def batch(events: list[ExecutionEvent], batch_id: str) -> events_pb2.EventBatch:
    payloads = [(e.inputs, e.output) for e in events]
    if _weight(payloads) > mapping.OFF_LOOP_BYTES:
        return await asyncio.to_thread(mapping.batch_to_proto, events, batch_id)
    return mapping.batch_to_proto(events, batch_id)


def _execution_payloads(state: ExecutionState) -> Iterable[Any]:
    yield state.inputs
    for step in state.steps.values():
        yield step.output


async def converted(
    convert: Callable[[V], T], items: Sequence[V], payloads: Iterable[Any]
) -> list[T]:
    """`convert` of each item; on a worker thread when `payloads` weigh more than
    OFF_LOOP_BYTES."""
    if _weight(payloads) > mapping.OFF_LOOP_BYTES:
        return await asyncio.to_thread(lambda: [convert(item) for item in items])
    return [convert(item) for item in items]


def _weight(payloads: Iterable[Any]) -> int:
    """The bytes of JSON `payloads` hold, roughly (what is not JSON counted as its text)."""
    return sum(len(json.dumps(payload, default=str)) for payload in payloads)

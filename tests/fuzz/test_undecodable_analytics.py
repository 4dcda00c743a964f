"""Bytes that are not a request, on every method of the analytics service: INVALID_ARGUMENT.

They were UNKNOWN ("DecodeError raised by servicer method"), and INTERNAL on IngestEvents,
whose request stream the servicer reads itself.
"""

from __future__ import annotations

import random

import grpc
from grpc import aio
from stepstream.v1 import analytics_pb2

from tests.fuzz import wire
from tests.fuzz.analytics_world import analytics_world

SERVICE = analytics_pb2.DESCRIPTOR.services_by_name["AnalyticsService"]
WAIT_SECONDS = 20.0


def _not_messages(method: object) -> dict[str, bytes]:
    input_type = method.input_type  # type: ignore[attr-defined]
    found = {"garbage": b"\xff", "nested past 100": wire.deep_groups(random.Random(0))}
    for path in wire.string_paths(input_type)[:1]:
        found["invalid UTF-8"] = wire.nested_payload(path, b"\xc3\x28")
    return found


async def _code(channel: aio.Channel, method: object, body: bytes) -> grpc.StatusCode:
    path = f"/{SERVICE.full_name}/{method.name}"  # type: ignore[attr-defined]
    try:
        if method.client_streaming:  # type: ignore[attr-defined]
            call = channel.stream_unary(path, None, None)(None, timeout=WAIT_SECONDS)
            await call.write(body)
            await call.done_writing()
            await call
        elif method.server_streaming:  # type: ignore[attr-defined]
            await channel.unary_stream(path, None, None)(body, timeout=WAIT_SECONDS).read()
        else:
            await channel.unary_unary(path, None, None)(body, timeout=WAIT_SECONDS)
    except aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def test_bytes_that_are_not_a_request_are_invalid_argument(database_url: str) -> None:
    async with (
        analytics_world(database_url) as world,
        aio.insecure_channel(world.target) as channel,
    ):
        seen = {
            (method.name, reason): await _code(channel, method, body)
            for method in SERVICE.methods
            for reason, body in _not_messages(method).items()
        }
        seen[("Health/Check", "garbage")] = await _code_of_health(channel)
    wrong = {
        key: code for key, code in seen.items() if code is not grpc.StatusCode.INVALID_ARGUMENT
    }
    assert wrong == {}
    assert len(seen) >= 3 * len(SERVICE.methods)


async def _code_of_health(channel: aio.Channel) -> grpc.StatusCode:
    try:
        await channel.unary_unary("/grpc.health.v1.Health/Check", None, None)(b"\xff")
    except aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK

"""Admission: each request is decoded and checked at the boundary before its handler runs.

A request whose bytes do not decode is INVALID_ARGUMENT on every method (see
`decoding`). Decoded requests of the services named are then checked by
`boundary.request_problems`, large ones off the event loop (in the CPU lane of
`offload`) so that one big request cannot delay health checks or other tenants. Either
refusal is raised inside the ErrorInterceptor, like any other error of a handler.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.message import Message
from grpc import aio

from engine_service.core.errors import InvalidArgument, Problem
from engine_service.transport.boundary import RequestLimits, request_problems
from engine_service.transport.decoding import Undecodable, admitting
from engine_service.transport.mapping import OFF_LOOP_BYTES
from engine_service.transport.offload import CpuLane

if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]
    Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[Handler]]


class AdmissionInterceptor(aio.ServerInterceptor):  # type: ignore[type-arg]
    """Refuses requests that do not decode (every method) or fail the boundary checks
    (methods whose path starts with one of `checked_prefixes`)."""

    def __init__(
        self, limits: RequestLimits, checked_prefixes: tuple[str, ...], lane: CpuLane
    ) -> None:
        self._limits = limits
        self._prefixes = checked_prefixes
        self._lane = lane

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        checked = handler_call_details.method.startswith(self._prefixes)
        return admitting(handler, self._admit if checked else refuse_undecodable)

    async def _admit(self, request: Any) -> None:
        await refuse_undecodable(request)
        if not isinstance(request, Message):
            return
        if request.ByteSize() > OFF_LOOP_BYTES:
            problems = await self._lane.run(lambda: request_problems(request, self._limits))
        else:
            problems = request_problems(request, self._limits)
        if problems:
            raise InvalidArgument(problems=problems)


async def refuse_undecodable(request: Any) -> None:
    if isinstance(request, Undecodable):
        raise InvalidArgument(problems=[Problem("", str(request))])

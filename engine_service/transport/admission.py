"""Admission: each request is decoded and checked at the boundary before its handler runs.

gRPC decodes a request outside the handler, so a DecodeError (bytes that are not the
message, invalid UTF-8 in a string, nesting past protobuf's limit) would escape every
interceptor as UNKNOWN. Here the deserializer never raises: it hands the handler an
`Undecodable` in place of the message, and the wrapped handler refuses it with
INVALID_ARGUMENT, inside the ErrorInterceptor like any other error. Decoded requests of
the services named are then checked by `boundary.request_problems`; large ones off the
event loop, so one big request cannot delay health checks or other tenants.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.message import Message
from grpc import aio

from engine_service.core.errors import InvalidArgument, Problem
from engine_service.transport.boundary import RequestLimits, request_problems
from engine_service.transport.mapping import OFF_LOOP_BYTES

if TYPE_CHECKING:
    Context = aio.ServicerContext[Any, Any]
    Handler = grpc.RpcMethodHandler[Any, Any]
    Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[Handler]]

_FACTORIES = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


@dataclass(frozen=True, slots=True)
class Undecodable:
    """What a handler gets instead of a request whose bytes did not decode."""

    message_type: str
    reason: str


def tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """`deserializer`, returning an Undecodable where it would raise."""
    if deserializer is None:
        return None
    owner = getattr(deserializer, "__self__", None)
    descriptor = getattr(owner, "DESCRIPTOR", None)
    message_type = getattr(descriptor, "full_name", "the request message")

    def decode(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except Exception as exc:  # DecodeError, or RecursionError-like failures of the parser
            return Undecodable(message_type, type(exc).__name__)

    return decode


class AdmissionInterceptor(aio.ServerInterceptor):  # type: ignore[type-arg]
    """Refuses requests that do not decode (every method) or fail the boundary checks
    (methods whose path starts with one of `checked_prefixes`)."""

    def __init__(self, limits: RequestLimits, checked_prefixes: tuple[str, ...]) -> None:
        self._limits = limits
        self._prefixes = checked_prefixes

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        checked = handler_call_details.method.startswith(self._prefixes)
        return self._wrap(handler, checked)

    def _wrap(self, handler: Handler, checked: bool) -> Handler:
        behavior = (
            handler.unary_unary
            or handler.unary_stream
            or handler.stream_unary
            or handler.stream_stream
        )
        assert behavior is not None
        admit = self._admit if checked else _admit_decoded
        if handler.request_streaming:
            wrapped: Callable[..., Any] = _streaming_requests(behavior, admit)
        elif inspect.isasyncgenfunction(behavior):
            wrapped = _unary_request_stream(behavior, admit)
        else:
            wrapped = _unary_request(behavior, admit)
        factory = _FACTORIES[(handler.request_streaming, handler.response_streaming)]
        return factory(
            wrapped,
            request_deserializer=tolerant(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )

    async def _admit(self, request: Any) -> None:
        _admit_decoded(request)
        if not isinstance(request, Message):
            return
        if request.ByteSize() > OFF_LOOP_BYTES:
            problems = await asyncio.to_thread(request_problems, request, self._limits)
        else:
            problems = request_problems(request, self._limits)
        if problems:
            raise InvalidArgument(problems=problems)


Admit = Callable[[Any], Any]


def _admit_decoded(request: Any) -> None:
    if isinstance(request, Undecodable):
        message = f"the request does not decode as {request.message_type} ({request.reason})"
        raise InvalidArgument(problems=[Problem("", message)])


async def _admitted(admit: Admit, request: Any) -> None:
    result = admit(request)
    if inspect.isawaitable(result):
        await result


def _unary_request(behavior: Callable[..., Any], admit: Admit) -> Callable[..., Any]:
    async def call(request: Any, context: Context) -> Any:
        await _admitted(admit, request)
        result = behavior(request, context)
        return await result if inspect.isawaitable(result) else result

    return call


def _unary_request_stream(behavior: Callable[..., Any], admit: Admit) -> Callable[..., Any]:
    async def stream(request: Any, context: Context) -> AsyncIterator[Any]:
        await _admitted(admit, request)
        async for response in behavior(request, context):
            yield response

    return stream


def _streaming_requests(behavior: Callable[..., Any], admit: Admit) -> Callable[..., Any]:
    """Each message of a request stream is admitted as the handler reads it."""

    async def checked(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
        async for request in requests:
            await _admitted(admit, request)
            yield request

    if inspect.isasyncgenfunction(behavior):

        async def stream(requests: AsyncIterator[Any], context: Context) -> AsyncIterator[Any]:
            async for response in behavior(checked(requests), context):
                yield response

        return stream

    async def call(requests: AsyncIterator[Any], context: Context) -> Any:
        result = behavior(checked(requests), context)
        return await result if inspect.isawaitable(result) else result

    return call

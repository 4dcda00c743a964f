"""Requests that do not decode: refused by the service, not UNKNOWN from grpc.

gRPC decodes a request before any interceptor's handler runs, so a DecodeError (bytes
that are not the message, invalid UTF-8 in a string, nesting past protobuf's limit of
100) escapes them all and the client gets UNKNOWN with the exception's text. `admitting`
gives a handler a deserializer that never raises: it hands over an `Undecodable` in place
of the message, and every request (each message of a request stream too) goes through
`admit` before the handler sees it; `admit` raises the service's own error for it.

A copy of engine_service/transport/decoding.py, plus `refuse_undecodable` with this
service's error: the services share nothing but the contract.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc

from analytics_service.core.errors import InvalidArgumentError

if TYPE_CHECKING:
    from grpc import aio

    Context = aio.ServicerContext[Any, Any]
    Handler = grpc.RpcMethodHandler[Any, Any]

Admit = Callable[[Any], Awaitable[None]]

_FACTORIES = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


@dataclass(frozen=True, slots=True)
class Undecodable:
    """What a handler is given instead of a request whose bytes did not decode."""

    message_type: str
    reason: str

    def __str__(self) -> str:
        return f"the request does not decode as {self.message_type} ({self.reason})"


def tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """`deserializer`, returning an Undecodable where it would raise."""
    if deserializer is None:
        return None
    descriptor = getattr(getattr(deserializer, "__self__", None), "DESCRIPTOR", None)
    message_type = getattr(descriptor, "full_name", "the request message")

    def decode(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except Exception as exc:  # DecodeError, or whatever else the parser raises
            return Undecodable(message_type, type(exc).__name__)

    return decode


def admitting(handler: Handler, admit: Admit) -> Handler:
    """`handler` with a tolerant deserializer, each request passed to `admit` first."""
    behavior = (
        handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
    )
    assert behavior is not None
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


def _unary_request(behavior: Callable[..., Any], admit: Admit) -> Callable[..., Any]:
    async def call(request: Any, context: Context) -> Any:
        await admit(request)
        result = behavior(request, context)
        return await result if inspect.isawaitable(result) else result

    return call


def _unary_request_stream(behavior: Callable[..., Any], admit: Admit) -> Callable[..., Any]:
    async def stream(request: Any, context: Context) -> AsyncIterator[Any]:
        await admit(request)
        async for response in behavior(request, context):
            yield response

    return stream


def _streaming_requests(behavior: Callable[..., Any], admit: Admit) -> Callable[..., Any]:
    """Each message of a request stream is admitted as the handler reads it."""

    async def admitted(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
        async for request in requests:
            await admit(request)
            yield request

    if inspect.isasyncgenfunction(behavior):

        async def stream(requests: AsyncIterator[Any], context: Context) -> AsyncIterator[Any]:
            async for response in behavior(admitted(requests), context):
                yield response

        return stream

    async def call(requests: AsyncIterator[Any], context: Context) -> Any:
        result = behavior(admitted(requests), context)
        return await result if inspect.isawaitable(result) else result

    return call


async def refuse_undecodable(request: Any) -> None:
    """The `admit` of the analytics service: INVALID_ARGUMENT for bytes that did not decode."""
    if isinstance(request, Undecodable):
        raise InvalidArgumentError.single("", str(request))

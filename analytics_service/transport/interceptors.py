"""Server interceptors: domain errors to status codes, bearer-token auth, RPC latency.

Each wraps the behaviour of every method handler, so one code path covers unary and
streaming methods alike.
"""

from __future__ import annotations

import inspect
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from analytics_service.core.auth import TokenTable
from analytics_service.core.errors import (
    AnalyticsError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    StorageError,
    UnauthenticatedError,
)
from analytics_service.metrics import AnalyticsMetrics
from analytics_service.transport.decoding import admitting, refuse_undecodable

logger = logging.getLogger(__name__)

HEALTH_PREFIX = "/grpc.health.v1.Health/"
Behavior: TypeAlias = "Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Any]"
UnaryWrapper = Callable[[Behavior, str], Callable[..., Awaitable[Any]]]
StreamWrapper = Callable[[Behavior, str], Callable[..., AsyncIterator[Any]]]

if TYPE_CHECKING:
    ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:  # generic only in the type stubs
    ServerInterceptor = grpc.aio.ServerInterceptor

_CODES: dict[type[AnalyticsError], int] = {
    InvalidArgumentError: code_pb2.INVALID_ARGUMENT,
    NotFoundError: code_pb2.NOT_FOUND,
    UnauthenticatedError: code_pb2.UNAUTHENTICATED,
    PermissionDeniedError: code_pb2.PERMISSION_DENIED,
    StorageError: code_pb2.UNAVAILABLE,
}


def rewrap(
    handler: grpc.RpcMethodHandler[Any, Any],
    method: str,
    unary: UnaryWrapper,
    stream: StreamWrapper,
) -> grpc.RpcMethodHandler[Any, Any]:
    kinds = (
        ("unary_unary", grpc.unary_unary_rpc_method_handler, unary),
        ("stream_unary", grpc.stream_unary_rpc_method_handler, unary),
        ("unary_stream", grpc.unary_stream_rpc_method_handler, stream),
        ("stream_stream", grpc.stream_stream_rpc_method_handler, stream),
    )
    for attribute, make, wrap in kinds:
        behavior = getattr(handler, attribute)
        if behavior is not None:
            if not inspect.isasyncgenfunction(behavior):
                # Streaming servicers may also be coroutines that call context.write().
                wrap = unary
            return make(
                wrap(behavior, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
    return handler


def status_of(exc: AnalyticsError) -> status_pb2.Status:
    code = next((c for kind, c in _CODES.items() if isinstance(exc, kind)), code_pb2.INTERNAL)
    status = status_pb2.Status(code=code, message=str(exc))
    if isinstance(exc, InvalidArgumentError):
        violations = [
            error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
            for v in exc.violations
        ]
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.BadRequest(field_violations=violations))
        status.details.append(detail)
    return status


async def _abort(context: grpc.aio.ServicerContext[Any, Any], exc: Exception, method: str) -> None:
    status = status_of(exc) if isinstance(exc, AnalyticsError) else None
    if status is not None and status.code != code_pb2.INTERNAL:
        wire = rpc_status.to_status(status)
        await context.abort(wire.code, wire.details, wire.trailing_metadata)
    trace_id = uuid.uuid4().hex
    logger.exception("unexpected error in %s (trace id %s)", method, trace_id)
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error (trace id {trace_id})")


class ErrorInterceptor(ServerInterceptor):
    """Domain errors become their status codes; anything else INTERNAL with a trace id."""

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        # Bytes that are not the request message are INVALID_ARGUMENT, not grpc's UNKNOWN.
        handler = admitting(handler, refuse_undecodable)
        return rewrap(handler, handler_call_details.method, _guard_unary, _guard_stream)


def _guard_unary(behavior: Behavior, method: str) -> Callable[..., Awaitable[Any]]:
    async def guarded(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            return await behavior(request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _abort(context, exc, method)

    return guarded


def _guard_stream(behavior: Behavior, method: str) -> Callable[..., AsyncIterator[Any]]:
    async def guarded(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            async for response in behavior(request, context):
                yield response
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _abort(context, exc, method)

    return guarded


def bearer_token(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            return token.strip() if scheme.lower() == "bearer" else None
    return None


class AuthInterceptor(ServerInterceptor):
    """Rejects calls without a known bearer token; the health service stays open."""

    def __init__(self, tokens: TokenTable) -> None:
        self._tokens = tokens

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(HEALTH_PREFIX) or not self._tokens.enabled:
            return handler
        return rewrap(handler, method, self._check_unary, self._check_stream)

    def _check_unary(self, behavior: Behavior, method: str) -> Callable[..., Awaitable[Any]]:
        async def checked(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            self._tokens.scope_of(bearer_token(context))
            return await behavior(request, context)

        return checked

    def _check_stream(self, behavior: Behavior, method: str) -> Callable[..., AsyncIterator[Any]]:
        async def checked(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            self._tokens.scope_of(bearer_token(context))
            async for response in behavior(request, context):
                yield response

        return checked


class LatencyInterceptor(ServerInterceptor):
    """Observes how long each RPC of the analytics service takes, by method name."""

    def __init__(self, metrics: AnalyticsMetrics) -> None:
        self._metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None or not handler_call_details.method.startswith("/stepstream."):
            return handler
        return rewrap(handler, handler_call_details.method, self._time_unary, self._time_stream)

    def _observe(self, method: str, started: float) -> None:
        rpc = method.rsplit("/", 1)[-1]
        self._metrics.rpc_seconds.labels(rpc=rpc).observe(time.perf_counter() - started)

    def _time_unary(self, behavior: Behavior, method: str) -> Callable[..., Awaitable[Any]]:
        async def timed(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            started = time.perf_counter()
            try:
                return await behavior(request, context)
            finally:
                self._observe(method, started)

        return timed

    def _time_stream(self, behavior: Behavior, method: str) -> Callable[..., AsyncIterator[Any]]:
        async def timed(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            started = time.perf_counter()
            try:
                async for response in behavior(request, context):
                    yield response
            finally:
                self._observe(method, started)

        return timed

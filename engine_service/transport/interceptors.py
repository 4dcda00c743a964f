"""Server interceptors: engine errors to gRPC statuses, and request metrics.

Both wrap every kind of handler (unary or streaming on either side) the same way: the
handler's work runs inside an async context manager (`guard`) that sees how it ended.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

import grpc
from grpc import aio

from engine_service.transport.errors import status_for

if TYPE_CHECKING:
    Context = aio.ServicerContext[Any, Any]
    Handler = grpc.RpcMethodHandler[Any, Any]
    Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[Handler]]
_HANDLER_FACTORIES = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


class GuardingInterceptor(aio.ServerInterceptor, abc.ABC):  # type: ignore[type-arg]
    """Runs each call of each handler inside `self.guard(method, context)`."""

    @abc.abstractmethod
    def guard(self, method: str, context: Context) -> contextlib.AbstractAsyncContextManager[None]:
        """Entered before the handler runs and exited when it has finished."""

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        return self._wrap(handler, handler_call_details.method)

    def _wrap(self, handler: Handler, method: str) -> Handler:
        behavior = (
            handler.unary_unary
            or handler.unary_stream
            or handler.stream_unary
            or handler.stream_stream
        )
        assert behavior is not None
        if inspect.isasyncgenfunction(behavior):
            wrapped: Callable[..., Any] = self._wrap_generator(behavior, method)
        else:
            wrapped = self._wrap_coroutine(behavior, method)
        factory = _HANDLER_FACTORIES[(handler.request_streaming, handler.response_streaming)]
        return factory(
            wrapped,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _wrap_coroutine(
        self, behavior: Callable[..., Any], method: str
    ) -> Callable[[Any, Context], Awaitable[Any]]:
        async def call(request: Any, context: Context) -> Any:
            async with self.guard(method, context):
                result = behavior(request, context)
                return await result if inspect.isawaitable(result) else result

        return call

    def _wrap_generator(
        self, behavior: Callable[..., Any], method: str
    ) -> Callable[[Any, Context], AsyncIterator[Any]]:
        async def stream(request: Any, context: Context) -> AsyncIterator[Any]:
            async with self.guard(method, context):
                async for response in behavior(request, context):
                    yield response

        return stream


class ErrorInterceptor(GuardingInterceptor):
    """Maps every exception a handler raises to a status with `google.rpc` details."""

    @contextlib.asynccontextmanager
    async def guard(self, method: str, context: Context) -> AsyncIterator[None]:
        try:
            yield
        except aio.AbortError:
            raise  # the handler chose its status already
        except Exception as exc:
            status = status_for(exc)
            await context.abort(status.code, status.details, status.trailing_metadata)


class RequestRecorder(Protocol):
    def observe_request(self, method: str, code: str, seconds: float) -> None: ...


class MetricsInterceptor(GuardingInterceptor):
    """Counts requests by method and status code and observes their latency."""

    def __init__(self, recorder: RequestRecorder) -> None:
        self._recorder = recorder

    @contextlib.asynccontextmanager
    async def guard(self, method: str, context: Context) -> AsyncIterator[None]:
        started = time.perf_counter()
        code = grpc.StatusCode.UNKNOWN
        try:
            yield
            code = _code_of(context, grpc.StatusCode.OK)
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except BaseException:
            code = _code_of(context, grpc.StatusCode.UNKNOWN)
            raise
        finally:
            self._recorder.observe_request(method, code.name, time.perf_counter() - started)


def _code_of(context: Context, default: grpc.StatusCode) -> grpc.StatusCode:
    """The code the handler set or aborted with; `default` when it set none."""
    code: Any = context.code()
    if isinstance(code, grpc.StatusCode):
        return code if code is not grpc.StatusCode.OK else default
    for candidate in grpc.StatusCode:
        if candidate.value[0] == code:
            return candidate if candidate is not grpc.StatusCode.OK else default
    return default

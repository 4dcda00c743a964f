"""The analytics service's request boundary: every request is checked here, field by field,
before a servicer or the core reads it.

The walk follows the message descriptors, so a field added to the contract is checked
without anyone remembering to: enum numbers the contract does not define, doubles that are
not finite, Timestamps and Durations out of their range (or negative), strings with NUL
(Postgres refuses it) or longer than the column they are stored in. Each problem is named
by its field path (`rule.window`, `batch[0].events[3].business_value`: the messages of a
stream are numbered by their top-level field), and a request with any problem is refused
whole with INVALID_ARGUMENT, so the database never sees a value it could fail on. One
exception: an event's error type and message (whatever an action raised) are cut and
cleaned instead (`clean_error_texts`), so the failure is counted.

Struct fields (an event's inputs and output) are not walked: analytics never reads them.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final

import grpc
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from stepstream.v1 import analytics_pb2, events_pb2

from analytics_service.core.errors import FieldViolation, InvalidArgumentError
from analytics_service.transport.interceptors import (
    Behavior,
    ServerInterceptor,
    rewrap,
)

# Timestamp and Duration ranges of the protobuf spec (0001-01-01 to 9999-12-31, ±10,000 y).
MIN_TIMESTAMP_SECONDS: Final = -62_135_596_800
MAX_TIMESTAMP_SECONDS: Final = 253_402_300_799
MAX_NANOS: Final = 999_999_999
# The widths of the columns these strings are stored in (analytics_service.storage.models).
IDENTIFIER_COLUMN: Final = 128
NAME_COLUMN: Final = 256
# Enough to name what is wrong without answering a huge request with a huge error.
MAX_VIOLATIONS: Final = 20
# What NUL becomes in an event's error texts, and the end of a message cut to its limit.
REPLACEMENT: Final = "\ufffd"
TRUNCATED: Final = " ... [truncated]"

# Stored in id-width columns: tenants, ids of events, executions and rules.
_IDENTIFIERS: Final = frozenset(
    {
        "tenant",
        "id",
        "event_id",
        "execution_id",
        "parent_execution_id",
        "child_execution_id",
        "rule_id",
        "batch_id",
        "page_token",
    }
)
# Stored in name-width columns: workflows, steps, actions, error types, rule names.
_NAMES: Final = frozenset(
    {"workflow_id", "step_id", "parent_step_id", "action", "type", "name", "depends_on"}
    | {"statuses", "missing_inputs"}
)
_OPAQUE: Final = frozenset(
    {"google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"}
)

F = FieldDescriptor


@dataclass(frozen=True, slots=True)
class RequestLimits:
    """Bounds on request values; the settings set them (README "Configuration")."""

    identifier_length: int = IDENTIFIER_COLUMN
    name_length: int = NAME_COLUMN
    text_length: int = 64 * 1024
    duration_seconds: int = 100 * 31_557_600  # a hundred years of 365.25 days
    alert_window_seconds: int = 31 * 86_400


def request_violations(
    message: Message, limits: RequestLimits, *, stream_index: int | None = None
) -> list[FieldViolation]:
    """Everything wrong with `message` (at most MAX_VIOLATIONS), each named by its path.

    `stream_index` numbers a message of a request stream: its top-level fields are then
    named `field[index]`.
    """
    suffix = "" if stream_index is None else f"[{stream_index}]"
    violations: list[FieldViolation] = []
    for violation in _message_violations(message, "", limits, suffix):
        violations.append(violation)
        if len(violations) >= MAX_VIOLATIONS:
            break
    return violations


def check(message: Message, limits: RequestLimits, *, stream_index: int | None = None) -> None:
    """Refuse `message` if anything is wrong with it, once its error texts are cleaned."""
    if isinstance(message, analytics_pb2.IngestEventsRequest):
        for event in message.batch.events:
            if event.HasField("error"):
                clean_error_texts(event.error, limits)
    violations = request_violations(message, limits, stream_index=stream_index)
    if violations:
        raise InvalidArgumentError(violations=tuple(violations))


def clean_error_texts(error: events_pb2.Failure, limits: RequestLimits) -> None:
    """An event's error type and message are cut to their limits (the message with a
    marker) and NUL becomes U+FFFD, rather than the event refused: they are whatever the
    action raised, and the failure must count whatever it says."""
    error.type = error.type.replace("\x00", REPLACEMENT)[: limits.name_length]
    message = error.message.replace("\x00", REPLACEMENT)
    if len(message) > limits.text_length:
        message = message[: max(limits.text_length - len(TRUNCATED), 0)] + TRUNCATED
    error.message = message[: limits.text_length]


def _message_violations(
    message: Message, prefix: str, limits: RequestLimits, suffix: str = ""
) -> Iterator[FieldViolation]:
    for field, value in message.ListFields():
        path = f"{prefix}{field.name}{suffix}"
        if field.is_repeated:
            for index, item in enumerate(value):
                yield from _value_violations(field, item, f"{path}[{index}]", limits)
        else:
            yield from _value_violations(field, value, path, limits)


def _value_violations(
    field: FieldDescriptor, value: Any, path: str, limits: RequestLimits
) -> Iterator[FieldViolation]:
    kind = field.type
    if kind == F.TYPE_STRING:
        yield from _string_violations(field.name, value, path, limits)
    elif kind == F.TYPE_ENUM:
        enum = field.enum_type
        assert enum is not None
        if value not in enum.values_by_number:
            yield FieldViolation(path, f"not a defined {enum.name} value: {value}")
    elif kind in (F.TYPE_DOUBLE, F.TYPE_FLOAT):
        if not math.isfinite(value):
            yield FieldViolation(path, f"must be a finite number, got {value}")
    elif kind == F.TYPE_MESSAGE:
        yield from _submessage_violations(field, value, path, limits)


def _message_type(field: FieldDescriptor) -> Descriptor:
    described = field.message_type
    assert described is not None, f"{field.full_name} is not a message field"
    return described


def _submessage_violations(
    field: FieldDescriptor, value: Message, path: str, limits: RequestLimits
) -> Iterator[FieldViolation]:
    name = _message_type(field).full_name
    if name == "google.protobuf.Timestamp":
        yield from _timestamp_violations(value, path)
    elif name == "google.protobuf.Duration":
        longest = limits.alert_window_seconds if field.name == "window" else None
        yield from _duration_violations(value, path, longest or limits.duration_seconds)
    elif name not in _OPAQUE:
        yield from _message_violations(value, f"{path}.", limits)


def _string_violations(
    name: str, value: str, path: str, limits: RequestLimits
) -> Iterator[FieldViolation]:
    if "\x00" in value:
        yield FieldViolation(path, "must not contain NUL characters")
        return
    if name in _IDENTIFIERS:
        bound = limits.identifier_length
    elif name in _NAMES:
        bound = limits.name_length
    else:
        bound = limits.text_length
    if len(value) > bound:
        yield FieldViolation(path, f"is {len(value)} characters long, over the limit of {bound}")


def _timestamp_violations(value: Any, path: str) -> Iterator[FieldViolation]:
    if not MIN_TIMESTAMP_SECONDS <= value.seconds <= MAX_TIMESTAMP_SECONDS:
        yield FieldViolation(path, "must be between 0001-01-01 and 9999-12-31 (UTC)")
    elif not 0 <= value.nanos <= MAX_NANOS:
        yield FieldViolation(path, f"nanos must be between 0 and {MAX_NANOS}, got {value.nanos}")


def _duration_violations(value: Any, path: str, longest: int) -> Iterator[FieldViolation]:
    if value.seconds < 0 or value.nanos < 0:
        yield FieldViolation(path, "must not be negative")
    elif value.nanos > MAX_NANOS:
        yield FieldViolation(path, f"nanos must be between 0 and {MAX_NANOS}, got {value.nanos}")
    elif value.seconds + value.nanos / 1e9 > longest:
        yield FieldViolation(path, f"must be at most {longest}s")


class BoundaryInterceptor(ServerInterceptor):
    """Checks every request message of the analytics service before its servicer runs.

    Placed after the error interceptor (which turns the refusal into INVALID_ARGUMENT) and
    the auth interceptor (a caller without a token learns nothing about its requests).
    """

    def __init__(self, limits: RequestLimits) -> None:
        self._limits = limits

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
        return rewrap(handler, handler_call_details.method, self._unary, self._stream)

    def _unary(self, behavior: Behavior, method: str) -> Callable[..., Awaitable[Any]]:
        async def checked(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            if isinstance(request, Message):
                check(request, self._limits)
            else:  # a request stream: each message is checked as the servicer reads it
                request = self._checked_stream(request)
            return await behavior(request, context)

        return checked

    def _stream(self, behavior: Behavior, method: str) -> Callable[..., AsyncIterator[Any]]:
        async def checked(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            if isinstance(request, Message):
                check(request, self._limits)
            else:
                request = self._checked_stream(request)
            async for response in behavior(request, context):
                yield response

        return checked

    async def _checked_stream(self, requests: AsyncIterator[Message]) -> AsyncIterator[Message]:
        index = 0
        async for request in requests:
            check(request, self._limits, stream_index=index)
            yield request
            index += 1

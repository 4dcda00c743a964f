"""How failures become gRPC statuses: engine errors with `google.rpc` details.

Each mapping builds a `google.rpc.Status` and turns it into a `grpc.Status` with
`grpc_status.rpc_status.to_status`, so clients decode the details with
`rpc_status.from_call`. Unknown exceptions become INTERNAL with a trace id that is also in
the log; their text never reaches the client.
"""

from __future__ import annotations

import logging
import uuid

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from engine_service.core.commands import CommandNotTaken
from engine_service.core.errors import (
    ConcurrentModification,
    IllegalTransition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    StorageError,
)

log = logging.getLogger(__name__)

ERROR_DOMAIN = "stepstream.dev"


class Unauthenticated(Exception):
    """The call carries no bearer token, a malformed one, or one that is not configured."""


class StreamEnded(Exception):
    """A stream the server ends early; the client can resume after `last_sequence`."""

    code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
    reason = "STREAM_ENDED"

    def __init__(self, message: str, *, execution_id: str = "", last_sequence: int = -1) -> None:
        self.execution_id = execution_id
        self.last_sequence = last_sequence
        super().__init__(message)


class SubscriberFellBehind(StreamEnded):
    """The watcher read too slowly and its bounded buffer overflowed."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "SUBSCRIBER_FELL_BEHIND"


class ServerShuttingDown(StreamEnded):
    """The server is stopping; the stream is closed so shutdown need not wait for it."""

    reason = "SERVER_SHUTTING_DOWN"


def _status(code: grpc.StatusCode, message: str, *details: Message) -> grpc.Status:
    status = status_pb2.Status(code=_rpc_code(code), message=message)
    for detail in details:
        packed = any_pb2.Any()
        packed.Pack(detail)
        status.details.append(packed)
    converted: grpc.Status = rpc_status.to_status(status)
    return converted


def _rpc_code(code: grpc.StatusCode) -> int:
    number: int = code.value[0]
    return number


def invalid_argument(exc: InvalidArgument) -> grpc.Status:
    violations = [
        error_details_pb2.BadRequest.FieldViolation(field=p.path, description=p.message)
        for p in exc.problems
    ]
    return _status(
        grpc.StatusCode.INVALID_ARGUMENT,
        str(exc),
        error_details_pb2.BadRequest(field_violations=violations),
    )


def not_found(exc: NotFound) -> grpc.Status:
    info = error_details_pb2.ResourceInfo(
        resource_type=exc.kind, resource_name=exc.key, description=str(exc)
    )
    return _status(grpc.StatusCode.NOT_FOUND, str(exc), info)


def failed_precondition(exc: IllegalTransition) -> grpc.Status:
    violation = error_details_pb2.PreconditionFailure.Violation(
        type=f"STATUS_{exc.current}", subject=exc.subject, description=str(exc)
    )
    return _status(
        grpc.StatusCode.FAILED_PRECONDITION,
        str(exc),
        error_details_pb2.PreconditionFailure(violations=[violation]),
    )


def aborted(exc: ConcurrentModification) -> grpc.Status:
    info = error_details_pb2.ErrorInfo(
        reason="CONCURRENT_MODIFICATION",
        domain=ERROR_DOMAIN,
        metadata={
            "execution_id": exc.execution_id,
            "expected_sequence": str(exc.expected_sequence),
        },
    )
    return _status(grpc.StatusCode.ABORTED, str(exc), info)


def permission_denied(exc: PermissionDenied) -> grpc.Status:
    info = error_details_pb2.ErrorInfo(
        reason="TENANT_NOT_ALLOWED", domain=ERROR_DOMAIN, metadata={"tenant": exc.tenant}
    )
    return _status(grpc.StatusCode.PERMISSION_DENIED, str(exc), info)


def unauthenticated(exc: Unauthenticated) -> grpc.Status:
    info = error_details_pb2.ErrorInfo(reason="UNAUTHENTICATED", domain=ERROR_DOMAIN)
    return _status(grpc.StatusCode.UNAUTHENTICATED, str(exc), info)


def stream_ended(exc: StreamEnded) -> grpc.Status:
    metadata = {"execution_id": exc.execution_id} if exc.execution_id else {}
    if exc.last_sequence >= 0:
        metadata["after_sequence"] = str(exc.last_sequence)
    info = error_details_pb2.ErrorInfo(reason=exc.reason, domain=ERROR_DOMAIN, metadata=metadata)
    return _status(exc.code, str(exc), info)


def unavailable(exc: StorageError) -> grpc.Status:
    trace_id = _log_with_trace_id(exc)
    message = f"the engine's database failed; retry later (trace id {trace_id})"
    return _status(grpc.StatusCode.UNAVAILABLE, message)


def internal(exc: BaseException) -> grpc.Status:
    trace_id = _log_with_trace_id(exc)
    return _status(grpc.StatusCode.INTERNAL, f"internal error (trace id {trace_id})")


def _log_with_trace_id(exc: BaseException) -> str:
    trace_id = uuid.uuid4().hex
    log.error("request failed (trace id %s)", trace_id, exc_info=exc)
    return trace_id


def status_for(exc: Exception) -> grpc.Status:
    """The status a handler's exception becomes."""
    if isinstance(exc, InvalidArgument):
        return invalid_argument(exc)
    if isinstance(exc, NotFound):
        return not_found(exc)
    if isinstance(exc, PermissionDenied):
        return permission_denied(exc)
    if isinstance(exc, Unauthenticated):
        return unauthenticated(exc)
    if isinstance(exc, IllegalTransition):
        return failed_precondition(exc)
    if isinstance(exc, CommandNotTaken):
        # Recorded, not applied yet: it will be once a process drives the execution.
        return _status(grpc.StatusCode.DEADLINE_EXCEEDED, str(exc))
    if isinstance(exc, ConcurrentModification):
        return aborted(exc)
    if isinstance(exc, StreamEnded):
        return stream_ended(exc)
    if isinstance(exc, StorageError):
        return unavailable(exc)
    return internal(exc)


def unimplemented(message: str) -> grpc.Status:
    return _status(grpc.StatusCode.UNIMPLEMENTED, message)

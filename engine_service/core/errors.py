"""The engine's exception tree: one root, keyword-only context, mapped to gRPC in transport."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a request, at a path such as `steps[3].depends_on[0]`."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class EngineError(Exception):
    """Root of every error the engine raises on purpose."""


class InvalidArgument(EngineError):
    """The request is wrong; `problems` name each offending field."""

    def __init__(self, *, problems: Sequence[Problem]) -> None:
        self.problems = tuple(problems)
        super().__init__("; ".join(str(p) for p in self.problems) or "invalid argument")


class DefinitionInvalid(InvalidArgument):
    """A workflow definition failed validation; every problem is listed."""


class NotFound(EngineError):
    def __init__(self, *, kind: str, key: str) -> None:
        self.kind = kind
        self.key = key
        super().__init__(f"{kind} {key!r} not found")


class IllegalTransition(EngineError):
    """A state change the transition table does not allow (e.g. resume a completed run)."""

    def __init__(self, *, subject: str, current: str, requested: str) -> None:
        self.subject = subject
        self.current = current
        self.requested = requested
        super().__init__(f"{subject} cannot go from {current} to {requested}")


class ConcurrentModification(EngineError):
    """Someone else appended to the execution's event log first."""

    def __init__(self, *, execution_id: str, expected_sequence: int) -> None:
        self.execution_id = execution_id
        self.expected_sequence = expected_sequence
        super().__init__(
            f"execution {execution_id!r} moved past sequence {expected_sequence} concurrently"
        )


class StorageError(EngineError):
    """The store failed for a reason other than the caller's input."""


class InvalidReference(EngineError):
    """A `${...}` reference is malformed; `text` is the string it appears in."""

    def __init__(self, *, text: str, reason: str) -> None:
        self.text = text
        self.reason = reason
        super().__init__(f"invalid reference in {text!r}: {reason}")


class ExpressionError(EngineError):
    """A CEL expression failed at run time or produced a value of the wrong kind."""

    def __init__(self, *, expression: str, reason: str) -> None:
        self.expression = expression
        self.reason = reason
        super().__init__(f"expression {expression!r}: {reason}")


class ConditionError(ExpressionError):
    """A `when` or connection condition could not be evaluated to a bool."""


class LeaseLost(EngineError):
    """Another engine process holds the execution now: this one must stop driving it."""

    def __init__(self, *, execution_id: str, owner: str) -> None:
        self.execution_id = execution_id
        self.owner = owner
        super().__init__(f"execution {execution_id!r} is leased to {owner!r}")


class PermissionDenied(EngineError):
    """The caller named a tenant its credentials do not cover."""

    def __init__(self, *, tenant: str) -> None:
        self.tenant = tenant
        super().__init__(f"the caller's token does not cover tenant {tenant!r}")

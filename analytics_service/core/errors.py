"""The analytics service's exceptions: one root, subclasses with keyword-only context."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FieldViolation:
    """One invalid request field, named by its path (e.g. ``range.end``)."""

    field: str
    description: str


class AnalyticsError(Exception):
    """Root of every error the analytics service raises on purpose."""


class InvalidArgumentError(AnalyticsError):
    """The request is malformed; the caller must change it before retrying."""

    def __init__(self, *, violations: tuple[FieldViolation, ...]) -> None:
        self.violations = violations
        super().__init__("; ".join(f"{v.field}: {v.description}" for v in violations))

    @classmethod
    def single(cls, field: str, description: str) -> InvalidArgumentError:
        return cls(violations=(FieldViolation(field, description),))


class NotFoundError(AnalyticsError):
    """The named resource does not exist (or belongs to a tenant the caller cannot see)."""

    def __init__(self, *, kind: str, key: str) -> None:
        self.kind = kind
        self.key = key
        super().__init__(f"{kind} {key!r} not found")


class UnauthenticatedError(AnalyticsError):
    """No credentials, or credentials that match no known token."""

    def __init__(self, *, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class PermissionDeniedError(AnalyticsError):
    """The caller's token is valid but not scoped to the requested tenant."""

    def __init__(self, *, tenant: str) -> None:
        self.tenant = tenant
        super().__init__(f"not allowed to access tenant {tenant!r}")


class StorageError(AnalyticsError):
    """The database failed in a way the caller may retry (connection lost, deadlock)."""

    def __init__(self, *, operation: str) -> None:
        self.operation = operation
        super().__init__(f"storage failed during {operation}")

"""The database being unreachable, as the engine's `StorageError`.

A call that fails because Postgres is down, restarting or unreachable is a condition the
caller should retry (the API answers UNAVAILABLE), not an error of the engine (INTERNAL).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

import asyncpg
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from engine_service.core.errors import StorageError

C = TypeVar("C", bound=type)

_UNREACHABLE = (
    OSError,  # refused, reset, no route
    OperationalError,
    InterfaceError,  # the connection closed under the call
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,  # starting up or shutting down
    asyncpg.InterfaceError,
    # The server ended the connection in the middle of an operation (asyncpg raises
    # this rather than an InterfaceError: "cannot switch to state ...").
    asyncpg.InternalClientError,
)


def unreachable(exc: BaseException) -> bool:
    """Whether `exc` (or what caused it) says the database could not be reached."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return False
        if isinstance(seen, _UNREACHABLE):
            return True
        if isinstance(seen, DBAPIError) and seen.connection_invalidated:
            return True
        seen = seen.__cause__ or getattr(seen, "orig", None)
    return False


def reports_unreachable_database(cls: C) -> C:
    """Class decorator: every public coroutine method of `cls` raises StorageError when
    the database cannot be reached."""
    for name, method in inspect.getmembers(cls, inspect.iscoroutinefunction):
        if not name.startswith("_"):
            setattr(cls, name, _translated(method))
    return cls


def _translated(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    async def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return await method(*args, **kwargs)
        except StorageError:
            raise
        except Exception as exc:
            if unreachable(exc):
                raise StorageError(f"the database is unreachable: {type(exc).__name__}") from exc
            raise

    return call

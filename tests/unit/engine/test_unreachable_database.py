"""Which driver errors mean "the database cannot be reached" (UNAVAILABLE, retried)."""

from __future__ import annotations

import asyncpg
import pytest
from sqlalchemy.exc import IntegrityError

from engine_service.storage.unavailable import unreachable


@pytest.mark.parametrize(
    "error",
    [
        ConnectionRefusedError(),
        asyncpg.CannotConnectNowError("the database system is shutting down"),
        asyncpg.InterfaceError("connection is closed"),
        # Raised when the server ends the connection during an operation.
        asyncpg.InternalClientError(
            "cannot switch to state 12; another operation (2) is in progress"
        ),
    ],
)
def test_errors_of_a_database_going_away_are_unreachable(error: Exception) -> None:
    assert unreachable(error)


def test_a_cause_that_says_unreachable_counts() -> None:
    wrapped = RuntimeError("append failed")
    wrapped.__cause__ = asyncpg.InternalClientError("cannot switch to state 11")
    assert unreachable(wrapped)


def test_a_refused_write_is_not_unreachable() -> None:
    assert not unreachable(IntegrityError("INSERT", {}, Exception("duplicate key")))
    assert not unreachable(ValueError("bad value"))

"""Bearer tokens and tenant scopes."""

from __future__ import annotations

import pytest

from analytics_service.core.auth import TokenTable
from analytics_service.core.errors import PermissionDeniedError, UnauthenticatedError

TOKENS = TokenTable({"acme-token": frozenset({"acme"}), "admin-token": frozenset({"*"})})


def test_a_token_allows_only_its_tenants() -> None:
    scope = TOKENS.scope_of("acme-token")
    assert scope.require("acme") == "acme"
    with pytest.raises(PermissionDeniedError):
        scope.require("globex")


def test_the_wildcard_allows_every_tenant() -> None:
    assert TOKENS.scope_of("admin-token").allows("anyone")


@pytest.mark.parametrize("token", [None, "", "acme-tokenx", "acme"])
def test_missing_or_unknown_tokens_are_rejected(token: str | None) -> None:
    with pytest.raises(UnauthenticatedError):
        TOKENS.scope_of(token)


def test_an_empty_table_turns_authentication_off() -> None:
    assert TokenTable({}).scope_of(None).allows("anyone")

"""Bearer tokens scoped to tenants, compared in constant time."""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass

from analytics_service.core.errors import PermissionDeniedError, UnauthenticatedError

ALL_TENANTS = "*"


@dataclass(frozen=True)
class TenantScope:
    """The tenants a caller may read and write; None means every tenant."""

    tenants: frozenset[str] | None

    @classmethod
    def everything(cls) -> TenantScope:
        return cls(None)

    def allows(self, tenant: str) -> bool:
        return self.tenants is None or tenant in self.tenants

    def require(self, tenant: str) -> str:
        if not self.allows(tenant):
            raise PermissionDeniedError(tenant=tenant)
        return tenant


class TokenTable:
    """Known tokens and their scopes. An empty table means authentication is off."""

    def __init__(self, scopes: Mapping[str, frozenset[str]]) -> None:
        self._tokens = [(token.encode(), _scope(tenants)) for token, tenants in scopes.items()]

    @property
    def enabled(self) -> bool:
        return bool(self._tokens)

    def scope_of(self, token: str | None) -> TenantScope:
        if not self.enabled:
            return TenantScope.everything()
        if not token:
            raise UnauthenticatedError(reason="missing bearer token")
        presented = token.encode()
        match = None
        # Compare against every token so that timing says nothing about which one matched.
        for known, scope in self._tokens:
            if hmac.compare_digest(known, presented):
                match = scope
        if match is None:
            raise UnauthenticatedError(reason="unknown bearer token")
        return match


def _scope(tenants: frozenset[str]) -> TenantScope:
    return TenantScope.everything() if ALL_TENANTS in tenants else TenantScope(tenants)

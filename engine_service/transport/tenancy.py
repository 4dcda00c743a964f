"""Which tenants a call may touch: the auth interceptor's grant, applied to each request.

Without configured tokens every caller may use every tenant. With them, a request naming a
tenant its token does not cover is PERMISSION_DENIED, and whatever is looked up by id in
such a tenant is NOT_FOUND exactly as if it did not exist.

An empty `tenant` field means the token's only tenant when it covers exactly one, and
"default" otherwise (no auth, a `*` token, or a token of several tenants): single-tenant
clients need not name their tenant, and nothing changes for clients of an open server.
"""

from __future__ import annotations

from typing import Any

from grpc import aio

from engine_service.core.errors import NotFound, PermissionDenied
from engine_service.core.model import DEFAULT_TENANT
from engine_service.transport.auth import granted_tenants


class Tenancy:
    def __init__(self, *, authenticated: bool = False) -> None:
        self._authenticated = authenticated

    def caller_tenants(self, context: aio.ServicerContext[Any, Any]) -> frozenset[str] | None:
        """The tenants the caller may use; None means any (no auth, or a `*` token)."""
        return granted_tenants() if self._authenticated else None

    def named(self, requested: str, context: aio.ServicerContext[Any, Any]) -> str:
        """The tenant a request names, if the caller may use it (else PERMISSION_DENIED).

        Naming a tenant reveals nothing about what it holds, so refusing it openly is safe.
        """
        allowed = self.caller_tenants(context)
        tenant = requested or _implied_tenant(allowed)
        if allowed is not None and tenant not in allowed:
            raise PermissionDenied(tenant=tenant)
        return tenant

    def require_visible(
        self, context: aio.ServicerContext[Any, Any], tenant: str, *, kind: str, key: str
    ) -> None:
        """For things looked up by id: NOT_FOUND, as for a missing `key`, unless the
        caller may use `tenant`, so ids of other tenants' things reveal nothing."""
        allowed = self.caller_tenants(context)
        if allowed is not None and tenant not in allowed:
            raise NotFound(kind=kind, key=key)


def _implied_tenant(allowed: frozenset[str] | None) -> str:
    if allowed is not None and len(allowed) == 1:
        (only,) = allowed
        return only
    return DEFAULT_TENANT

"""Which tenants a call may touch: the one place an auth layer will hook into.

There is no authentication yet, so every caller may use every tenant. When tokens arrive,
`caller_tenants` reads them from the call's metadata and the rest follows.
"""

from __future__ import annotations

from typing import Any

from grpc import aio

from engine_service.core.errors import NotFound
from engine_service.core.model import DEFAULT_TENANT


class Tenancy:
    def caller_tenants(self, context: aio.ServicerContext[Any, Any]) -> frozenset[str] | None:
        """The tenants the caller may use; None means any (no auth configured)."""
        return None

    def named(self, requested: str, context: aio.ServicerContext[Any, Any]) -> str:
        """The tenant a request names ('' is the default tenant), if the caller may use it."""
        tenant = requested or DEFAULT_TENANT
        allowed = self.caller_tenants(context)
        if allowed is not None and tenant not in allowed:
            # Indistinguishable from an empty tenant: callers learn nothing about others.
            raise NotFound(kind="tenant", key=tenant)
        return tenant

    def for_lookup(self, context: aio.ServicerContext[Any, Any]) -> str | None:
        """The tenant to check calls by id against; None when the caller may see any.

        The engine checks one tenant per call; a caller allowed several tenants would need
        the engine to accept a set (not needed until tokens span tenants).
        """
        allowed = self.caller_tenants(context)
        if allowed is None or len(allowed) != 1:
            return None
        return next(iter(allowed))

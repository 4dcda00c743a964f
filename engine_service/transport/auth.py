"""Bearer-token authentication: which tenants the caller of each RPC may use.

Tokens come from settings as JSON, `{"<token>": ["tenant-a", "tenant-b"], "<token>": ["*"]}`
(`*` is every tenant). The interceptor reads `authorization: Bearer <token>`, compares it
in constant time with every configured token, and grants the matching token's tenants for
the rest of the call through a context variable: grpc.aio runs each call's handler in that
call's own task, so the grant never leaks into another call. Health and reflection need no
token, so probes and `grpcurl list` work without one.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc

from engine_service.transport.errors import Unauthenticated
from engine_service.transport.interceptors import GuardingInterceptor

if TYPE_CHECKING:
    from engine_service.transport.interceptors import Context, Continuation, Handler

ALL_TENANTS = "*"
EXEMPT_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)
_SCHEME = "bearer"


@dataclass(frozen=True, slots=True)
class Grant:
    """What an authenticated caller may use: some tenants, or every tenant (None)."""

    tenants: frozenset[str] | None


_granted: ContextVar[Grant | None] = ContextVar("stepstream_engine_grant", default=None)


def granted_tenants() -> frozenset[str] | None:
    """The tenants the current call's token covers (None: all of them).

    Fails closed: a call that reached a handler without a grant is unauthenticated.
    """
    grant = _granted.get()
    if grant is None:
        raise Unauthenticated("no credentials were checked for this call")
    return grant.tenants


class TokenTable:
    """Configured tokens, kept as SHA-256 digests so every comparison takes the same time."""

    def __init__(self, scopes: Mapping[str, frozenset[str] | None]) -> None:
        self._entries = [(_digest(token), tenants) for token, tenants in scopes.items()]

    @classmethod
    def parse(cls, text: str) -> TokenTable:
        """Tokens from JSON; errors name a token by position, never by its value."""
        if not text.strip():
            return cls({})
        try:
            data = json.loads(text)
        except ValueError:
            raise ValueError("auth tokens: not valid JSON") from None
        if not isinstance(data, dict):
            raise ValueError('auth tokens: expected an object {"<token>": ["<tenant>", ...]}')
        return cls({_token(i, t): _tenants(i, v) for i, (t, v) in enumerate(data.items(), 1)})

    def __len__(self) -> int:
        return len(self._entries)

    def grant_for(self, presented: str) -> Grant | None:
        """The grant of the token presented; None if no configured token matches.

        Every configured token is compared, with no early exit, so the time taken says
        nothing about which token (if any) came close.
        """
        digest = _digest(presented)
        found: Grant | None = None
        for known, tenants in self._entries:
            if hmac.compare_digest(digest, known):
                found = Grant(tenants)
        return found


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def _token(position: int, token: str) -> str:
    if not token or not token.isascii() or not token.isprintable() or " " in token:
        raise ValueError(f"auth token #{position}: must be non-empty printable ASCII, no spaces")
    return token


def _tenants(position: int, value: Any) -> frozenset[str] | None:
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(t, str) and t.strip() for t in value)
    ):
        raise ValueError(f"auth token #{position}: tenants must be a non-empty list of names")
    if ALL_TENANTS in value:
        if len(value) > 1:
            raise ValueError(f'auth token #{position}: "*" (every tenant) stands alone')
        return None
    return frozenset(value)


def bearer_token(metadata: Sequence[tuple[str, str | bytes]] | None) -> str:
    """The token of the call's single `authorization: Bearer <token>` header."""
    values = [value for key, value in metadata or () if key == "authorization"]
    if not values:
        raise Unauthenticated("missing `authorization: Bearer <token>` metadata")
    if len(values) > 1 or not isinstance(values[0], str):
        raise Unauthenticated("malformed authorization metadata: expected one Bearer token")
    scheme, _, token = values[0].strip().partition(" ")
    if scheme.lower() != _SCHEME or not token.strip():
        raise Unauthenticated("malformed authorization metadata: expected `Bearer <token>`")
    return token.strip()


class AuthInterceptor(GuardingInterceptor):
    """Rejects calls without a known token; grants the token's tenants to the handler."""

    def __init__(self, tokens: TokenTable) -> None:
        self._tokens = tokens

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler:
        if handler_call_details.method.startswith(EXEMPT_PREFIXES):
            return await continuation(handler_call_details)
        return await super().intercept_service(continuation, handler_call_details)

    @contextlib.asynccontextmanager
    async def guard(self, method: str, context: Context) -> AsyncIterator[None]:
        # (key, value) pairs at run time; grpc-stubs call it aio.Metadata, a mapping.
        metadata: Any = context.invocation_metadata()
        grant = self._tokens.grant_for(bearer_token(metadata))
        if grant is None:
            raise Unauthenticated("the bearer token is not valid")
        reset = _granted.set(grant)
        try:
            yield
        finally:
            _granted.reset(reset)

"""How tokens and TLS files are configured, and what the server says about them at start."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc import aio
from stepstream.v1 import engine_pb2, engine_pb2_grpc

from engine_service.settings import EngineSettings
from engine_service.transport.auth import Grant, TokenTable, bearer_token
from engine_service.transport.errors import Unauthenticated
from engine_service.transport.tenancy import Tenancy
from tests.integration.engine.helpers import rpc_error
from tests.integration.engine.servers import serving

SECRET = "s3cr3t-Token_value"


def test_tokens_map_to_their_tenants_or_to_every_tenant() -> None:
    table = TokenTable.parse(json.dumps({SECRET: ["a", "b"], "admin": ["*"]}))
    assert len(table) == 2
    assert table.grant_for(SECRET) == Grant(frozenset({"a", "b"}))
    assert table.grant_for("admin") == Grant(None)
    for near_miss in ("", SECRET[:-1], SECRET + "x", SECRET.upper(), "admin "):
        assert table.grant_for(near_miss) is None
    assert len(TokenTable.parse("  ")) == 0, "blank means auth is off"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("{not json", "not valid JSON"),
        (json.dumps([SECRET]), "expected an object"),
        (json.dumps({SECRET: []}), "#1: tenants must be a non-empty list"),
        (json.dumps({"ok": ["a"], SECRET: "a"}), "#2: tenants must be a non-empty list"),
        (json.dumps({SECRET: ["a", ""]}), "#1: tenants must be a non-empty list"),
        (json.dumps({SECRET: ["*", "a"]}), '"*" (every tenant) stands alone'),
        (json.dumps({f"{SECRET} x": ["a"]}), "#1: must be non-empty printable ASCII"),
        (json.dumps({"": ["a"]}), "#1: must be non-empty printable ASCII"),
    ],
)
def test_bad_token_settings_name_the_token_by_position_never_by_value(
    text: str, problem: str
) -> None:
    with pytest.raises(ValueError, match=r"^auth token") as caught:
        TokenTable.parse(text)
    assert problem in str(caught.value)
    assert SECRET not in str(caught.value)


@pytest.mark.parametrize(
    ("metadata", "token"),
    [
        ((("authorization", f"Bearer {SECRET}"),), SECRET),
        ((("x-other", "1"), ("authorization", f"bearer  {SECRET} ")), SECRET),
    ],
)
def test_the_bearer_token_is_read_from_the_authorization_metadata(
    metadata: tuple[tuple[str, str], ...], token: str
) -> None:
    assert bearer_token(metadata) == token


@pytest.mark.parametrize(
    "metadata",
    [
        None,
        (),
        (("authorization", "Bearer"),),
        (("authorization", f"Token {SECRET}"),),
        (("authorization", b"Bearer x"),),
        (("authorization", "Bearer a"), ("authorization", "Bearer b")),
    ],
)
def test_missing_or_malformed_authorization_is_unauthenticated(
    metadata: tuple[tuple[str, str | bytes], ...] | None,
) -> None:
    with pytest.raises(Unauthenticated):
        bearer_token(metadata)


def test_security_settings_come_from_the_environment_and_stay_secret(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("STEPSTREAM_ENGINE_AUTH_TOKENS", json.dumps({SECRET: ["a"]}))
    settings = EngineSettings()
    assert SECRET not in repr(settings)
    assert TokenTable.parse(settings.auth_tokens_json()).grant_for(SECRET) == Grant(
        frozenset({"a"})
    )
    secret_file = tmp_path / "tokens.json"
    secret_file.write_text(json.dumps({SECRET: ["*"]}), encoding="utf-8")
    monkeypatch.setenv("STEPSTREAM_ENGINE_AUTH_TOKENS_FILE", str(secret_file))
    with pytest.raises(ValueError, match="auth_tokens or auth_tokens_file, not both"):
        EngineSettings()
    monkeypatch.delenv("STEPSTREAM_ENGINE_AUTH_TOKENS")
    from_file = TokenTable.parse(EngineSettings().auth_tokens_json())
    assert from_file.grant_for(SECRET) == Grant(None)


@pytest.mark.parametrize(
    ("files", "problem"),
    [
        ({"tls_cert_file": "c.pem"}, "tls_cert_file and tls_key_file go together"),
        ({"tls_key_file": "k.pem"}, "tls_cert_file and tls_key_file go together"),
        ({"tls_client_ca_file": "ca.pem"}, "needs tls_cert_file and tls_key_file"),
    ],
)
def test_incomplete_tls_settings_are_refused(files: dict[str, str], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        EngineSettings(**files)  # type: ignore[arg-type]


async def test_the_start_up_log_says_whether_auth_is_on_and_never_shows_a_token(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="engine_service"):
        async with serving(sqlite_url):
            pass
        assert "auth is off" in caplog.text
        caplog.clear()
        async with serving(sqlite_url, auth_tokens=json.dumps({SECRET: ["a"]})) as server:
            channel = aio.insecure_channel(f"127.0.0.1:{server.port}")
            stub = engine_pb2_grpc.EngineServiceStub(channel)
            metadata = (("authorization", f"Bearer {SECRET}x"),)
            error = await rpc_error(
                stub.ListWorkflows(engine_pb2.ListWorkflowsRequest(), metadata=metadata)
            )
            await channel.close(grace=None)
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    assert "bearer-token auth on: 1 tokens configured" in caplog.text
    assert SECRET not in caplog.text


def test_a_call_that_reached_a_handler_without_a_grant_fails_closed() -> None:
    context: Any = None  # unused: the grant lives in the call's context variable
    assert Tenancy().caller_tenants(context) is None, "auth off: every tenant"
    with pytest.raises(Unauthenticated):
        Tenancy(authenticated=True).caller_tenants(context)

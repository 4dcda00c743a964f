"""Configuration from STEPSTREAM_ANALYTICS_* environment variables, read once in main()."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from analytics_service.transport.boundary import RequestLimits

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///.stepstream/analytics.db"

_DRIVERS = {
    "postgresql://": "postgresql+asyncpg://",
    "postgres://": "postgresql+asyncpg://",
    "sqlite://": "sqlite+aiosqlite://",
}


def async_database_url(url: str) -> str:
    """The SQLAlchemy async URL for a plain postgresql:// or sqlite:// one."""
    for plain, driver in _DRIVERS.items():
        if url.startswith(plain):
            return driver + url.removeprefix(plain)
    return url


class AnalyticsSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STEPSTREAM_ANALYTICS_", extra="ignore")

    address: str = Field(
        default="127.0.0.1:50052",
        description="host:port the gRPC server listens on; port 0 picks a free port.",
    )
    metrics_host: str = Field(
        default="127.0.0.1", description="Interface of the Prometheus /metrics endpoint."
    )
    metrics_port: int = Field(
        default=9102, ge=0, description="Port of the Prometheus endpoint; 0 picks a free port."
    )
    database_url: SecretStr = Field(
        default=SecretStr(DEFAULT_DATABASE_URL),
        description="SQLAlchemy URL: postgresql[+asyncpg]://... or sqlite[+aiosqlite]:///path.",
    )
    database_pool_size: int = Field(default=10, ge=1, description="Postgres connection pool size.")
    fact_retention_days: float = Field(
        default=90.0,
        ge=0,
        description="Facts and event ids older than this are deleted; 0 keeps them forever. "
        "Rollups are always kept. Events older than this are ignored on arrival.",
    )
    retention_interval_seconds: float = Field(
        default=3600.0, gt=0, description="How often expired facts are deleted."
    )
    alert_interval_seconds: float = Field(
        default=30.0, gt=0, description="How often every enabled alert rule is evaluated."
    )
    webhook_attempts: int = Field(default=3, ge=1, description="Tries per alert webhook POST.")
    webhook_backoff_seconds: float = Field(
        default=0.5, ge=0, description="Wait before the second try; doubles after each try."
    )
    webhook_timeout_seconds: float = Field(default=5.0, gt=0, description="Per-try timeout.")
    tls_cert_file: Path | None = Field(
        default=None, description="PEM server certificate; with tls_key_file enables TLS."
    )
    tls_key_file: Path | None = Field(default=None, description="PEM private key of the server.")
    tls_client_ca_file: Path | None = Field(
        default=None, description="PEM CA bundle; when set, clients must present a certificate."
    )
    auth_tokens: SecretStr | None = Field(
        default=None,
        description='JSON object of bearer token -> tenants, e.g. {"s3cret": ["acme"]}; '
        '"*" means every tenant. Unset or {} disables authentication.',
    )
    critical_path_executions: int = Field(
        default=1000, ge=1, description="Latest executions read to find the critical path."
    )
    max_identifier_length: int = Field(
        default=128,
        ge=1,
        le=128,
        description="Longest tenant, event, execution or rule id a request may carry, in "
        "characters (at most 128, the width of the columns they are stored in).",
    )
    max_name_length: int = Field(
        default=256,
        ge=1,
        le=256,
        description="Longest workflow id, step id, action, error type, status or rule name "
        "a request may carry, in characters (at most 256, the column width).",
    )
    max_text_length: int = Field(
        default=64 * 1024,
        ge=1,
        description="Longest free text a request may carry (error messages, webhook URLs), "
        "in characters.",
    )
    max_duration_seconds: int = Field(
        default=100 * 31_557_600,
        ge=1,
        le=315_576_000_000,
        description="Longest duration an event may carry (a step's or execution's run "
        "time, time saved); longer ones are INVALID_ARGUMENT.",
    )
    max_alert_window_seconds: int = Field(
        default=31 * 86_400,
        ge=60,
        le=10 * 366 * 86_400,
        description="Longest window an alert rule may have (the shortest is one minute).",
    )
    shutdown_grace_seconds: float = Field(
        default=10.0, ge=0, description="How long in-flight RPCs may finish on SIGTERM."
    )
    log_level: str = Field(default="INFO", description="Python logging level name.")

    @field_validator("database_url")
    @classmethod
    def _async_driver(cls, value: SecretStr) -> SecretStr:
        return SecretStr(async_database_url(value.get_secret_value()))

    def request_limits(self) -> RequestLimits:
        """The bounds the request boundary (transport.boundary) checks requests against."""
        return RequestLimits(
            identifier_length=self.max_identifier_length,
            name_length=self.max_name_length,
            text_length=self.max_text_length,
            duration_seconds=self.max_duration_seconds,
            alert_window_seconds=self.max_alert_window_seconds,
        )

    @property
    def fact_retention(self) -> timedelta | None:
        return timedelta(days=self.fact_retention_days) if self.fact_retention_days else None

    def token_scopes(self) -> dict[str, frozenset[str]]:
        """The parsed `auth_tokens`; a malformed value fails at start, not at the first call."""
        if self.auth_tokens is None:
            return {}
        raw = json.loads(self.auth_tokens.get_secret_value() or "{}")
        if not isinstance(raw, dict) or not all(
            isinstance(tenants, list) and all(isinstance(t, str) for t in tenants)
            for tenants in raw.values()
        ):
            raise ValueError("auth_tokens must be a JSON object of token -> list of tenants")
        return {str(token): frozenset(tenants) for token, tenants in raw.items()}

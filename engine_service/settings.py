"""The engine's configuration, read once from the environment (`STEPSTREAM_ENGINE_*`).

Every field is listed in README.md under "Configuration"; a test keeps the two in step.
"""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from engine_service.core.attempt import MAX_OUTPUT_BYTES
from engine_service.core.definitions import DefinitionLimits
from engine_service.core.engine import EngineConfig
from engine_service.core.scheduler import SchedulerConfig
from engine_service.transport.boundary import (
    ID_COLUMN_LENGTH,
    IDEMPOTENCY_KEY_COLUMN_LENGTH,
    RequestLimits,
)

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./.stepstream/engine.db"


def _default_instance_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class EngineSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="STEPSTREAM_ENGINE_", extra="ignore", populate_by_name=True
    )

    address: str = Field(
        default="127.0.0.1:50051",
        description="host:port the gRPC server listens on; port 0 picks a free port.",
    )
    metrics_port: int = Field(
        default=9101, ge=0, le=65535, description="Port of the Prometheus endpoint; 0 disables it."
    )
    metrics_host: str = Field(
        default="127.0.0.1", description="Interface of the Prometheus endpoint (0.0.0.0 in a pod)."
    )
    database_url: SecretStr = Field(
        default=SecretStr(DEFAULT_DATABASE_URL),
        description="SQLAlchemy async URL: sqlite+aiosqlite:///path or "
        "postgresql+asyncpg://user:pass@host/db. A SQLite file's directory is created.",
    )
    migrate_on_start: bool = Field(default=True, description="Run database migrations on start.")
    max_concurrent_steps: int = Field(
        default=256,
        ge=1,
        description="Steps running at once across every execution of this process.",
    )
    max_steps_per_execution: int = Field(
        default=0,
        ge=0,
        description="Steps of one execution running at once when its definition sets no "
        "limit; 0 means no limit.",
    )
    max_workflow_depth: int = Field(default=5, ge=1, description="How deep sub-workflows may nest.")
    max_lost_attempts: int = Field(
        default=3,
        ge=0,
        description="Attempts of one step the engine may lose by stopping mid-attempt (they "
        "use none of the retry budget); one more fails the step with EngineRestarted.",
    )
    grace_period_seconds: float = Field(
        default=10.0,
        ge=0,
        description="On SIGTERM/SIGINT: how long in-flight RPCs get to finish before the "
        "server cancels them.",
    )
    max_message_bytes: int = Field(
        default=16 * 1024 * 1024, ge=1024, description="Largest gRPC message sent or received."
    )
    keepalive_time_seconds: float = Field(
        default=60.0,
        gt=0,
        description="Interval of the server's keepalive pings on idle connections.",
    )
    keepalive_timeout_seconds: float = Field(
        default=20.0,
        gt=0,
        description="How long a keepalive ping may go unanswered before the connection is closed.",
    )
    keepalive_min_ping_interval_seconds: float = Field(
        default=10.0,
        gt=0,
        description="Shortest interval between client pings the server accepts; "
        "faster pingers are disconnected.",
    )
    keepalive_permit_without_calls: bool = Field(
        default=True,
        description="Accept client keepalive pings on connections with no active call.",
    )
    watch_buffer_events: int = Field(
        default=10_000,
        ge=1,
        description="Events queued per watcher before it counts as fallen behind and its "
        "stream ends with RESOURCE_EXHAUSTED.",
    )
    watch_batch_events: int = Field(
        default=500, ge=1, description="Most events sent in one EventBatch of a watch stream."
    )
    tls_cert_file: Path | None = Field(
        default=None,
        description="PEM certificate chain the gRPC port presents; with tls_key_file it "
        "turns TLS on (the metrics port stays plain HTTP).",
    )
    tls_key_file: Path | None = Field(default=None, description="PEM private key of tls_cert_file.")
    tls_client_ca_file: Path | None = Field(
        default=None,
        description="PEM CA bundle: when set, clients must present a certificate it "
        "signed (mTLS). Needs tls_cert_file.",
    )
    auth_tokens: SecretStr = Field(
        default=SecretStr(""),
        description='Bearer tokens and the tenants each may use, as JSON: {"<token>": '
        '["tenant-a", "tenant-b"], "<admin token>": ["*"]}. With neither this nor '
        "auth_tokens_file, auth is off and every caller may use every tenant.",
    )
    auth_tokens_file: Path | None = Field(
        default=None,
        description="A file holding the auth_tokens JSON (e.g. a mounted Kubernetes "
        "Secret), read once at start; not together with auth_tokens.",
    )
    analytics_target: str = Field(
        default="",
        validation_alias="STEPSTREAM_ANALYTICS_TARGET",
        description="host:port of the analytics service the outbox relay ships events to "
        "(read from STEPSTREAM_ANALYTICS_TARGET); empty: events stay in the outbox.",
    )
    relay_batch_events: int = Field(
        default=500,
        ge=1,
        description="Most events the outbox relay sends to analytics in one request.",
    )
    relay_batch_bytes: int = Field(
        default=1024 * 1024,
        ge=1024,
        le=4 * 1024 * 1024 - 64 * 1024,
        description="Most bytes of one request of the outbox relay; keep it below "
        "analytics' receive limit (4 MiB). A larger event travels alone.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Logging threshold."
    )
    instance_id: str = Field(
        default_factory=_default_instance_id,
        description="This process's name in execution leases; unique per replica "
        "(default: host name, process id and a random suffix).",
    )
    lease_seconds: float = Field(
        default=30.0,
        gt=0,
        description="How long an execution lease lasts unrenewed: how long executions of "
        "a replica that died wait before another replica takes them over.",
    )
    lease_interval_seconds: float = Field(
        default=5.0,
        gt=0,
        description="How often leases are renewed and expired ones claimed.",
    )
    schedule_tick_seconds: float = Field(
        default=1.0,
        gt=0,
        description="How often the scheduler looks for due schedules; a run starts at most "
        "this late.",
    )
    schedule_claim_seconds: float = Field(
        default=60.0,
        gt=0,
        description="How long a replica holds a due run it claimed: if it dies before "
        "starting the run, another replica starts it after this long.",
    )
    schedule_misfire_grace_seconds: float = Field(
        default=60.0,
        ge=0,
        description="A run not started within this long of its time counts as missed and "
        "follows the schedule's missed-run policy (skip, or run once).",
    )

    max_id_length: int = Field(
        default=ID_COLUMN_LENGTH,
        ge=1,
        le=ID_COLUMN_LENGTH,
        description="Longest tenant, workflow, execution, schedule, step or action id a "
        "request may carry (at most the 128 of the database columns).",
    )
    max_idempotency_key_length: int = Field(
        default=IDEMPOTENCY_KEY_COLUMN_LENGTH,
        ge=1,
        le=IDEMPOTENCY_KEY_COLUMN_LENGTH,
        description="Longest idempotency key of StartExecution (at most 256, its column).",
    )
    max_text_length: int = Field(
        default=64 * 1024,
        ge=1,
        description="Longest free-text string field of a request (names, descriptions, "
        "labels, conditions, cancel reasons), in characters.",
    )
    max_inputs_bytes: int = Field(
        default=1024 * 1024,
        ge=1,
        description="Largest inputs of StartExecution, ResumeExecution and schedules, in "
        "bytes of their protobuf encoding; larger ones are INVALID_ARGUMENT.",
    )
    max_output_bytes: int = Field(
        default=MAX_OUTPUT_BYTES,
        ge=1024,
        description="Largest output of one step attempt, in bytes of JSON; a larger one "
        "fails the step with OutputTooLarge (outputs travel in events to analytics).",
    )
    max_definition_steps: int = Field(
        default=1000,
        ge=1,
        le=10_000,
        description="Most steps (or nodes) of one workflow definition; at most 10,000 "
        "(validation keeps a bit mask of each step's ancestors: n*n/8 bytes).",
    )
    max_depends_on: int = Field(
        default=100, ge=1, description="Most dependencies (or incoming connections) of one step."
    )
    max_definition_bytes: int = Field(
        default=1024 * 1024,
        ge=1024,
        description="Largest workflow definition, in bytes of its JSON form.",
    )
    max_duration_seconds: int = Field(
        default=100 * 31_557_600,
        ge=1,
        le=1000 * 31_557_600,
        description="Longest Duration a request may carry (timeouts, retry intervals), "
        "in seconds; default a hundred years.",
    )

    @model_validator(mode="after")
    def _security_is_complete(self) -> EngineSettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("tls_client_ca_file (mTLS) needs tls_cert_file and tls_key_file")
        if self.auth_tokens.get_secret_value().strip() and self.auth_tokens_file is not None:
            raise ValueError("set auth_tokens or auth_tokens_file, not both")
        return self

    def auth_tokens_json(self) -> str:
        """The configured tokens' JSON ('' when auth is off); secret: never log it."""
        if self.auth_tokens_file is not None:
            return self.auth_tokens_file.read_text(encoding="utf-8")
        return self.auth_tokens.get_secret_value()

    def engine_config(self) -> EngineConfig:
        return EngineConfig(
            max_steps_per_execution=self.max_steps_per_execution,
            max_concurrent_steps=self.max_concurrent_steps,
            max_workflow_depth=self.max_workflow_depth,
            max_output_bytes=self.max_output_bytes,
            max_lost_attempts=self.max_lost_attempts,
            definition_limits=DefinitionLimits(
                max_steps=self.max_definition_steps,
                max_depends_on=self.max_depends_on,
                max_definition_bytes=self.max_definition_bytes,
                max_id_length=self.max_id_length,
            ),
        )

    def scheduler_config(self) -> SchedulerConfig:
        return SchedulerConfig(
            tick_seconds=self.schedule_tick_seconds,
            claim_seconds=self.schedule_claim_seconds,
            misfire_grace_seconds=self.schedule_misfire_grace_seconds,
        )

    def request_limits(self) -> RequestLimits:
        return RequestLimits(
            id_length=self.max_id_length,
            idempotency_key_length=self.max_idempotency_key_length,
            text_length=self.max_text_length,
            inputs_bytes=self.max_inputs_bytes,
            duration_seconds=self.max_duration_seconds,
        )

    def grpc_options(self) -> list[tuple[str, int]]:
        return [
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.keepalive_time_ms", _ms(self.keepalive_time_seconds)),
            ("grpc.keepalive_timeout_ms", _ms(self.keepalive_timeout_seconds)),
            (
                "grpc.http2.min_ping_interval_without_data_ms",
                _ms(self.keepalive_min_ping_interval_seconds),
            ),
            ("grpc.keepalive_permit_without_calls", int(self.keepalive_permit_without_calls)),
            ("grpc.http2.max_pings_without_data", 0),
        ]


def _ms(seconds: float) -> int:
    return round(seconds * 1000)

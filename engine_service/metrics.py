"""Prometheus metrics of one engine process, in a registry of their own.

Execution and step figures come from the engine's commit listener, so they count exactly
what was committed; request figures come from the gRPC metrics interceptor.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from engine_service.core.engine import Engine
from engine_service.core.state import (
    EventKind,
    ExecutionEvent,
    ExecutionState,
    ExecutionStatus,
    StepStatus,
)

STEP_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600)
EXECUTION_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, 14400, 86400)
RPC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
# Statuses that end an attempt that ran (CANCELLED only counts when an attempt had started).
ATTEMPT_ENDS = frozenset(
    {StepStatus.COMPLETED, StepStatus.FAILED, StepStatus.TIMED_OUT, StepStatus.CANCELLED}
)


class EngineMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._define_execution_metrics()
        self._define_step_metrics()
        self._define_service_metrics()

    def _define_execution_metrics(self) -> None:
        r = self.registry
        self.executions_started = Counter(
            "stepstream_engine_executions_started_total", "Executions created.", registry=r
        )
        self.executions_finished = Counter(
            "stepstream_engine_executions_finished_total",
            "Executions that reached a terminal status, by status.",
            ["status"],
            registry=r,
        )
        self.execution_duration = Histogram(
            "stepstream_engine_execution_duration_seconds",
            "Time from an execution starting to running to its terminal status, by status.",
            ["status"],
            buckets=EXECUTION_BUCKETS,
            registry=r,
        )
        self.active_executions = Gauge(
            "stepstream_engine_active_executions",
            "Executions this process is driving now.",
            registry=r,
        )

    def _define_step_metrics(self) -> None:
        r = self.registry
        self.step_attempts = Counter(
            "stepstream_engine_step_attempts_total",
            "Step attempts that ended, by action and status.",
            ["action", "status"],
            registry=r,
        )
        self.step_duration = Histogram(
            "stepstream_engine_step_duration_seconds",
            "How long step attempts ran, by action and status.",
            ["action", "status"],
            buckets=STEP_BUCKETS,
            registry=r,
        )
        self.step_retries = Counter(
            "stepstream_engine_step_retries_total",
            "Step attempts that failed and will be tried again, by action.",
            ["action"],
            registry=r,
        )
        self.scheduler_queue_depth = Gauge(
            "stepstream_engine_scheduler_queue_depth",
            "Steps whose dependencies are settled, waiting for one of the engine's "
            "max_concurrent_steps slots (per-execution limits are not counted).",
            registry=r,
        )

    def _define_service_metrics(self) -> None:
        r = self.registry
        self.lease_claims = Counter(
            "stepstream_engine_lease_claims_total",
            "Executions claimed because their lease had expired (their replica died or stalled).",
            registry=r,
        )
        self.outbox_backlog = Gauge(
            "stepstream_engine_outbox_backlog_events",
            "Committed events not yet acknowledged by the analytics service.",
            registry=r,
        )
        self.grpc_requests = Counter(
            "stepstream_engine_grpc_requests_total",
            "gRPC requests handled, by full method name and status code.",
            ["method", "code"],
            registry=r,
        )
        self.grpc_latency = Histogram(
            "stepstream_engine_grpc_request_duration_seconds",
            "Time to handle a gRPC request (a stream: until it ended), by method.",
            ["method"],
            buckets=RPC_BUCKETS,
            registry=r,
        )

    # ---- feeding ---------------------------------------------------------------------

    def bind(self, engine: Engine) -> None:
        """Follow `engine`: its commits, its active executions and its step slots."""
        engine.add_listener(self.observe_commit)
        self.active_executions.set_function(lambda: engine.active_executions)
        self.scheduler_queue_depth.set_function(lambda: waiting_for_slot(engine.step_slots))

    def observe_commit(self, state: ExecutionState, events: Sequence[ExecutionEvent]) -> None:
        for event in events:
            if event.kind is EventKind.EXECUTION_STATUS_CHANGED:
                self._observe_execution(event)
            elif event.kind is EventKind.STEP_STATUS_CHANGED:
                self._observe_step(event)

    def _observe_execution(self, event: ExecutionEvent) -> None:
        status = event.execution_status
        if status is ExecutionStatus.PENDING:
            self.executions_started.inc()
        elif status is not None and status.is_terminal:
            self.executions_finished.labels(status.value).inc()
            if event.duration is not None:
                self.execution_duration.labels(status.value).observe(event.duration)

    def _observe_step(self, event: ExecutionEvent) -> None:
        status = event.step_status
        if status is StepStatus.RETRYING:
            self.step_retries.labels(event.action).inc()
        elif status in ATTEMPT_ENDS and event.attempt > 0:
            assert status is not None
            self.step_attempts.labels(event.action, status.value).inc()
            if event.duration is not None:
                self.step_duration.labels(event.action, status.value).observe(event.duration)

    def observe_request(self, method: str, code: str, seconds: float) -> None:
        self.grpc_requests.labels(method, code).inc()
        self.grpc_latency.labels(method).observe(seconds)


def waiting_for_slot(slots: asyncio.Semaphore) -> int:
    """Tasks blocked on the semaphore (read from CPython's implementation; 0 if absent)."""
    waiters = getattr(slots, "_waiters", None)
    return sum(1 for waiter in waiters or () if not waiter.done())


class MetricsEndpoint:
    """The HTTP endpoint Prometheus scrapes, on a thread of its own."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self, host: str, port: int) -> int:
        """Listen on host:port (0: any free port); returns the port."""
        self._server, self._thread = start_http_server(port, host, registry=self._registry)
        return int(self._server.server_port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

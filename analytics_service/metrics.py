"""Prometheus metrics of the analytics service, on a registry the caller owns."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from analytics_service.core.alerts import AlertEvent, AlertRule

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_LAG_BUCKETS = (0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 21600, 86400)


class AnalyticsMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.events_ingested = Counter(
            "stepstream_analytics_events_ingested",
            "Events stored for the first time.",
            registry=registry,
        )
        self.duplicates_ignored = Counter(
            "stepstream_analytics_duplicates_ignored",
            "Events ignored because their id was already known.",
            registry=registry,
        )
        self.events_expired = Counter(
            "stepstream_analytics_events_expired",
            "Events ignored because they are older than the fact retention.",
            registry=registry,
        )
        self.batch_seconds = Histogram(
            "stepstream_analytics_ingest_batch_seconds",
            "Time to store one event batch with its facts and rollups.",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.ingest_lag_seconds = Histogram(
            "stepstream_analytics_ingest_lag_seconds",
            "Largest (now - event time) of each ingested batch.",
            buckets=_LAG_BUCKETS,
            registry=registry,
        )
        self.rpc_seconds = Histogram(
            "stepstream_analytics_rpc_seconds",
            "Time to answer one RPC, by method (queries and ingest).",
            ["rpc"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.alert_transitions = Counter(
            "stepstream_analytics_alert_transitions",
            "Alert rule transitions, by new state.",
            ["state"],
            registry=registry,
        )
        self.alert_rule_failures = Counter(
            "stepstream_analytics_alert_rule_failures",
            "Evaluations of one alert rule that failed (logged with the rule's id); the "
            "other rules are evaluated all the same.",
            registry=registry,
        )
        self.webhook_deliveries = Counter(
            "stepstream_analytics_webhook_deliveries",
            "Alert webhook deliveries, by outcome (delivered, rejected, failed).",
            ["outcome"],
            registry=registry,
        )
        self.alert_watchers = Gauge(
            "stepstream_analytics_alert_watchers",
            "Open WatchAlerts streams.",
            registry=registry,
        )


class MetricsAlertSink:
    """Counts each alert transition, and each rule evaluation that failed."""

    def __init__(self, metrics: AnalyticsMetrics) -> None:
        self._metrics = metrics

    def rule_failed(self, rule: AlertRule) -> None:
        self._metrics.alert_rule_failures.inc()

    async def publish(self, event: AlertEvent, rule: AlertRule) -> None:
        self._metrics.alert_transitions.labels(state=event.state.value).inc()

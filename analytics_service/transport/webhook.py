"""Alert transitions POSTed as JSON to each rule's webhook, retried with backoff."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import httpx

from analytics_service.core.alerts import AlertEvent, AlertRule
from analytics_service.metrics import AnalyticsMetrics

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WebhookPolicy:
    attempts: int = 3
    backoff_seconds: float = 0.5
    timeout_seconds: float = 5.0


def payload(event: AlertEvent, rule: AlertRule) -> dict[str, Any]:
    return {
        "id": event.id,
        "rule_id": rule.id,
        "rule_name": rule.name,
        "tenant": event.tenant,
        "workflow_id": rule.workflow_id,
        "step_id": rule.step_id,
        "metric": rule.metric.value,
        "comparator": rule.comparator.value,
        "state": event.state.value,
        "value": event.value,
        "threshold": event.threshold,
        "occurred_at": event.occurred_at.isoformat(),
        "message": event.message,
    }


def _retryable(status_code: int) -> bool:
    return status_code >= 500 or status_code in (408, 429)


class WebhookNotifier:
    """An alert sink; deliveries run in the background so evaluation never waits on them."""

    def __init__(
        self, client: httpx.AsyncClient, policy: WebhookPolicy, metrics: AnalyticsMetrics
    ) -> None:
        self._client = client
        self._policy = policy
        self._metrics = metrics
        self._deliveries: set[asyncio.Task[bool]] = set()

    async def publish(self, event: AlertEvent, rule: AlertRule) -> None:
        if not rule.webhook_url:
            return
        task = asyncio.create_task(self.deliver(rule.webhook_url, payload(event, rule)))
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)

    async def deliver(self, url: str, body: dict[str, Any]) -> bool:
        for attempt in range(1, self._policy.attempts + 1):
            try:
                response = await self._client.post(
                    url, json=body, timeout=self._policy.timeout_seconds
                )
            except httpx.HTTPError as exc:
                logger.warning("webhook %s attempt %d failed: %s", url, attempt, exc)
            else:
                if response.is_success:
                    self._metrics.webhook_deliveries.labels(outcome="delivered").inc()
                    return True
                if not _retryable(response.status_code):
                    self._metrics.webhook_deliveries.labels(outcome="rejected").inc()
                    return False
            if attempt < self._policy.attempts:
                await asyncio.sleep(self._policy.backoff_seconds * 2 ** (attempt - 1))
        self._metrics.webhook_deliveries.labels(outcome="failed").inc()
        return False

    async def close(self, grace_seconds: float) -> None:
        """Let deliveries in flight finish for up to `grace_seconds`, then cancel them."""
        pending = set(self._deliveries)
        if pending:
            _, late = await asyncio.wait(pending, timeout=grace_seconds)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)

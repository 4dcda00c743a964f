"""Backoff between attempts: exponential, capped, optionally with full jitter."""

from __future__ import annotations

import random

from engine_service.core.model import JitterMode, RetryPolicy


def backoff_delay(policy: RetryPolicy, failed_attempt: int, rng: random.Random) -> float:
    """Seconds to wait after attempt number `failed_attempt` (1-based) failed.

    initial_interval * backoff_coefficient ** (failed_attempt - 1), capped at
    maximum_interval; with full jitter, drawn uniformly from [0, that].
    """
    delay = policy.initial_interval * policy.backoff_coefficient ** (failed_attempt - 1)
    if policy.maximum_interval is not None:
        delay = min(delay, policy.maximum_interval)
    if policy.jitter is JitterMode.FULL:
        return rng.uniform(0.0, delay)
    return delay


def is_retryable(policy: RetryPolicy, error_type: str, action_says_retryable: bool) -> bool:
    return action_says_retryable and error_type not in policy.non_retryable_errors

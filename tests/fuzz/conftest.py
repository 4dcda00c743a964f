"""The fuzz tier: generated requests against real servers, on SQLite and on Postgres.

STEPSTREAM_FUZZ_REQUESTS is the total over the tier's four runs (two services, two
databases; default 5,600, `make soak` 100,000). STEPSTREAM_FUZZ_SEED replays a run; by
default each run draws a fresh seed and prints it, with any finding.
"""

from __future__ import annotations

import os
import secrets

import pytest

DEFAULT_REQUESTS = 5_600
RUNS = 4  # engine and analytics, each on SQLite and Postgres


def requests_per_run() -> int:
    return max(1, int(os.environ.get("STEPSTREAM_FUZZ_REQUESTS", DEFAULT_REQUESTS)) // RUNS)


def burst_timeout() -> float:
    """A per-test timeout that grows with the burst (the soak runs far more)."""
    return 150 + requests_per_run() * 0.1


@pytest.fixture
def fuzz_seed() -> str:
    return os.environ.get("STEPSTREAM_FUZZ_SEED") or secrets.token_hex(4)

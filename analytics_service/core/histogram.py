"""A mergeable log-bucket histogram of durations with at most 1% relative error.

A duration d > 0 falls in bucket i = ceil(log(d) / log(gamma)), which holds the values in
(gamma**(i-1), gamma**i]. Reporting 2 * gamma**i / (gamma + 1) for any value in the bucket is
off by at most (gamma - 1) / (gamma + 1) = RELATIVE_ERROR. Merging two histograms adds their
counts bucket by bucket, so minute histograms merge into hours and days without loss.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

RELATIVE_ERROR = 0.01
GAMMA = (1 + RELATIVE_ERROR) / (1 - RELATIVE_ERROR)
LOG_GAMMA = math.log(GAMMA)
# Durations at or below this are indistinguishable from zero and share one bucket.
MIN_TRACKED_SECONDS = 1e-9
ZERO_BUCKET = -1_000_000


def bucket_index(seconds: float) -> int:
    if seconds <= MIN_TRACKED_SECONDS:
        return ZERO_BUCKET
    return math.ceil(math.log(seconds) / LOG_GAMMA)


def bucket_value(index: int) -> float:
    """The value that represents every duration in bucket `index`."""
    if index == ZERO_BUCKET:
        return 0.0
    return 2 * GAMMA**index / (GAMMA + 1)


@dataclass(frozen=True)
class Histogram:
    """Counts per bucket index; immutable, merged by `merge`."""

    counts: Mapping[int, int] = field(default_factory=dict)

    @classmethod
    def of(cls, durations: Iterable[float]) -> Histogram:
        counts: dict[int, int] = {}
        for seconds in durations:
            index = bucket_index(seconds)
            counts[index] = counts.get(index, 0) + 1
        return cls(counts)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def merge(self, other: Histogram) -> Histogram:
        merged = dict(self.counts)
        for index, count in other.counts.items():
            merged[index] = merged.get(index, 0) + count
        return Histogram(merged)

    def quantile(self, q: float) -> float | None:
        """The q-quantile, interpolated between ranks like Postgres' percentile_cont.

        Interpolating the two neighbouring ranks' bucket values keeps the relative error of
        the exact interpolated value within RELATIVE_ERROR. None for an empty histogram.
        """
        total = self.total
        if total == 0:
            return None
        rank = min(max(q, 0.0), 1.0) * (total - 1)
        lower_rank = math.floor(rank)
        fraction = rank - lower_rank
        lower = self._value_at_rank(lower_rank)
        if fraction == 0:
            return lower
        upper = self._value_at_rank(lower_rank + 1)
        return lower + fraction * (upper - lower)

    def _value_at_rank(self, rank: int) -> float:
        seen = 0
        for index in sorted(self.counts):
            seen += self.counts[index]
            if seen > rank:
                return bucket_value(index)
        return bucket_value(max(self.counts))

"""A cumulative-bucket histogram cheap enough for the committer's hot path.

The committer observes every acknowledged message; the metrics listener (daemon/metrics.py)
reads the buckets when it is scraped. Both run on the event loop, so there is no lock: an
observation is one bisect and two additions, and a scrape sees a consistent state because
nothing else runs while it reads.

Invariants (what Prometheus expects of a histogram):
1. `bounds` are strictly increasing and finite; the +Inf bucket is implicit (the last count).
2. `counts[i]` is the number of observations <= bounds[i] and > bounds[i-1] (not cumulative:
   `cumulative()` adds them up, once per scrape instead of once per observation).
3. `total` is the sum of all observations; `count` is `sum(counts)`.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from itertools import pairwise

# Seconds: from a fast local fdatasync (~0.5 ms) to a disk that stalls for seconds.
LATENCY_BOUNDS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
# Messages per batch: one alone (an idle daemon) up to pipeline.MAX_BATCH.
BATCH_BOUNDS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)


class Histogram:
    """Observations counted into fixed buckets (see the invariants above)."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        if not bounds or any(b >= c for b, c in pairwise(bounds)):
            raise ValueError("histogram bounds must be non-empty and strictly increasing")
        self.bounds = tuple(float(b) for b in bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bound's bucket (le = "<=").
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations <= it) for each bucket, +Inf last."""
        out: list[tuple[float, int]] = []
        running = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out

"""Counters an app keeps for the admin API, the metrics and the dashboard.

The request path only adds to plain integers and lists here (a dict lookup and
a bisect per request); everything else (Prometheus families, rates, charts) is
computed when someone asks, so serving requests costs the same whether or not
anyone watches.
"""

from __future__ import annotations

import collections
import itertools
from bisect import bisect_left

#: Seconds: Prometheus' default buckets, good for request latency and queue time.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Seconds: how long a process takes to become ready.
SPAWN_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: Per-second samples kept for the dashboard's chart (five minutes).
HISTORY = 300


class Histogram:
    """Observations counted into buckets (not cumulative; the exporter sums them)."""

    __slots__ = ("bounds", "count", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """(upper bound, observations at or below it) pairs, in Prometheus' form."""
        pairs = []
        running = 0
        for bound, count in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            running += count
            pairs.append((bound, running))
        return pairs


class GroupStats:
    """What happened to one app's requests and processes since the server started."""

    def __init__(self) -> None:
        #: Responses by status code.
        self.responses: dict[int, int] = {}
        self.latency = Histogram(LATENCY_BUCKETS)
        self.queue_time = Histogram(LATENCY_BUCKETS)
        self.spawn_time = Histogram(SPAWN_BUCKETS)
        #: How long spawns that failed took to fail.
        self.failed_spawn_time = Histogram(SPAWN_BUCKETS)
        self.spawn_failures = 0
        #: Responses the app broke: connection refused or closed early, invalid response, timed out.
        self.upstream_errors = 0
        self.queue_full = 0
        #: Samples of (time, requests so far, latency seconds so far), one a second, for rates over time.
        self.history: collections.deque[tuple[float, int, float]] = collections.deque(maxlen=HISTORY)

    def response(self, status: int, latency: float) -> None:
        responses = self.responses
        responses[status] = responses.get(status, 0) + 1
        self.latency.observe(latency)

    def sample(self, now: float) -> None:
        self.history.append((now, self.latency.count, self.latency.total))

    def rates(self) -> list[dict[str, float]]:
        """Requests per second and mean latency (ms) per sample interval, oldest first."""
        points = []
        history = self.history
        for (t0, n0, s0), (t1, n1, s1) in itertools.pairwise(history):
            span = t1 - t0
            if span <= 0:
                continue
            done = n1 - n0
            points.append({"t": round(t1, 3), "rps": round(done / span, 2),
                           "latency_ms": round((s1 - s0) / done * 1000, 3) if done else 0.0})
        return points

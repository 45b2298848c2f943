"""Prometheus metrics at ``/metrics``, read from the counters the pool keeps.

A custom collector turns ``GroupStats`` and the pool's state into metric
families at scrape time, so the request path never touches prometheus-client
(a labelled ``Counter.inc()`` per request would cost more than our whole
bookkeeping).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from passenger.pool.process import READY, SPAWNING

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from passenger.pool.stats import Histogram
    from passenger.service import PassengerService

PROCESS_STATES = ("spawning", "idle", "busy", "draining")


def _histogram(name: str, doc: str) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, doc, labels=["app"])


def _add(family: HistogramMetricFamily, app: str, histogram: Histogram) -> None:
    family.add_metric([app], histogram.cumulative(), histogram.total)


class PoolCollector(Collector):
    def __init__(self, service: PassengerService) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        pool, front = self.service.pool, self.service.front
        if pool is None or front is None:
            return
        requests = CounterMetricFamily("passenger_requests", "Responses by app and status code",
                                       labels=["app", "status"])
        latency = _histogram("passenger_request_duration_seconds",
                             "Seconds from a request's head to the end of its response from the app")
        queue_time = _histogram("passenger_request_queue_seconds", "Seconds a request waited for a process")
        queue = GaugeMetricFamily("passenger_request_queue_length", "Requests waiting for a process",
                                  labels=["app"])
        processes = GaugeMetricFamily("passenger_processes", "App processes by state", labels=["app", "state"])
        spawns = CounterMetricFamily("passenger_spawns", "Processes spawned", labels=["app"])
        failures = CounterMetricFamily("passenger_spawn_failures", "Spawns that failed", labels=["app"])
        spawn_time = HistogramMetricFamily("passenger_spawn_duration_seconds",
                                           "Seconds from spawn to ready (outcome=ready) or to failure (outcome=failed)",
                                           labels=["app", "outcome"])
        restarts = CounterMetricFamily("passenger_restarts", "App restarts", labels=["app"])
        upstream_errors = CounterMetricFamily(
            "passenger_upstream_errors", "Requests an app failed: refused, closed early, invalid response, "
            "timed out", labels=["app"])
        queue_full = CounterMetricFamily("passenger_queue_full", "Requests refused because the queue was full",
                                         labels=["app"])
        for name, group in pool.groups.items():
            stats = group.stats
            for status, count in sorted(stats.responses.items()):
                requests.add_metric([name, str(status)], count)
            _add(latency, name, stats.latency)
            _add(queue_time, name, stats.queue_time)
            spawn_time.add_metric([name, "ready"], stats.spawn_time.cumulative(), stats.spawn_time.total)
            spawn_time.add_metric([name, "failed"], stats.failed_spawn_time.cumulative(),
                                  stats.failed_spawn_time.total)
            queue.add_metric([name], group.waiting)
            counts = dict.fromkeys(PROCESS_STATES, 0)
            for process in (*group.processes, *group.leaving):
                if process.draining or process in group.leaving:
                    counts["draining"] += 1
                elif process.state == SPAWNING:
                    counts["spawning"] += 1
                elif process.state == READY:
                    counts["busy" if process.sessions else "idle"] += 1
            for state_name, count in counts.items():
                processes.add_metric([name, state_name], count)
            spawns.add_metric([name], group.spawned)
            failures.add_metric([name], stats.spawn_failures)
            restarts.add_metric([name], group.restarts)
            upstream_errors.add_metric([name], stats.upstream_errors)
            queue_full.add_metric([name], stats.queue_full)
        yield from (requests, latency, queue_time, queue, processes, spawns, failures, spawn_time, restarts,
                    upstream_errors, queue_full)
        yield GaugeMetricFamily("passenger_open_connections", "Client connections open",
                                value=len(front.connections))
        yield GaugeMetricFamily("passenger_pool_capacity_used", "Processes counted against max_pool_size",
                                value=pool.size)
        yield GaugeMetricFamily("passenger_pool_max", "max_pool_size", value=pool.max_pool_size)


def render(service: PassengerService) -> tuple[bytes, str]:
    """The metrics in Prometheus' text format, and its content type."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PoolCollector(service))
    return generate_latest(registry), CONTENT_TYPE_LATEST

"""The group of one app: its processes, its request queue, when to spawn.

Requests check out a process here (least busy, see routing.py) and give it
back when their response is done.  When no process can take a request it
waits in a FIFO queue, bounded by ``max_request_queue_size``; the group
spawns another process while it is below ``max_pool_size`` and every process
is busy.  Spawns are serial, one at a time per group, as in Passenger.
"""

from __future__ import annotations

import collections
import os
import random
import time
from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from passenger.config import AppConfig
from passenger.pool.process import DEAD, READY, AppProcess
from passenger.pool.routing import route
from passenger.spawn.failure import minimal_report, save_failure
from passenger.spawn.health import HealthMonitor, HealthResult, check_http
from passenger.spawn.report import SpawnReport, log_line

#: Delay before re-spawning after a failed spawn; doubles up to MAX_BACKOFF,
#: with +/-25% jitter so that many apps failing together do not retry in step.
FIRST_BACKOFF = 0.5
MAX_BACKOFF = 60.0


def app_fingerprint(root: str) -> tuple[int, ...]:
    """What changes when an app is deployed or fixed: the mtimes of its root, tmp/ and tmp/restart.txt.

    Deploys add, remove or rename files in the root (or touch restart.txt), which
    changes these; a stat each is all it costs, and only while backing off.
    """
    stamps = []
    for path in (root, os.path.join(root, "tmp"), os.path.join(root, "tmp", "restart.txt"),
                 os.path.join(root, "Passengerfile.json")):
        try:
            stamps.append(os.stat(path).st_mtime_ns)
        except OSError:
            stamps.append(0)
    return tuple(stamps)


class Waiter(Protocol):
    """A request that needs a process (the front end's connection)."""

    def deliver(self, process: AppProcess) -> None:
        """Serve on this process; its session is already counted."""

    def reject(self, status: int, title: str, detail: str) -> None:
        """No process will come: answer with this error."""

    def spawn_failed(self, report: SpawnReport) -> None:
        """No process will come because the app cannot start: show its report."""


class SpawnerLike(Protocol):
    def spawn(self, app: AppConfig, number: int, observer: Any, ports_in_use: Any = ()) -> AppProcess: ...


class Group:
    log = Logger()

    def __init__(self, app: AppConfig, spawner: SpawnerLike, clock: Any,
                 jitter: Callable[[], float] = random.random) -> None:
        self.app = app
        self._jitter = jitter
        self._spawner = spawner
        self._clock = clock
        #: Live processes in the pool (spawning or ready), oldest first.
        self.processes: list[AppProcess] = []
        #: Processes on their way out (killed after a failed start), until reaped.
        self.leaving: set[AppProcess] = set()
        #: Ready processes, oldest first: what routing chooses from.
        self.ready: list[AppProcess] = []
        self.queue: collections.deque[Waiter] = collections.deque()
        self.spawning: AppProcess | None = None
        self.running = False
        self.spawned = 0
        self.failures = 0
        #: Why the last spawn failed, while no spawn has succeeded since.
        self.last_failure: SpawnReport | None = None
        self._failed_fingerprint: tuple[int, ...] = ()
        self._backoff: IDelayedCall | None = None

    # Life of the group.
    def start(self) -> None:
        self.running = True
        self._maybe_spawn()

    def stop(self) -> Deferred[Any]:
        """Reject waiters, stop every process; fires when all are reaped."""
        self.running = False
        if self._backoff is not None and self._backoff.active():
            self._backoff.cancel()
        self._backoff = None
        while self.queue:
            self.queue.popleft().reject(503, "Service Unavailable", "The server is shutting down.")
        everyone = list(self.processes) + list(self.leaving)
        return DeferredList([p.stop() for p in everyone], consumeErrors=True)

    # Requests.
    def checkout(self, waiter: Waiter) -> AppProcess | None:
        """A process for this request now, or None (the waiter will hear later)."""
        process = route(self.ready)
        if process is not None:
            process.sessions += 1
            if self.spawning is None and len(self.processes) < self.app.max_pool_size:
                self._maybe_spawn()
            return process
        if not self.running:
            waiter.reject(503, "Service Unavailable", "The server is shutting down.")
            return None
        limit = self.app.max_request_queue_size
        if limit and len(self.queue) >= limit:
            self.log.warn("Request queue of {app} is full ({size}); answering 503", app=self.app.name, size=len(self.queue))
            waiter.reject(503, "Service Unavailable",
                          "This website is under heavy load (queue full). Please try again in a moment.")
            return None
        if not self.ready and self.spawning is None and self._backoff is not None and self.last_failure:
            if app_fingerprint(self.app.root) == self._failed_fingerprint:
                waiter.spawn_failed(self.last_failure)  # back-off: no spawn storm, the last error at once
                return None
            self.log.info("The files of {app} changed since its last failed spawn; trying again now", app=self.app.name)
            self._end_backoff()
        self.queue.append(waiter)
        self._maybe_spawn()
        return None

    def cancel(self, waiter: Waiter) -> None:
        """The waiter's client went away: it leaves the queue."""
        try:
            self.queue.remove(waiter)
        except ValueError:
            pass

    def release(self, process: AppProcess) -> None:
        """A request on ``process`` is over."""
        process.sessions -= 1
        process.processed += 1
        process.last_used = time.time()
        if self.queue and process.state == READY:
            self._dispatch()

    def unreachable(self, process: AppProcess) -> None:
        """``process`` refused a connection: it no longer serves, so replace it."""
        if process.state != READY:
            return
        self.log.warn("Process {pid} of {app} stopped accepting connections; replacing it",
                      pid=process.pid, app=self.app.name)
        self._retire(process)

    def _dispatch(self) -> None:
        queue = self.queue
        while queue:
            process = route(self.ready)
            if process is None:
                return
            process.sessions += 1
            queue.popleft().deliver(process)

    # Spawning.
    def _wants_process(self) -> bool:
        """Passenger's rule: below min_instances, someone waiting, or no ready process left free.

        "Free" is: no request in flight when the concurrency is unknown (Passenger
        never scales such apps; we do), a slot left when it is known.
        """
        count = len(self.processes)
        if count >= self.app.max_pool_size:
            return False
        if count < self.app.min_instances or self.queue:
            return True
        if not self.ready:
            return False
        for process in self.ready:
            limit = process.concurrency
            if (process.sessions < limit) if limit else (process.sessions == 0 or limit == 0):
                return False
        return True

    def _maybe_spawn(self) -> None:
        if not self.running or self.spawning is not None or self._backoff is not None:
            return
        if not self._wants_process():
            return
        self.spawned += 1
        try:
            process = self._spawner.spawn(self.app, self.spawned, self, [p.port for p in self.processes])
        except Exception as e:
            report = getattr(e, "report", None) or minimal_report(self.app, str(e))
            self._spawn_failed(report)
            return
        self.spawning = process
        self.processes.append(process)

    # ProcessObserver.
    def process_ready(self, process: AppProcess) -> None:
        elapsed = (time.monotonic() - process.started_monotonic) * 1000
        self.log.info("Process {pid} of {app} is ready on port {port} ({ms:.0f} ms)",
                      pid=process.pid, app=self.app.name, port=process.port, ms=elapsed)
        if self.spawning is process:
            self.spawning = None
        self.failures = 0
        self.last_failure = None
        self.ready.append(process)
        self.ready.sort(key=lambda p: p.number)
        self._watch_health(process)
        self._dispatch()
        self._maybe_spawn()

    def process_failed(self, process: AppProcess, reason: str) -> None:
        report = process.failure or minimal_report(self.app, f"process {process.pid} {reason}", process.pid,
                                                   tuple(process.log_tail()[-50:]))
        self._forget(process)
        if process.state != DEAD:
            self.leaving.add(process)
            process.wait_stopped().addCallback(lambda _: self.leaving.discard(process))
        if self.spawning is process:
            self.spawning = None
        self._spawn_failed(report)

    def process_exited(self, process: AppProcess, reason: str) -> None:
        self.log.warn("Process {pid} of {app} {reason}; removed from the pool",
                      pid=process.pid, app=self.app.name, reason=reason)
        self._forget(process)
        self._maybe_spawn()

    def _watch_health(self, process: AppProcess) -> None:
        app = self.app
        if app.health_check_path is None or process.unix_path is not None:
            return
        clock = self._clock

        def check() -> Deferred[HealthResult]:
            return check_http(clock, process.host, process.port, app.health_check_path or "/", app.health_check_timeout)

        process.monitor = HealthMonitor(clock, check, app.health_check_interval, app.health_check_failures,
                                        lambda result: self._unhealthy(process, result))
        process.monitor.start()

    def _unhealthy(self, process: AppProcess, result: HealthResult) -> None:
        """Failed its health check N times in a row: out of rotation, replaced."""
        if process.state != READY:
            return
        self.log.warn("Process {pid} of {app} failed its health check {path} {count} times in a row ({detail}); "
                      "replacing it", pid=process.pid, app=self.app.name, path=self.app.health_check_path,
                      count=self.app.health_check_failures, detail=result.detail)
        self._retire(process)

    def _retire(self, process: AppProcess) -> None:
        """Take a process out of rotation, stop it (its requests finish or fail), spawn a replacement."""
        self._forget(process)
        self.leaving.add(process)
        process.stop().addCallback(lambda _: self.leaving.discard(process))
        self._maybe_spawn()

    def _forget(self, process: AppProcess) -> None:
        if process.monitor is not None:
            process.monitor.stop()
            process.monitor = None
        if process in self.processes:
            self.processes.remove(process)
        if process in self.ready:
            self.ready.remove(process)

    def _spawn_failed(self, report: SpawnReport) -> None:
        self.failures += 1
        self.last_failure = report
        saved = save_failure(report, self.app.spawn_dir)
        self._failed_fingerprint = app_fingerprint(self.app.root)  # after saving: the report may land in the root
        self.log.error("{line}\n{tail}", line=log_line(report, saved), app=self.app.name, pid=report.pid,
                       error_id=report.error_id, tail="\n".join(report.output[-20:]))
        if not self.ready:
            while self.queue:
                self.queue.popleft().spawn_failed(report)
        if self.running:
            delay = min(FIRST_BACKOFF * 2 ** (self.failures - 1), MAX_BACKOFF) * (0.75 + 0.5 * self._jitter())
            self._backoff = self._clock.callLater(delay, self._backoff_over)

    def _backoff_over(self) -> None:
        self._backoff = None
        self._maybe_spawn()

    def _end_backoff(self) -> None:
        """A deploy (or a fix) happened: forget the failures and spawn at once."""
        if self._backoff is not None and self._backoff.active():
            self._backoff.cancel()
        self._backoff = None
        self.failures = 0

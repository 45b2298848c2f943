"""The group of one app: its processes, its request queue, when to spawn, when to recycle.

Requests check out a process here (least busy, see routing.py) and give it
back when their response is done.  When no process can take a request it
waits in a FIFO queue, bounded in size (``max_request_queue_size``, then 503)
and in time (``max_request_queue_time``, then 504).  The group spawns while
it is below ``min_instances``, someone waits, or every process is busy, up to
``max_instances`` and as far as the pool (all apps) has room; at most
``max_spawns_in_parallel`` at a time (1, serial, as in Passenger).

A process leaves gracefully ("retired"): out of rotation at once, stopped when
its last request is done (or after the drain timeout).  That is how idle
processes, recycled ones (``max_requests``, ``memory_limit``), unhealthy ones
and processes evicted to make room for another app go.
"""

from __future__ import annotations

import collections
import os
import random
import time
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from passenger.config import AppConfig
from passenger.http.errors import reason
from passenger.http.static import StaticFiles
from passenger.pool.process import DEAD, READY, AppProcess
from passenger.pool.routing import is_full, route
from passenger.pool.stats import GroupStats
from passenger.spawn.failure import minimal_report, save_failure
from passenger.spawn.health import HealthMonitor, HealthResult, check_http
from passenger.spawn.report import SpawnReport, log_line

if TYPE_CHECKING:
    from passenger.pool.pool import Pool

#: While tmp/always_restart.txt exists, a request restarts the app at most this often (seconds).
ALWAYS_RESTART_THROTTLE = 1.0
#: Delay before re-spawning after a failed spawn; doubles up to MAX_BACKOFF,
#: with +/-25% jitter so that many apps failing together do not retry in step.
FIRST_BACKOFF = 0.5
MAX_BACKOFF = 60.0
SHUTTING_DOWN = (503, "Service Unavailable", "The server is shutting down.")


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


def static_files(app: AppConfig, clock: Any) -> StaticFiles | None:
    """The app's static-file server: ``static_files_dir`` (default ``public``) under its root, if it is a directory."""
    if app.static_files_dir == "":
        return None
    directory = os.path.join(app.root, app.static_files_dir or "public")
    return StaticFiles(directory, clock, app.base_uri) if os.path.isdir(directory) else None


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


#: A queued request: when it started waiting, and the waiter.
Queued = tuple[float, Waiter]


class Group:
    log = Logger()

    def __init__(self, app: AppConfig, spawner: SpawnerLike, clock: Any, pool: Pool,
                 jitter: Callable[[], float] = random.random, drain_timeout: float = 30.0) -> None:
        self.app = app
        self.pool = pool
        self._jitter = jitter
        self._spawner = spawner
        self._clock = clock
        self.drain_timeout = drain_timeout
        #: Live processes that count against the limits (spawning or ready), oldest first.
        self.processes: list[AppProcess] = []
        #: Processes on their way out (draining or stopping), until reaped.
        self.leaving: set[AppProcess] = set()
        #: Ready processes, oldest first: what routing chooses from.
        self.ready: list[AppProcess] = []
        #: Requests waiting for any process, oldest first.
        self.queue: collections.deque[Queued] = collections.deque()
        #: Requests waiting for one process (sticky sessions), by process.
        self.sticky_waiting = 0
        self.spawning: list[AppProcess] = []
        self.running = False
        self.spawned = 0
        self.failures = 0
        #: Why the last spawn failed, while no spawn has succeeded since.
        self.last_failure: SpawnReport | None = None
        self._failed_fingerprint: tuple[int, ...] = ()
        self._backoff: IDelayedCall | None = None
        self._idle_timer: IDelayedCall | None = None
        self._queue_timer: IDelayedCall | None = None
        self._sticky_ids: dict[int, AppProcess] = {}
        #: The most processes this app can ever have (its max_instances, or the whole pool).
        self.most_processes = min(app.max_instances or pool.max_pool_size, pool.max_pool_size)
        #: The app's static files, served by the front end without a process.
        self.static = static_files(app, clock)
        #: Restarts: each makes a new generation; new processes carry it.
        self.generation = 0
        self.restarts = 0
        #: A rolling restart is under way (new processes take requests first).
        self.rolling = False
        self._roll_again = False
        self._roll_done: Deferred[None] | None = None
        #: Why the last rolling restart stopped (a new process failed under resist_deployment_errors).
        self.restart_error: SpawnReport | None = None
        #: Set by the restart-file watcher while tmp/always_restart.txt exists.
        self.always_restart = False
        self._next_always_restart = 0.0
        self._restart_waiters: list[Deferred[None]] = []
        self._readiness: dict[AppProcess, Deferred[bool]] = {}
        self.stats = GroupStats()
        #: The last spawn failures, with when they happened (for the dashboard and the status report).
        self.recent_failures: collections.deque[tuple[float, SpawnReport]] = collections.deque(maxlen=10)

    # Life of the group.
    def start(self) -> None:
        self.running = True
        self._maybe_spawn()

    def stop(self) -> Deferred[Any]:
        """Reject waiters, stop every process; fires when all are reaped."""
        self._close(*SHUTTING_DOWN)
        readiness, self._readiness = self._readiness, {}
        for d in readiness.values():
            d.callback(False)  # a rolling restart under way ends here
        everyone = list(self.processes) + list(self.leaving)
        for process in everyone:
            self._forget(process)
        return DeferredList([p.stop() for p in everyone], consumeErrors=True)

    def wind_down(self) -> Deferred[Any]:
        """The app leaves the server: no new requests; its processes finish theirs and stop."""
        self._close(503, "Service Unavailable", "This application was removed from the server.")
        for process in list(self.spawning):
            self._discard(process)
        for process in list(self.ready):
            self._retire(process, settle=False)
        return DeferredList([p.wait_stopped() for p in self.leaving if p.state != DEAD], consumeErrors=True)

    def _close(self, status: int, title: str, detail: str) -> None:
        """No more requests: timers off, every waiting request answered ``status``."""
        self.running = False
        for timer in (self._backoff, self._idle_timer, self._queue_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._backoff = self._idle_timer = self._queue_timer = None
        for waiter in self._take_all_waiters():
            waiter.reject(status, title, detail)

    def _discard(self, process: AppProcess) -> None:
        """Out of the pool and stopped at once (no draining)."""
        self._forget(process)
        self._leave(process, process.stop())

    def limits_changed(self) -> None:
        """The pool's size, the drain timeout or this app's settings were reloaded."""
        self.most_processes = min(self.app.max_instances or self.pool.max_pool_size, self.pool.max_pool_size)
        self.drain_timeout = self.pool.drain_timeout
        self.static = static_files(self.app, self._clock)

    @property
    def waiting(self) -> int:
        """Requests waiting for a process of this app."""
        return len(self.queue) + self.sticky_waiting

    def queued(self) -> list[Waiter]:
        """The requests waiting for any process, oldest first."""
        return [waiter for _, waiter in self.queue]

    # Requests.
    def checkout(self, waiter: Waiter, sticky_id: int | None = None) -> AppProcess | None:
        """A process for this request now, or None (the waiter will hear later)."""
        if self.always_restart and self._clock.seconds() >= self._next_always_restart:
            self._next_always_restart = self._clock.seconds() + ALWAYS_RESTART_THROTTLE
            self.restart(rolling=False, reason="tmp/always_restart.txt exists")
        target = self._sticky_ids.get(sticky_id) if sticky_id is not None else None
        if target is not None and target.state == READY and target in self.ready:
            if not is_full(target):
                target.sessions += 1
                return target
        else:
            target = None
            if self.rolling:  # the new generation first
                process = route([p for p in self.ready if p.generation == self.generation]) or route(self.ready)
            else:
                process = route(self.ready)
            if process is not None:
                process.sessions += 1
                if not self.spawning and len(self.processes) < self.most_processes:
                    self._maybe_spawn()  # every process busy: grow, as far as the limits allow
                return process
        if not self.running:
            waiter.reject(*SHUTTING_DOWN)
            return None
        limit = self.app.max_request_queue_size
        if limit and self.waiting >= limit:
            self.log.warn("Request queue of {app} is full ({size}); answering {status}", app=self.app.name,
                          size=self.waiting, status=self.app.request_queue_overflow_status_code)
            self.stats.queue_full += 1
            self.pool.notify("queue_full_error", self)
            status = self.app.request_queue_overflow_status_code
            waiter.reject(status, reason(status),
                          "This website is under heavy load (queue full). Please try again in a moment.")
            return None
        if not self.ready and not self.spawning and self._backoff is not None and self.last_failure:
            if app_fingerprint(self.app.root) == self._failed_fingerprint:
                waiter.spawn_failed(self.last_failure)  # back-off: no spawn storm, the last error at once
                return None
            self.log.info("The files of {app} changed since its last failed spawn; trying again now", app=self.app.name)
            self._end_backoff()
        entry = (self._clock.seconds(), waiter)
        if target is not None:
            target.waiters.append(entry)  # it waits for its own process (sticky sessions)
            self.sticky_waiting += 1
        else:
            self.queue.append(entry)
        self._watch_queue_time()
        self._maybe_spawn()
        return None

    def cancel(self, waiter: Waiter) -> None:
        """The waiter's client went away: it leaves the queue at once."""
        for entry in self.queue:
            if entry[1] is waiter:
                self.queue.remove(entry)
                return
        for process in self.ready:
            for entry in process.waiters:
                if entry[1] is waiter:
                    process.waiters.remove(entry)
                    self.sticky_waiting -= 1
                    return

    def release(self, process: AppProcess) -> None:
        """A request on ``process`` is over."""
        process.sessions -= 1
        process.processed += 1
        process.last_used = self._clock.seconds()
        if process.draining:
            if process.sessions == 0:
                self._stop_drained(process)
            return
        if process.state != READY:
            return
        limit = self.app.max_requests
        if limit and process.processed >= limit:
            self.log.info("Process {pid} of {app} served {count} requests (max_requests); replacing it",
                          pid=process.pid, app=self.app.name, count=process.processed)
            self._retire(process)
            return
        if process.waiters or self.queue:
            self._dispatch()
        elif process.sessions == 0:
            if self.pool.waiting and self.pool.needs_room(self):
                self.log.info("Stopping idle process {pid} of {app} to make room for another app",
                              pid=process.pid, app=self.app.name)
                self._retire(process)
            else:
                self._watch_idle()

    def unreachable(self, process: AppProcess) -> None:
        """``process`` refused a connection: it no longer serves, so replace it."""
        if process.state != READY or process.draining:
            return
        self.log.warn("Process {pid} of {app} stopped accepting connections; replacing it",
                      pid=process.pid, app=self.app.name)
        self._retire(process)

    def stuck(self, process: AppProcess, seconds: float) -> None:
        """A request ran past max_request_time on ``process``: stop it now (its other requests fail)."""
        if process.state != READY:
            return
        self.log.warn("A request on process {pid} of {app} ran longer than {seconds}s (max_request_time); "
                      "replacing the process", pid=process.pid, app=self.app.name, seconds=seconds)
        self._discard(process)
        self._settle()

    def detach(self, process: AppProcess) -> bool:
        """Take ``process`` out of rotation and stop it after its requests (the admin API's detach); False if it is not ready."""
        if process.state != READY or process.draining:
            return False
        self.log.info("Detaching process {pid} of {app} (asked through the admin API)", pid=process.pid,
                      app=self.app.name)
        self._retire(process)
        return True

    def recycle(self, process: AppProcess, why: str) -> None:
        """Replace ``process`` gracefully (memory limit and the like)."""
        if process.state != READY or process.draining:
            return
        self.log.warn("Process {pid} of {app} {why}; replacing it", pid=process.pid, app=self.app.name, why=why)
        self._retire(process)

    def evict(self, process: AppProcess) -> None:
        """The pool needs room for another app: retire this idle process."""
        self.log.info("Stopping idle process {pid} of {app} to make room for another app",
                      pid=process.pid, app=self.app.name)
        self._retire(process, settle=False)

    def _dispatch(self) -> None:
        """Hand waiting requests to processes that have room: their own sticky waiters first, then the queue."""
        if self.sticky_waiting:
            for process in self.ready:
                waiters = process.waiters
                while waiters and not is_full(process):
                    process.sessions += 1
                    self.sticky_waiting -= 1
                    waiters.popleft()[1].deliver(process)
        queue = self.queue
        while queue:
            chosen = route(self.ready)
            if chosen is None:
                break
            chosen.sessions += 1
            queue.popleft()[1].deliver(chosen)

    def _take_all_waiters(self) -> list[Waiter]:
        waiters = [waiter for _, waiter in self.queue]
        self.queue.clear()
        for process in self.processes:
            waiters += [waiter for _, waiter in process.waiters]
            process.waiters.clear()
        self.sticky_waiting = 0
        return waiters

    # Time limits on waiting and idling.
    def _watch_queue_time(self) -> None:
        if self.app.max_request_queue_time and self._queue_timer is None:
            oldest = self._oldest_wait()
            if oldest is not None:
                self._queue_timer = self._clock.callLater(
                    max(0.0, oldest + self.app.max_request_queue_time - self._clock.seconds()), self._queue_time_over)

    def _oldest_wait(self) -> float | None:
        since = [self.queue[0][0]] if self.queue else []
        since += [p.waiters[0][0] for p in self.processes if p.waiters]
        return min(since) if since else None

    def _queue_time_over(self) -> None:
        """Answer 504 to every request that has waited longer than max_request_queue_time."""
        self._queue_timer = None
        limit = self.app.max_request_queue_time
        cutoff = self._clock.seconds() - limit
        expired = []
        while self.queue and self.queue[0][0] <= cutoff:
            expired.append(self.queue.popleft()[1])
        for process in self.processes:
            while process.waiters and process.waiters[0][0] <= cutoff:
                expired.append(process.waiters.popleft()[1])
                self.sticky_waiting -= 1
        if expired:
            self.log.warn("{count} request(s) waited longer than {seconds}s for a process of {app}; answering 504",
                          count=len(expired), seconds=limit, app=self.app.name)
        for waiter in expired:
            waiter.reject(504, "Gateway Timeout", "The request waited too long for the application (queue time limit).")
        self._watch_queue_time()

    def _watch_idle(self) -> None:
        """Make sure a timer will stop processes idle for pool_idle_time (never below min_instances)."""
        idle_time = self.app.pool_idle_time
        if not idle_time or self._idle_timer is not None or len(self.processes) <= self.app.min_instances:
            return
        idle = [p.last_used for p in self.ready if p.sessions == 0]
        if idle:
            delay = max(0.0, min(idle) + idle_time - self._clock.seconds())
            self._idle_timer = self._clock.callLater(delay, self._reap_idle)

    def _reap_idle(self) -> None:
        self._idle_timer = None
        cutoff = self._clock.seconds() - self.app.pool_idle_time
        for process in sorted(self.ready, key=lambda p: p.last_used):
            if len(self.processes) <= self.app.min_instances:
                break
            if process.sessions == 0 and process.last_used <= cutoff:
                self.log.info("Process {pid} of {app} was idle for {seconds:.0f}s (pool_idle_time); stopping it",
                              pid=process.pid, app=self.app.name, seconds=self._clock.seconds() - process.last_used)
                self._retire(process, replace=False)
        self._watch_idle()

    # Spawning.
    def wants_process(self) -> bool:
        """Passenger's rule: below min_instances, someone waiting, or no ready process left free.

        "Free" is: no request in flight when the concurrency is unknown (Passenger
        never scales such apps; we do), a slot left when it is known.
        """
        count = len(self.processes)
        if self.app.max_instances and count >= self.app.max_instances:
            return False
        if count < self.app.min_instances:
            return True
        spawning = len(self.spawning)
        if self.waiting:
            # Each process on its way takes at least one waiter (its concurrency's worth, if known).
            return self.waiting > spawning * (self.app.concurrency or 1)
        if spawning or not self.ready:
            return False
        for process in self.ready:
            limit = process.concurrency
            if (process.sessions < limit) if limit else (process.sessions == 0 or limit == 0):
                return False
        return True

    def _maybe_spawn(self) -> None:
        while (self.running and self._backoff is None and len(self.spawning) < self.app.max_spawns_in_parallel
               and self.wants_process() and self._may_grow() and self.pool.may_spawn(self, evict=self.waiting > 0)):
            if self._spawn() is None:
                return

    def _may_grow(self) -> bool:
        """While the server drains, a spawn only for requests that no process would ever take.

        The requests in flight finish on the processes there are; a process spawned
        now would serve nothing (no new connections come) and be killed by the stop.
        """
        return not self.pool.draining or (self.waiting > 0 and not self.ready and not self.spawning)

    def _spawn(self) -> AppProcess | None:
        """Start one process of the current generation (None: it failed at once, and that is handled)."""
        self.spawned += 1
        try:
            process = self._spawner.spawn(self.app, self.spawned, self, [p.port for p in self.processes])
        except Exception as e:
            report = getattr(e, "report", None) or minimal_report(self.app, str(e))
            self._spawn_failed(report)
            return None
        process.generation = self.generation
        self.spawning.append(process)
        self.processes.append(process)
        return process

    def capacity_available(self) -> None:
        """The pool has room again (for this group, which asked for it)."""
        self._maybe_spawn()

    # ProcessObserver.
    def process_ready(self, process: AppProcess) -> None:
        elapsed = time.monotonic() - process.started_monotonic
        self.log.info("Process {pid} of {app} is ready on port {port} ({ms:.0f} ms)",
                      pid=process.pid, app=self.app.name, port=process.port, ms=elapsed * 1000)
        self.stats.spawn_time.observe(elapsed)
        if process in self.spawning:
            self.spawning.remove(process)
        process.last_used = self._clock.seconds()
        self.failures = 0
        self.last_failure = None
        self.ready.append(process)
        self.ready.sort(key=lambda p: p.number)
        if self.app.sticky_sessions:
            process.sticky_id = self._new_sticky_id()
            self._sticky_ids[process.sticky_id] = process
        self._watch_health(process)
        readiness = self._readiness.pop(process, None)
        if readiness is not None:
            readiness.callback(True)
        if process.generation == self.generation and self._restart_waiters:
            waiters, self._restart_waiters = self._restart_waiters, []
            for d in waiters:
                d.callback(None)
        self.pool.notify("attached_process", self, process=process)
        self._dispatch()
        self._maybe_spawn()
        self._watch_idle()

    def process_failed(self, process: AppProcess, reason: str) -> None:
        report = process.failure or minimal_report(self.app, f"process {process.pid} {reason}", process.pid,
                                                   tuple(process.log_tail()[-50:]))
        self.stats.failed_spawn_time.observe(time.monotonic() - process.started_monotonic)
        self._forget(process)
        if process.state != DEAD:
            self._leave(process, process.wait_stopped())
        self._spawn_failed(report)
        readiness = self._readiness.pop(process, None)
        if readiness is not None:
            readiness.callback(False)
        self.pool.rebalance()

    def process_exited(self, process: AppProcess, reason: str) -> None:
        self.log.warn("Process {pid} of {app} {reason}; removed from the pool",
                      pid=process.pid, app=self.app.name, reason=reason)
        self._forget(process)
        self.leaving.discard(process)
        self._settle()

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
        if process.state != READY or process.draining:
            return
        self.log.warn("Process {pid} of {app} failed its health check {path} {count} times in a row ({detail}); "
                      "replacing it", pid=process.pid, app=self.app.name, path=self.app.health_check_path,
                      count=self.app.health_check_failures, detail=result.detail)
        self._retire(process)

    # Restarts.
    @property
    def restarting(self) -> bool:
        """A restart is under way: rolling, or blocking until its first new process is ready."""
        return self.rolling or bool(self._restart_waiters)

    def restart(self, rolling: bool | None = None, reason: str = "") -> Deferred[None]:
        """Replace every process with one of the app as it is now; fires when the restart is over.

        Blocking (Passenger's default): every process leaves rotation and drains at
        once, requests wait for the first new process, which is when this fires.
        Rolling: a new process first, then one old process drained and stopped,
        one at a time.  Either way a restart ends a spawn back-off: the app may
        have been fixed.
        """
        rolling = self.app.rolling_restarts if rolling is None else rolling
        if rolling and self._roll_done is not None:
            self._roll_again = True  # one more pass over what is old once this one ends
            self.log.info("Restarting {app} (rolling){why}: after the rolling restart under way",
                          app=self.app.name, why=f": {reason}" if reason else "")
            return self._roll_done
        self.restarts += 1
        self.generation += 1
        self._end_backoff()
        self.last_failure = None
        self.restart_error = None
        self.log.info("Restarting {app} ({how}){why}", app=self.app.name, how="rolling" if rolling else "blocking",
                      why=f": {reason}" if reason else "")
        if rolling and self.ready:
            self._roll_done = self._roll()
            return self._roll_done
        for process in list(self.spawning):  # a spawn of the old version is of no use now
            self._discard(process)
        for process in list(self.ready):
            self._retire(process, settle=False)
        done: Deferred[None] = Deferred()
        self._restart_waiters.append(done)
        self._settle()
        if not self.spawning and not self.ready and self._restart_waiters:
            waiters, self._restart_waiters = self._restart_waiters, []
            for d in waiters:  # nothing to start until a request comes (min_instances 0)
                d.callback(None)
        return done

    @inlineCallbacks
    def _roll(self) -> Generator[Deferred[Any], Any, None]:
        self.rolling = True
        try:
            while True:
                for old in [p for p in self.ready if p.generation < self.generation]:
                    if old not in self.ready:
                        continue  # it died meanwhile
                    fresh = self._spawn()
                    started = (yield self._until_ready(fresh)) if fresh is not None else False
                    if not started:
                        if self.app.resist_deployment_errors:
                            self.restart_error = self.last_failure
                            self.log.error("Rolling restart of {app} stopped: a new process failed to start "
                                           "(resist_deployment_errors); {count} old process(es) keep serving",
                                           app=self.app.name, count=len(self.ready))
                            return
                        self.log.warn("Rolling restart of {app}: a new process failed to start; "
                                      "replacing the next old one anyway", app=self.app.name)
                    if old in self.ready:
                        self._retire(old, replace=False)
                    if old.state != DEAD:
                        yield old.wait_stopped()
                if not self._roll_again:
                    return
                self._roll_again = False
                self.restarts += 1
                self.generation += 1
        finally:
            self.rolling = False
            self._roll_done = None
            self._settle()

    def _until_ready(self, process: AppProcess) -> Deferred[bool]:
        """Fires True when ``process`` is ready, False if it fails to start."""
        d: Deferred[bool] = Deferred()
        self._readiness[process] = d
        return d

    # Processes leaving.
    def _retire(self, process: AppProcess, replace: bool = True, settle: bool = True) -> None:
        """Out of rotation now; stopped once its requests are done (or after the drain timeout)."""
        self._forget(process)
        process.draining = True
        for connection in process.idle:
            if connection.transport is not None:
                connection.transport.loseConnection()
        process.idle.clear()
        if process.sessions == 0:
            self._leave(process, process.stop())
        else:
            self.leaving.add(process)
            process.arm(self.drain_timeout, lambda: self._stop_drained(process))
            if self.app.abort_websockets_on_process_shutdown:
                self._cut_off(process, tunnels_only=True,
                              detail="The process serving this connection is shutting down.")
        if settle:
            self._settle() if replace else self.pool.rebalance()

    def _stop_drained(self, process: AppProcess) -> None:
        """Its last request is done, or the drain timeout passed: stop it (requests still on it get 504)."""
        if process.sessions:
            self.log.warn("Process {pid} of {app} still had {count} request(s) after {seconds}s of draining; "
                          "answering them 504 and stopping it", pid=process.pid, app=self.app.name,
                          count=process.sessions, seconds=self.drain_timeout)
            self._cut_off(process, tunnels_only=False,
                          detail="The application did not finish this request before its process had to stop.")
        process.draining = False
        self._leave(process, process.stop())

    @staticmethod
    def _cut_off(process: AppProcess, tunnels_only: bool, detail: str) -> None:
        """End the requests (or only the upgraded connections) still on ``process``, from the client's side."""
        for connection in list(process.connections):
            front = connection.front
            if front is not None and (front.tunnel or not tunnels_only):
                front.cut_off(process, detail)

    def _leave(self, process: AppProcess, stopped: Deferred[None]) -> None:
        self.leaving.add(process)
        stopped.addCallback(lambda _: self.leaving.discard(process))

    def _forget(self, process: AppProcess) -> None:
        """Out of the pool's counts and out of rotation; its sticky waiters go back to the queue."""
        if process.monitor is not None:
            process.monitor.stop()
            process.monitor = None
        if process in self.processes:
            self.processes.remove(process)
        if process in self.ready:
            self.ready.remove(process)
            self.pool.notify("detached_process", self, process=process)
        if process in self.spawning:
            self.spawning.remove(process)
        if process.sticky_id is not None:
            self._sticky_ids.pop(process.sticky_id, None)
        if process.waiters:
            self.sticky_waiting -= len(process.waiters)
            self.queue.extendleft(reversed(process.waiters))
            process.waiters.clear()

    def _settle(self) -> None:
        """After a process left: serve the queue, spawn what is missing, let other apps use freed room."""
        self._dispatch()
        self._maybe_spawn()
        self.pool.rebalance()

    def _new_sticky_id(self) -> int:
        while True:
            candidate = random.randint(1, 2**31 - 1)
            if candidate not in self._sticky_ids:
                return candidate

    # Spawn failures and back-off.
    def _spawn_failed(self, report: SpawnReport) -> None:
        self.failures += 1
        self.last_failure = report
        self.stats.spawn_failures += 1
        self.recent_failures.append((self._clock.seconds(), report))
        saved = save_failure(report, self.app.spawn_dir)
        self._failed_fingerprint = app_fingerprint(self.app.root)  # after saving: the report may land in the root
        output = report.output[-20:]
        self.log.error("{line}{tail}", line=log_line(report, saved), app=self.app.name, pid=report.pid,
                       error_id=report.error_id, tail="".join("\n" + line for line in output))
        self.pool.notify("spawn_failed", self, report=report)
        if not self.ready:
            for waiter in self._take_all_waiters():
                waiter.spawn_failed(report)
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

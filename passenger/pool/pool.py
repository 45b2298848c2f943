"""The pool: every app's group, and the limits they share.

``max_pool_size`` bounds the processes of all apps together.  When an app
with waiting requests needs a process and the pool is full, the oldest idle
process of another app is stopped to make room (Passenger's
``forceFreeCapacity``); if none is idle, the app waits in the pool's FIFO
until a process anywhere leaves.  The pool also watches memory: a process
above its app's ``memory_limit`` is recycled.
"""

from __future__ import annotations

import collections
import random
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from passenger.config import AppConfig
from passenger.pool.group import Group, SpawnerLike
from passenger.pool.process import READY, AppProcess

#: Seconds between two looks at the memory of processes whose app has a memory_limit.
MEMORY_CHECK_INTERVAL = 5.0


class MemoryReader(Protocol):
    def rss(self, pid: int) -> int | None:
        """Resident memory of ``pid`` in bytes, or None if it cannot be read (gone)."""


class PoolListener(Protocol):
    def pool_event(self, event: str, group: Group, details: dict[str, Any]) -> None:
        """``event`` (attached_process, detached_process, spawn_failed, queue_full_error) happened to ``group``."""


class Pool:
    log = Logger()

    def __init__(self, spawner: SpawnerLike, clock: Any, max_pool_size: int, memory: MemoryReader | None = None,
                 drain_timeout: float = 30.0, jitter: Callable[[], float] = random.random) -> None:
        self.spawner = spawner
        self.clock = clock
        self.max_pool_size = max_pool_size
        self.drain_timeout = drain_timeout
        self.memory = memory
        self.jitter = jitter
        self.groups: dict[str, Group] = {}
        #: Groups removed by a reload whose processes are still finishing.
        self.removed: set[Group] = set()
        #: Groups that need a process while the pool is full, first come first served.
        self.waiting: collections.deque[Group] = collections.deque()
        self._memory_timer: IDelayedCall | None = None
        #: Told of process and queue events (the hooks).
        self.listeners: list[PoolListener] = []
        #: The server is stopping and lets its requests finish: groups no longer grow (Group._may_grow).
        self.draining = False

    def notify(self, event: str, group: Group, **details: Any) -> None:
        for listener in self.listeners:
            try:
                listener.pool_event(event, group, details)
            except Exception:
                self.log.failure("A listener of {event} failed", event=event)

    def find_process(self, pid: int) -> tuple[Group, AppProcess] | None:
        """The live process with this pid, and its group."""
        for group in self.groups.values():
            for process in group.processes:
                if process.pid == pid:
                    return group, process
        return None

    def add(self, app: AppConfig) -> Group:
        group = Group(app, self.spawner, self.clock, self, jitter=self.jitter, drain_timeout=self.drain_timeout)
        self.groups[app.name] = group
        return group

    def start(self) -> None:
        self.draining = False
        for group in self.groups.values():
            group.start()
        if self.memory is not None and any(g.app.memory_limit for g in self.groups.values()):
            self._memory_timer = self.clock.callLater(MEMORY_CHECK_INTERVAL, self._check_memory)

    def stop(self) -> Deferred[Any]:
        if self._memory_timer is not None and self._memory_timer.active():
            self._memory_timer.cancel()
        self._memory_timer = None
        self.waiting.clear()
        groups = [*self.groups.values(), *self.removed]
        count = sum(len(group.processes) + len(group.leaving) for group in groups)
        if count:  # which phase a slow stop is in shows in the log
            self.log.info("Stopping {count} app process(es)", count=count)
        return DeferredList([group.stop() for group in groups], consumeErrors=True)

    def remove(self, name: str) -> Deferred[Any]:
        """The app leaves the server: its processes finish their requests and stop."""
        group = self.groups.pop(name)
        if group in self.waiting:
            self.waiting.remove(group)
        self.removed.add(group)
        done = group.wind_down()

        def gone(result: object) -> object:
            self.removed.discard(group)
            return result

        done.addBoth(gone)
        self.rebalance()
        return done

    @property
    def size(self) -> int:
        """Processes that count against max_pool_size: spawning or serving (not those leaving)."""
        return sum(len(group.processes) for group in self.groups.values())

    def processes(self) -> Iterator[AppProcess]:
        for group in self.groups.values():
            yield from group.processes

    # What groups ask.
    def may_spawn(self, group: Group, evict: bool) -> bool:
        """Is there room for one more process of ``group``?

        With ``evict`` (the group has requests waiting) the oldest idle process of
        another app is stopped to make room.  A group that needs a process (requests
        waiting, or below min_instances) and gets no room waits for the next one;
        a group that only wants to grow (all its processes busy) asks again later.
        """
        if self.size < self.max_pool_size:
            if not self.waiting or self.waiting[0] is group:
                if self.waiting:
                    self.waiting.popleft()
                return True
            self.rebalance()  # apps that asked first get the room first
            if self.size < self.max_pool_size:
                return True
        if evict:
            victim = self._oldest_idle(besides=group)
            if victim is not None:
                owner = self.groups[victim.app]
                owner.evict(victim)
                if owner.wants_process() and owner not in self.waiting:
                    self.waiting.append(owner)
                return True
        if (evict or len(group.processes) < group.app.min_instances) and group not in self.waiting:
            self.waiting.append(group)  # it needs a process, not just wants one: it gets the next room
        return False

    def needs_room(self, group: Group) -> bool:
        """Does another app wait for room with requests queued (so an idle process of ``group`` should go)?"""
        return any(other is not group and other.waiting for other in self.waiting)

    def rebalance(self) -> None:
        """Room may have been freed: let waiting groups spawn, in the order they asked."""
        while self.waiting and self.size < self.max_pool_size:
            group = self.waiting.popleft()
            group.capacity_available()

    def _oldest_idle(self, besides: Group) -> AppProcess | None:
        oldest: AppProcess | None = None
        for group in self.groups.values():
            if group is besides:
                continue
            for process in group.ready:
                if process.sessions == 0 and process.state == READY and not process.waiters:
                    if oldest is None or process.last_used < oldest.last_used:
                        oldest = process
        return oldest

    # Memory limits.
    def _check_memory(self) -> None:
        self._memory_timer = self.clock.callLater(MEMORY_CHECK_INTERVAL, self._check_memory)
        assert self.memory is not None
        for group in list(self.groups.values()):
            limit = group.app.memory_limit
            if not limit:
                continue
            for process in list(group.ready):
                rss = self.memory.rss(process.pid) if process.pid is not None else None
                if rss is not None and rss > limit * 1024 * 1024:
                    group.recycle(process, f"uses {rss / 1048576:.0f} MB, above its memory_limit of {limit} MB")

"""The pool's rules on a Clock: shared limits, eviction, queue limits, idling, recycling, stickiness, crashes.

Every app process is a real AppProcess with a fake OS process (FakeSpawner);
``process.listening()`` makes it ready, ``transport_of(p).end()`` makes it exit.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
from twisted.internet.task import Clock

from passenger.pool.group import Group
from passenger.pool.metrics import ProcessMemory
from passenger.pool.pool import MEMORY_CHECK_INTERVAL, MemoryReader, Pool
from passenger.pool.process import DEAD, READY, STOPPING, AppProcess
from tests.unit.fakes import FakeMemory, FakeSpawner, RecordingWaiter, make_app, transport_of

MB = 1024 * 1024


class World:
    """A pool of several apps on one Clock."""

    def __init__(self, max_pool_size: int = 6, memory: MemoryReader | None = None, drain_timeout: float = 30.0) -> None:
        self.clock = Clock()
        self.spawner = FakeSpawner(self.clock)
        self.pool = Pool(self.spawner, self.clock, max_pool_size, memory=memory, drain_timeout=drain_timeout,
                         jitter=lambda: 0.5)

    def app(self, name: str, **settings: Any) -> Group:
        return self.pool.add(make_app(name=name, **settings))

    def start(self) -> None:
        self.pool.start()
        self.settle()

    def settle(self) -> None:
        """Every process being spawned becomes ready (repeatedly, as new spawns start)."""
        while True:
            spawning = [p for p in self.spawner.spawned if p.state == "spawning"]
            if not spawning:
                return
            for process in spawning:
                process.listening()

    def of(self, group: Group) -> list[AppProcess]:
        return [p for p in self.spawner.spawned if p.app == group.app.name]


def request(group: Group, sticky_id: int | None = None, name: str = "") -> tuple[RecordingWaiter, AppProcess | None]:
    waiter = RecordingWaiter(name)
    process = group.checkout(waiter, sticky_id)
    if process is not None:
        waiter.delivered.append(process)
    return waiter, process


def stopped(process: AppProcess) -> bool:
    """Asked to stop: TERM, or KILL for a process still spawning (see AppProcess's stop_spawning)."""
    return bool({"TERM", "KILL"} & set(transport_of(process).signals))


# Limits shared by all apps.

def test_max_pool_size_counts_every_app_and_min_instances_start_at_boot() -> None:
    world = World(max_pool_size=3)
    a = world.app("a", min_instances=2)
    b = world.app("b", min_instances=1)
    world.start()
    assert [len(a.ready), len(b.ready)] == [2, 1]
    assert world.pool.size == 3


def test_a_busy_app_cannot_grow_past_the_pool_and_waits_for_room() -> None:
    world = World(max_pool_size=2)
    a = world.app("a", min_instances=1, concurrency=1)
    b = world.app("b", min_instances=1, concurrency=1)
    world.start()
    _, pb = request(b)  # b's only process is busy: nothing of b is idle
    assert pb is not None
    request(a)
    queued, none = request(a, name="queued")
    assert none is None and queued.waiting
    assert world.pool.size == 2 and len(world.spawner.spawned) == 2, "nothing spawned past max_pool_size"
    assert a in world.pool.waiting
    # b's request ends: b's process is idle while a waits for room, so it goes.
    b.release(pb)
    assert stopped(pb)
    assert len(world.spawner.spawned) == 3 and world.spawner.spawned[-1].app == "a"
    world.settle()
    assert queued.delivered == [world.spawner.spawned[-1]]
    assert world.pool.size == 2


def test_the_oldest_idle_process_of_another_app_is_evicted_for_a_waiting_request() -> None:
    world = World(max_pool_size=3)
    a = world.app("a", min_instances=1, concurrency=1)
    b = world.app("b", min_instances=2, concurrency=1)
    world.start()
    b1, b2 = b.ready
    world.clock.advance(1)
    _, got = request(b)
    assert got is b1
    b.release(b1)  # b1 was used last: b2 is the oldest idle
    request(a)
    waiter, none = request(a)
    assert none is None
    assert stopped(b2) and not stopped(b1)
    assert b2 not in b.processes and b.processes == [b1]
    world.settle()
    assert waiter.delivered and waiter.delivered[0].app == "a"
    assert world.pool.size == 3


def test_no_eviction_just_to_scale_an_app_with_nobody_waiting() -> None:
    world = World(max_pool_size=2)
    a = world.app("a", min_instances=1)  # unknown concurrency: grows when every process is busy
    b = world.app("b", min_instances=1)
    world.start()
    request(a)
    [pb] = b.ready
    assert not stopped(pb)
    assert len(world.spawner.spawned) == 2


def test_max_instances_caps_one_app() -> None:
    world = World(max_pool_size=6)
    a = world.app("a", min_instances=1, max_instances=2, concurrency=1)
    world.start()
    for _ in range(5):
        request(a)
        world.settle()
    assert len(a.processes) == 2
    assert a.waiting == 3


def test_parallel_spawns_for_a_cold_burst() -> None:
    world = World(max_pool_size=6)
    a = world.app("a", min_instances=0, concurrency=1, max_spawns_in_parallel=3)
    world.start()
    waiters = [request(a)[0] for _ in range(5)]
    assert len(world.spawner.in_spawning) == 3, "three at once, not one by one"
    world.settle()
    assert all(len(w.delivered) == 1 for w in waiters)
    assert len({w.delivered[0].pid for w in waiters}) == 5, "one process each (concurrency 1)"
    assert len(a.ready) == 6, "and one more, as every process is busy (Passenger's rule)"


def test_serial_spawns_by_default() -> None:
    world = World()
    a = world.app("a", min_instances=0, concurrency=1)
    world.start()
    for _ in range(4):
        request(a)
    assert len(world.spawner.in_spawning) == 1


# Queue limits.

def test_queue_overflow_status_is_configurable() -> None:
    world = World(max_pool_size=1)
    a = world.app("a", concurrency=1, max_request_queue_size=1, request_queue_overflow_status_code=429)
    world.start()
    request(a)
    request(a)
    rejected, _ = request(a)
    assert rejected.rejected and rejected.rejected[0][0] == 429


def test_a_request_that_waits_longer_than_max_request_queue_time_gets_504() -> None:
    world = World(max_pool_size=1)
    a = world.app("a", concurrency=1, max_request_queue_time=2.0)
    world.start()
    _, busy = request(a)
    first, _ = request(a)
    world.clock.advance(1.5)
    second, _ = request(a)
    world.clock.advance(0.5)
    assert first.rejected and first.rejected[0][0] == 504
    assert second.waiting, "it has waited 0.5 s only"
    world.clock.advance(1.4)
    assert second.waiting
    world.clock.advance(0.1)
    assert second.rejected[0][0] == 504
    assert a.waiting == 0
    assert busy is not None and busy.sessions == 1, "the request being served is not touched"
    assert not world.clock.getDelayedCalls() or all(c.getTime() > world.clock.seconds()
                                                    for c in world.clock.getDelayedCalls())


def test_waiters_served_before_the_queue_time_are_not_rejected() -> None:
    world = World(max_pool_size=1)
    a = world.app("a", concurrency=1, max_request_queue_time=2.0)
    world.start()
    _, busy = request(a)
    waiter, _ = request(a)
    world.clock.advance(1)
    assert busy is not None
    a.release(busy)
    assert waiter.delivered == [busy]
    world.clock.advance(5)
    assert not waiter.rejected


def test_a_cancelled_waiter_leaves_at_once() -> None:
    world = World(max_pool_size=1)
    a = world.app("a", concurrency=1)
    world.start()
    request(a)
    gone, _ = request(a)
    stays, _ = request(a)
    a.cancel(gone)
    assert a.queued() == [stays]


# Idle processes and recycling.

def test_idle_processes_stop_after_pool_idle_time_but_never_below_min_instances() -> None:
    world = World()
    a = world.app("a", min_instances=1, concurrency=1, pool_idle_time=60)
    world.start()
    _, p1 = request(a)
    _, none = request(a)
    world.settle()
    p2 = a.ready[1]
    assert none is None and p2.sessions == 1
    world.clock.advance(10)
    assert p1 is not None
    a.release(p1)
    world.clock.advance(5)
    a.release(p2)  # p1 idle since t=10, p2 since t=15
    world.clock.advance(59.9 - 5)
    assert not stopped(p1) and not stopped(p2)
    world.clock.advance(0.2)
    assert stopped(p1), "idle 60 s"
    assert not stopped(p2), "min_instances keeps the last one"
    world.clock.advance(1000)
    assert a.processes == [p2] and not stopped(p2)


def test_pool_idle_time_zero_keeps_idle_processes() -> None:
    world = World()
    a = world.app("a", min_instances=1, concurrency=1, pool_idle_time=0)
    world.start()
    _, p1 = request(a)
    request(a)
    world.settle()
    assert p1 is not None
    a.release(p1)
    before = list(a.processes)
    world.clock.advance(10**6)
    assert a.processes == before and not any(stopped(p) for p in before)


def test_max_requests_recycles_gracefully() -> None:
    world = World()
    a = world.app("a", min_instances=1, concurrency=2, max_requests=3)
    world.start()
    [p1] = a.ready
    for _ in range(2):
        _, got = request(a)
        assert got is p1
        a.release(p1)
    _, third = request(a)
    _, in_flight = request(a)
    assert third is in_flight is p1
    a.release(p1)  # the third request is done: p1 is out of rotation, still finishing one
    assert p1 not in a.ready and p1.draining
    assert not stopped(p1), "a request is still in flight on it"
    assert len(world.spawner.spawned) == 2, "a replacement is on its way"
    a.release(p1)
    assert stopped(p1)
    world.settle()
    _, fresh = request(a)
    assert fresh is world.spawner.spawned[1]


def test_a_draining_process_is_stopped_after_the_drain_timeout() -> None:
    world = World(drain_timeout=10)
    a = world.app("a", min_instances=1, concurrency=2, max_requests=1)
    world.start()
    [p1] = a.ready
    request(a)
    request(a)
    a.release(p1)
    assert p1.draining and not stopped(p1)
    world.clock.advance(10)
    assert stopped(p1)


def test_memory_limit_recycles_the_process_above_it() -> None:
    memory = FakeMemory()
    world = World(memory=memory)
    a = world.app("a", min_instances=2, memory_limit=100)
    b = world.app("b", min_instances=1)  # no limit: never looked at
    world.start()
    p1, p2 = a.ready
    assert p1.pid is not None and p2.pid is not None
    memory.rss_by_pid.update({p1.pid: 150 * MB, p2.pid: 50 * MB})
    world.clock.advance(MEMORY_CHECK_INTERVAL)
    assert stopped(p1) and not stopped(p2)
    assert b.ready[0].pid not in memory.reads
    assert len(world.spawner.spawned) == 4, "replaced"


def test_no_memory_timer_without_a_memory_limit() -> None:
    world = World(memory=FakeMemory())
    world.app("a")
    world.start()
    assert not world.clock.getDelayedCalls() or all(
        getattr(c.func, "__name__", "") != "_check_memory" for c in world.clock.getDelayedCalls())


@pytest.mark.parametrize("make", [ProcessMemory, FakeMemory])
def test_memory_reader_contract(make: type) -> None:
    """The fake and the real reader agree: bytes for a live process, None for one that is gone."""
    reader = make()
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    if isinstance(reader, FakeMemory):
        reader.rss_by_pid[os.getpid()] = 30 * MB
    live = reader.rss(os.getpid())
    assert isinstance(live, int) and live > MB
    assert reader.rss(child.pid) is None


def test_a_stuck_request_replaces_its_process_at_once() -> None:
    world = World()
    a = world.app("a", min_instances=1, max_request_time=5)
    world.start()
    [p1] = a.ready
    request(a)
    a.stuck(p1, 5)
    assert stopped(p1) and p1 not in a.processes
    a.release(p1)  # the front end gives the session back after answering 504
    assert p1.sessions == 0
    world.settle()
    assert len(a.ready) == 1 and a.ready[0] is not p1


# Sticky sessions.

def test_sticky_sessions_route_back_and_wait_for_a_busy_process() -> None:
    world = World()
    a = world.app("a", min_instances=2, concurrency=1, sticky_sessions=True)
    world.start()
    p1, p2 = a.ready
    assert p1.sticky_id and p2.sticky_id and p1.sticky_id != p2.sticky_id
    _, got = request(a, p2.sticky_id)
    assert got is p2, "p1 is less busy, but the cookie names p2"
    waiter, none = request(a, p2.sticky_id)
    assert none is None and waiter.waiting, "it waits for p2 while p1 is free"
    assert p1.sessions == 0
    _, free = request(a)
    assert free is p1
    a.release(p2)
    assert waiter.delivered == [p2]


def test_unknown_sticky_id_goes_to_the_least_busy_process() -> None:
    world = World()
    a = world.app("a", min_instances=2, concurrency=1, sticky_sessions=True)
    world.start()
    _, got = request(a, 12345)
    assert got is a.ready[0]


def test_sticky_waiters_of_a_process_that_dies_go_to_another() -> None:
    world = World()
    a = world.app("a", min_instances=2, concurrency=1, sticky_sessions=True)
    world.start()
    p1, p2 = a.ready
    request(a, p2.sticky_id)
    _, busy1 = request(a)
    assert busy1 is p1
    waiter, _ = request(a, p2.sticky_id)
    transport_of(p2).end(code=1)
    assert a.waiting == 1 and a.queued() == [waiter]
    a.release(p1)
    assert waiter.delivered == [p1]


# Crashes in every state leave consistent counts and lose no waiter.

def test_crash_while_spawning_keeps_the_queue() -> None:
    world = World()
    a = world.app("a", min_instances=0, concurrency=1)
    world.start()
    waiter, _ = request(a)
    [p1] = world.spawner.in_spawning
    transport_of(p1).end(code=1)
    # No process was ever ready: the waiter gets the spawn error (Passenger does the same).
    assert waiter.reports and a.processes == [] and a.spawning == []
    assert world.pool.size == 0


def test_crash_of_a_busy_process_with_queued_requests() -> None:
    world = World(max_pool_size=2)
    a = world.app("a", min_instances=2, concurrency=1)
    world.start()
    p1, _ = a.ready
    request(a)
    request(a)
    queued, _ = request(a)
    transport_of(p1).end(signal=9)
    assert p1.state == DEAD and p1 not in a.processes
    assert world.pool.size == 1 + len(a.spawning)
    a.release(p1)  # the front end gives back the session of the request that failed
    assert queued.waiting
    world.settle()
    assert queued.delivered and queued.delivered[0] is world.spawner.spawned[-1]
    assert world.pool.size == 2


def test_crash_of_a_draining_process() -> None:
    world = World()
    a = world.app("a", min_instances=1, concurrency=2, max_requests=1)
    world.start()
    [p1] = a.ready
    request(a)
    request(a)
    a.release(p1)
    assert p1.draining and p1 in a.leaving
    transport_of(p1).end(code=1)
    assert p1 not in a.leaving and p1.state == DEAD
    a.release(p1)
    assert p1.sessions == 0
    world.settle()
    assert len(a.ready) == 1 and a.ready[0] is not p1


def test_crash_of_an_idle_process_is_replaced_up_to_min_instances() -> None:
    world = World()
    a = world.app("a", min_instances=2)
    world.start()
    p1, _ = a.ready
    transport_of(p1).end(code=0)
    world.settle()
    assert len(a.ready) == 2 and p1 not in a.ready


def test_stop_rejects_every_waiter_including_sticky_ones() -> None:
    world = World(max_pool_size=1)
    a = world.app("a", min_instances=1, concurrency=1, sticky_sessions=True)
    world.start()
    [p1] = a.ready
    request(a)
    plain, _ = request(a)
    sticky, _ = request(a, p1.sticky_id)
    a.stop()
    assert plain.rejected[0][0] == 503 and sticky.rejected[0][0] == 503
    assert a.waiting == 0
    assert p1.state == STOPPING or p1.state == READY

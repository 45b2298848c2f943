"""Group: processes, the FIFO request queue, spawn decisions and backoff.

Everything runs on a Clock with FakeSpawner; a process becomes ready with
``process.listening()`` and exits with ``transport_of(process).end(...)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock

from passenger.pool.group import FIRST_BACKOFF, MAX_BACKOFF, Group
from passenger.pool.pool import Pool
from passenger.pool.process import AppProcess
from passenger.spawn.spawner import SpawnError
from tests.unit.fakes import (
    FakeSpawner,
    RecordingWaiter,
    assert_no_delayed_calls,
    delays,
    make_app,
    transport_of,
)


def make_group(max_pool_size: int = 6, **app: Any) -> tuple[Group, FakeSpawner, Clock]:
    """A group alone in a pool of ``max_pool_size``."""
    clock = Clock()
    spawner = FakeSpawner(clock)
    pool = Pool(spawner, clock, max_pool_size, jitter=lambda: 0.5)  # no jitter
    return pool.add(make_app(**app)), spawner, clock


def started(**app: Any) -> tuple[Group, FakeSpawner, Clock]:
    """A started group whose min_instances processes are all ready."""
    group, spawner, clock = make_group(**app)
    group.start()
    while group.spawning:
        group.spawning[0].listening()
    assert len(group.ready) == group.app.min_instances
    return group, spawner, clock


def checkout(group: Group, name: str = "") -> tuple[RecordingWaiter, AppProcess | None]:
    waiter = RecordingWaiter(name)
    return waiter, group.checkout(waiter)


# Spawning at start.

def test_start_spawns_min_instances_one_at_a_time() -> None:
    group, spawner, clock = make_group(min_instances=3, max_pool_size=6)
    assert spawner.spawned == []
    group.start()
    for i in range(3):
        assert len(spawner.spawned) == i + 1
        assert spawner.in_spawning == [spawner.spawned[i]], "spawns must be serial"
        assert group.spawning == [spawner.spawned[i]]
        spawner.spawned[i].listening()
    assert len(spawner.spawned) == 3
    assert not group.spawning
    assert group.ready == spawner.spawned == group.processes
    assert [number for number, _ in spawner.calls] == [1, 2, 3]
    # Each spawn is told the ports already in use.
    ports = [p.port for p in spawner.spawned]
    assert spawner.calls[2][1] == ports[:2]
    assert len(set(ports)) == 3
    assert_no_delayed_calls(clock)


def test_min_instances_zero_spawns_nothing_until_a_request() -> None:
    group, spawner, _ = make_group(min_instances=0)
    group.start()
    assert spawner.spawned == []
    waiter, process = checkout(group)
    assert process is None and waiter.waiting
    assert len(spawner.spawned) == 1
    spawner.spawned[0].listening()
    assert waiter.delivered == [spawner.spawned[0]]
    assert spawner.spawned[0].sessions == 1


# Checkout and release.

def test_checkout_returns_the_least_busy_ready_process_and_counts_a_session() -> None:
    group, spawner, _ = started(min_instances=2, concurrency=2)
    p1, p2 = spawner.spawned
    results = [checkout(group, str(i)) for i in range(4)]
    assert [process for _, process in results] == [p1, p2, p1, p2]
    assert (p1.sessions, p2.sessions) == (2, 2)
    assert all(w.waiting for w, _ in results), "a request served at once is not delivered/rejected"
    group.release(p2)
    assert p2.sessions == 1 and p2.processed == 1
    assert checkout(group)[1] is p2


def test_when_every_process_is_full_a_request_queues_and_a_spawn_starts() -> None:
    group, spawner, _ = started(min_instances=1, max_pool_size=2, concurrency=1)
    [p1] = spawner.spawned
    assert checkout(group, "a")[1] is p1

    b, process = checkout(group, "b")
    assert process is None and b.waiting
    assert group.queued() == [b]
    assert len(spawner.spawned) == 2
    p2 = spawner.spawned[1]
    assert group.spawning == [p2]

    p2.listening()
    assert b.delivered == [p2]
    assert p2.sessions == 1
    assert not group.queue

    # At max_pool_size: the next request waits, and nothing more is spawned.
    c, process = checkout(group, "c")
    assert process is None and c.waiting
    assert len(spawner.spawned) == 2
    assert not group.spawning


def test_release_dispatches_the_queue_head_first() -> None:
    group, spawner, _ = started(min_instances=1, max_pool_size=1, concurrency=1)
    [p1] = spawner.spawned
    assert checkout(group, "a")[1] is p1
    b, c, d = (checkout(group, name)[0] for name in "bcd")
    assert group.queued() == [b, c, d]
    assert len(spawner.spawned) == 1

    group.release(p1)
    assert b.delivered == [p1] and c.waiting and d.waiting
    assert p1.sessions == 1
    group.release(p1)
    assert c.delivered == [p1] and d.waiting
    group.release(p1)
    assert d.delivered == [p1]
    group.release(p1)
    assert p1.sessions == 0 and p1.processed == 4
    assert not group.queue
    assert [len(w.delivered) for w in (b, c, d)] == [1, 1, 1]


def test_a_full_queue_rejects_with_503_at_once() -> None:
    group, spawner, _ = started(max_pool_size=1, concurrency=1, max_request_queue_size=2)
    [p1] = spawner.spawned
    checkout(group, "a")
    b, c = checkout(group, "b")[0], checkout(group, "c")[0]
    d, process = checkout(group, "d")
    assert process is None
    assert [status for status, _, _ in d.rejected] == [503]
    assert d.delivered == []
    assert group.queued() == [b, c]
    group.release(p1)
    group.release(p1)
    assert b.delivered == [p1] and c.delivered == [p1] and d.delivered == []


def test_queue_size_zero_is_unbounded() -> None:
    group, _, _ = started(max_pool_size=1, concurrency=1, max_request_queue_size=0)
    checkout(group)
    waiters = [checkout(group)[0] for _ in range(500)]
    assert all(w.waiting for w in waiters)
    assert len(group.queue) == 500


def test_cancel_removes_a_waiter() -> None:
    group, spawner, _ = started(max_pool_size=1, concurrency=1)
    [p1] = spawner.spawned
    checkout(group, "a")
    b, c = checkout(group, "b")[0], checkout(group, "c")[0]
    group.cancel(b)
    assert group.queued() == [c]
    group.cancel(b)  # twice, or a waiter never queued: no error
    group.cancel(RecordingWaiter("stranger"))
    group.release(p1)
    assert c.delivered == [p1]
    assert b.delivered == [] and b.rejected == []


# Unknown concurrency.

def test_unknown_concurrency_grows_when_every_process_is_busy_up_to_max_pool_size() -> None:
    group, spawner, _ = started(min_instances=1, max_pool_size=3, concurrency=None)
    [p1] = spawner.spawned
    # One request on the only process, then another: every process is busy.
    assert checkout(group, "a")[1] is p1
    assert checkout(group, "b")[1] is p1, "unknown concurrency is never full: no queueing"
    assert len(spawner.spawned) == 2
    p2 = spawner.spawned[1]
    assert group.spawning == [p2]
    p2.listening()

    assert checkout(group, "c")[1] is p2  # least busy
    assert p1.sessions == 2 and p2.sessions == 1
    assert checkout(group, "d")[1] is p2  # every process busy again
    assert len(spawner.spawned) == 3
    p3 = spawner.spawned[2]
    p3.listening()

    for _ in range(20):
        waiter, process = checkout(group)
        assert process is not None and waiter.waiting
    assert len(spawner.spawned) == 3, "never past max_pool_size"
    assert not group.spawning
    assert not group.queue


def test_unknown_concurrency_spawns_once_every_process_has_a_request_in_flight() -> None:
    """The rule as stated: every process busy (below max_pool_size) -> the pool grows.

    Checked both ways a request can reach the only process: straight from
    checkout, and from the queue when the process becomes ready.
    """
    group, spawner, _ = started(min_instances=1, max_pool_size=3, concurrency=None)
    [p1] = spawner.spawned
    assert checkout(group, "a")[1] is p1
    assert p1.sessions == 1
    assert len(spawner.spawned) == 2, "checkout made every process busy, but no spawn started"

    group, spawner, _ = make_group(min_instances=0, max_pool_size=3, concurrency=None)
    group.start()
    a = checkout(group, "a")[0]
    spawner.spawned[0].listening()
    assert a.delivered == [spawner.spawned[0]]
    assert len(spawner.spawned) == 2, "dispatch made every process busy, but no spawn started"


def test_unknown_concurrency_does_not_grow_while_a_process_is_idle() -> None:
    group, spawner, _ = started(min_instances=2, max_pool_size=4, concurrency=None)
    p1, p2 = spawner.spawned
    assert checkout(group)[1] is p1
    assert p2.sessions == 0
    assert len(spawner.spawned) == 2
    assert not group.spawning


def test_a_draining_server_does_not_grow_but_spawns_for_requests_no_process_would_take() -> None:
    """While the server stops and lets its requests finish, they finish on the processes there are.

    A request that found every process busy made the group spawn during a graceful
    stop; the stop then caught that process between fork and exec (where its TERM
    was lost) and hung until the KILL.
    """
    group, spawner, _ = started(min_instances=1, max_pool_size=3, concurrency=None)
    [p1] = spawner.spawned
    group.pool.draining = True
    assert checkout(group, "a")[1] is p1
    assert len(spawner.spawned) == 1, "every process busy, yet no spawn: the request is served"

    group, spawner, _ = started(min_instances=1, max_pool_size=3, concurrency=1)
    [p1] = spawner.spawned
    group.pool.draining = True
    assert checkout(group, "a")[1] is p1
    b = checkout(group, "b")[0]
    assert b.waiting, "p1 is full: b waits for it"
    assert len(spawner.spawned) == 1, "no spawn: p1 will take b"
    group.release(p1)
    assert b.delivered == [p1]

    # No process left to take the request: it gets one, and only one.
    group, spawner, _ = make_group(min_instances=0, max_pool_size=3, concurrency=1)
    group.start()
    group.pool.draining = True
    a, b = checkout(group, "a")[0], checkout(group, "b")[0]
    assert a.waiting and b.waiting
    assert len(spawner.spawned) == 1
    spawner.spawned[0].listening()
    assert a.delivered == [spawner.spawned[0]]
    assert len(spawner.spawned) == 1, "b waits for the process there is"


# Exits and failures.

def test_a_ready_process_that_exits_is_removed_and_replaced_below_min_instances() -> None:
    group, spawner, _ = started(min_instances=2, max_pool_size=4)
    p1, p2 = spawner.spawned
    transport_of(p1).end(code=1)
    assert p1 not in group.processes and p1 not in group.ready
    assert len(spawner.spawned) == 3
    p3 = spawner.spawned[2]
    assert group.spawning == [p3]
    assert p1.port not in spawner.calls[2][1]
    p3.listening()
    assert group.ready == [p2, p3]


def test_a_ready_process_that_exits_above_min_instances_is_not_replaced() -> None:
    group, spawner, _ = started(min_instances=1, max_pool_size=2, concurrency=1)
    [p1] = spawner.spawned
    checkout(group, "a")
    b = checkout(group, "b")[0]
    p2 = spawner.spawned[1]
    p2.listening()
    assert b.delivered == [p2]
    group.release(p1)
    group.release(p2)

    transport_of(p2).end(signal=9)
    assert group.processes == group.ready == [p1]
    assert len(spawner.spawned) == 2
    assert not group.spawning


def test_a_failed_spawn_rejects_waiters_when_nothing_is_ready_and_backs_off() -> None:
    group, spawner, clock = make_group(min_instances=1, start_timeout=60.0)
    group.start()
    [p1] = spawner.spawned
    a, process = checkout(group, "a")
    assert process is None and a.waiting

    transport_of(p1).end(code=1)
    assert len(a.rejected) == 1
    status, _, detail = a.rejected[0]
    assert 500 <= status < 600
    assert "exited with status 1" in detail
    assert p1 not in group.processes and not group.spawning
    assert not group.queue

    # Backing off: nothing is spawned before the delay.
    assert delays(clock) == [pytest.approx(FIRST_BACKOFF)]
    clock.advance(FIRST_BACKOFF * 0.9)
    assert len(spawner.spawned) == 1
    # A request now, with nothing ready or spawning, is told at once.
    b, process = checkout(group, "b")
    assert process is None and [s for s, _, _ in b.rejected] == [500]
    assert len(spawner.spawned) == 1

    clock.advance(FIRST_BACKOFF * 0.1 + 1e-9)
    assert len(spawner.spawned) == 2
    assert group.spawning == [spawner.spawned[1]]


def test_backoff_doubles_up_to_the_maximum_and_resets_after_a_success() -> None:
    group, spawner, clock = make_group(min_instances=1)
    group.start()
    expected: list[float] = []
    delay = FIRST_BACKOFF
    while len(expected) < 8:
        expected.append(min(delay, MAX_BACKOFF))
        delay *= 2
    assert expected[-1] == MAX_BACKOFF
    seen = []
    for _ in expected:
        transport_of(group.spawning[0]).end(code=1)
        [backoff] = [d for d in delays(clock) if d <= MAX_BACKOFF]  # not the start timeout (90 s)
        seen.append(backoff)
        clock.advance(backoff + 1e-9)
    assert seen == pytest.approx(expected)
    assert len(spawner.spawned) == len(expected) + 1

    # A success resets it.
    assert group.spawning
    group.spawning[0].listening()
    assert group.failures == 0


def test_a_failed_spawn_keeps_waiters_queued_while_a_process_is_ready() -> None:
    group, spawner, clock = started(min_instances=1, max_pool_size=2, concurrency=1)
    [p1] = spawner.spawned
    checkout(group, "a")
    b = checkout(group, "b")[0]
    p2 = spawner.spawned[1]
    transport_of(p2).end(code=3)
    assert b.waiting and group.queued() == [b]
    assert delays(clock) == [pytest.approx(FIRST_BACKOFF)]
    group.release(p1)
    assert b.delivered == [p1]


def test_spawner_error_is_a_failed_spawn() -> None:
    group, spawner, clock = make_group(min_instances=1)
    spawner.fail_next(SpawnError("could not start /bin/sh in /srv/app: Resource temporarily unavailable"))
    group.start()
    assert spawner.spawned == [] and group.processes == []
    a, process = checkout(group, "a")
    assert process is None
    assert len(a.rejected) == 1 and a.rejected[0][0] == 500
    assert "Resource temporarily unavailable" in a.rejected[0][2]
    clock.advance(FIRST_BACKOFF)
    assert len(spawner.spawned) == 1


def test_failure_message_names_the_process_that_failed() -> None:
    """The 500 page says which process failed: its pid, as logged when it was spawned."""
    group, spawner, _ = make_group(min_instances=1)
    group.start()
    [p1] = spawner.spawned
    pid = transport_of(p1).original_pid
    a = checkout(group, "a")[0]
    transport_of(p1).end(code=1)
    detail = a.rejected[0][2]
    assert f"process {pid} " in detail, detail


def test_start_timeout_kills_the_process_and_it_leaves_once_reaped() -> None:
    group, spawner, clock = make_group(min_instances=1, start_timeout=10.0, shutdown_timeout=4.0)
    group.start()
    [p1] = spawner.spawned
    a = checkout(group, "a")[0]
    clock.advance(10.0)
    assert transport_of(p1).signals == ["KILL"]
    assert group.leaving == {p1} and p1 not in group.processes
    assert [s for s, _, _ in a.rejected] == [500]
    assert "start timeout" in a.rejected[0][2]
    transport_of(p1).end(signal=9)
    assert group.leaving == set()
    clock.advance(FIRST_BACKOFF)
    assert len(spawner.spawned) == 2


# Stopping.

def test_stop_stops_every_process_and_fires_after_all_have_exited() -> None:
    group, spawner, clock = make_group(min_instances=2, max_pool_size=2, concurrency=1, shutdown_timeout=5.0)
    group.start()
    p1 = spawner.spawned[0]
    p1.listening()
    p2 = spawner.spawned[1]  # still spawning
    checkout(group, "a")
    b = checkout(group, "b")[0]
    assert b.waiting

    d = group.stop()
    assert [s for s, _, _ in b.rejected] == [503]
    for p, signal in ((p1, "TERM"), (p2, "KILL")):  # a spawn given up is killed
        assert transport_of(p).stdin_closed
        assert transport_of(p).signals == [signal]
    assert not d.called

    transport_of(p1).end(code=0)
    assert not d.called
    clock.advance(5.0)
    assert transport_of(p2).signals == ["KILL", "KILL"]
    assert not d.called
    transport_of(p2).end(signal=9)
    assert d.called
    assert len(spawner.spawned) == 2, "nothing is spawned once stopping"
    assert_no_delayed_calls(clock)

    c, process = checkout(group, "c")
    assert process is None and [s for s, _, _ in c.rejected] == [503]


def test_stop_waits_for_a_process_killed_after_a_failed_start() -> None:
    group, spawner, clock = make_group(min_instances=1, start_timeout=10.0)
    group.start()
    [p1] = spawner.spawned
    clock.advance(10.0)
    assert group.leaving == {p1}
    d = group.stop()
    assert not d.called
    transport_of(p1).end(signal=9)
    assert d.called
    assert_no_delayed_calls(clock)


def test_stop_cancels_the_backoff() -> None:
    group, spawner, clock = make_group(min_instances=1)
    group.start()
    transport_of(spawner.spawned[0]).end(code=1)
    assert delays(clock) == [pytest.approx(FIRST_BACKOFF)]
    d = group.stop()
    assert d.called
    assert_no_delayed_calls(clock)
    clock.advance(60)
    assert len(spawner.spawned) == 1


def test_a_change_of_the_apps_files_ends_the_back_off(tmp_path: Path) -> None:
    """During back-off requests get the last error at once, until the app's files change."""
    root = tmp_path / "app"
    root.mkdir()
    group, spawner, _clock = make_group(min_instances=1, root=str(root))
    group.start()
    transport_of(spawner.spawned[0]).end(code=1)
    early = RecordingWaiter("early")
    assert group.checkout(early) is None
    assert early.rejected and early.reports[0] is group.last_failure
    assert len(spawner.spawned) == 1, "no spawn while backing off"

    (root / "app.py").write_text("fixed = True\n")  # a deploy
    late = RecordingWaiter("late")
    assert group.checkout(late) is None
    assert late.waiting, "after a change the request waits for a new spawn instead of failing"
    assert len(spawner.spawned) == 2
    assert group.failures == 0
    spawner.spawned[1].listening()
    assert late.delivered == [spawner.spawned[1]]

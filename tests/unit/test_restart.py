"""Restarts on a Clock: blocking and rolling, resisting deployment errors, draining, restart files."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from passenger.pool.group import FIRST_BACKOFF
from passenger.pool.process import DEAD, AppProcess
from passenger.pool.restart_files import STAT_INTERVAL, RestartFiles
from passenger.spawn.spawner import SpawnError
from tests.unit.fakes import RecordingWaiter, transport_of
from tests.unit.test_pool import World, request, stopped


class FakeFront:
    """The client side of a request on a process, as the group sees it through the process's connections."""

    def __init__(self, tunnel: bool = False) -> None:
        self.tunnel = tunnel
        self.cut: list[str] = []

    def cut_off(self, process: AppProcess, detail: str) -> None:
        self.cut.append(detail)


class FakeUpstream:
    def __init__(self, front: FakeFront) -> None:
        self.front = front
        self.transport = None


def on(process: AppProcess, front: FakeFront) -> FakeFront:
    process.connections.add(FakeUpstream(front))  # type: ignore[arg-type]
    return front


def exit_all(processes: list[AppProcess]) -> None:
    for process in processes:
        if stopped(process) and process.state != DEAD:
            transport_of(process).end(signal=15)


# Blocking restarts.

def test_blocking_restart_drains_the_old_and_queues_requests_until_a_new_one_is_ready() -> None:
    world = World()
    a = world.app("a", min_instances=2, concurrency=1)
    world.start()
    p1, p2 = a.ready
    _, busy = request(a)
    assert busy is p1
    done = a.restart()
    assert a.ready == [] and p1.draining and p2 in a.leaving
    assert stopped(p2) and not stopped(p1), "the idle one stops now; the busy one finishes first"
    waiter, none = request(a)
    assert none is None and waiter.waiting, "new requests wait for the new version"
    assert not done.called
    world.settle()
    assert done.called
    assert waiter.delivered and waiter.delivered[0] not in (p1, p2)
    assert waiter.delivered[0].generation == 1
    a.release(p1)
    assert stopped(p1)


def test_a_restart_ends_the_spawn_back_off() -> None:
    world = World()
    a = world.app("a", min_instances=1)
    world.spawner.fail_next(SpawnError("could not start /bin/sh: Resource temporarily unavailable"))
    world.start()
    assert a.last_failure is not None and a._backoff is not None
    failed, _ = request(a)
    assert failed.reports, "during the back-off a request gets the last error at once"
    a.restart()
    assert a.last_failure is None and a.failures == 0
    assert len(world.spawner.in_spawning) == 1, "spawned at once, not after the back-off"
    world.settle()
    _, served = request(a)
    assert served is not None


def test_a_spawn_of_the_old_version_is_discarded() -> None:
    world = World()
    a = world.app("a", min_instances=1)
    world.pool.start()
    [old] = world.spawner.in_spawning
    a.restart()
    assert stopped(old) and old not in a.processes
    [fresh] = world.spawner.in_spawning
    assert fresh.generation == 1


def test_restart_with_nothing_to_start_fires_at_once() -> None:
    world = World()
    a = world.app("a", min_instances=0)
    world.start()
    assert a.restart().called


# Rolling restarts.

def rolling_world(**settings: Any) -> tuple[World, Any, list[AppProcess]]:
    world = World()
    a = world.app("a", min_instances=3, rolling_restarts=True, **settings)
    world.start()
    return world, a, list(a.ready)


def test_rolling_restart_replaces_one_process_at_a_time_new_one_first() -> None:
    world, a, old = rolling_world()
    done = a.restart()
    for index, previous in enumerate(old):
        [fresh] = world.spawner.in_spawning
        assert not stopped(previous), "the old one serves until its replacement is ready"
        assert len([p for p in a.ready if p.generation == 0]) == 3 - index
        fresh.listening()
        assert stopped(previous) and previous not in a.ready
        transport_of(previous).end(signal=15)
    assert done.called
    assert [p.generation for p in a.ready] == [1, 1, 1]
    assert not a.rolling


def test_rolling_restart_sends_new_requests_to_the_new_generation_first() -> None:
    world, a, _ = rolling_world()
    a.restart()
    world.spawner.in_spawning[0].listening()
    fresh = [p for p in a.ready if p.generation == 1]
    assert len(fresh) == 1
    for _ in range(3):
        _, got = request(a)
        assert got is fresh[0], "unknown concurrency: the new one takes every request"


def test_rolling_restart_without_resist_goes_on_after_a_failed_spawn() -> None:
    world, a, old = rolling_world()
    a.restart()
    transport_of(world.spawner.in_spawning[0]).end(code=1)  # the new version dies at start
    assert stopped(old[0]), "without resist_deployment_errors the old one is replaced anyway"


def test_resist_deployment_errors_keeps_the_old_processes_and_stops_the_restart() -> None:
    world, a, old = rolling_world(resist_deployment_errors=True)
    done = a.restart()
    transport_of(world.spawner.in_spawning[0]).end(code=1)
    assert done.called and not a.rolling
    assert a.ready == old and not any(stopped(p) for p in old)
    assert a.restart_error is not None
    _, served = request(a)
    assert served in old
    # A fixed deploy and a new restart: it goes through.
    world.clock.advance(FIRST_BACKOFF * 2)
    a.restart()
    assert a.restart_error is None
    for previous in old:
        world.spawner.in_spawning[0].listening()
        transport_of(previous).end(signal=15)
    assert [p.generation for p in a.ready] == [2, 2, 2]


def test_a_restart_during_a_rolling_one_rolls_again_over_what_is_old() -> None:
    world, a, old = rolling_world()
    first = a.restart()
    second = a.restart()
    assert second is first
    world.spawner.in_spawning[0].listening()
    transport_of(old[0]).end(signal=15)
    while world.spawner.in_spawning:
        fresh = world.spawner.in_spawning[0]
        fresh.listening()
        exit_all(world.spawner.spawned)
    assert first.called
    assert {p.generation for p in a.ready} == {2}, "everything of generation 0 and 1 replaced"


# Draining and stopping.

def test_requests_past_the_drain_timeout_get_504_and_the_process_stops() -> None:
    world = World(drain_timeout=5)
    a = world.app("a", min_instances=1)
    world.start()
    [p1] = a.ready
    request(a)
    front = on(p1, FakeFront())
    a.restart()
    assert not stopped(p1) and front.cut == []
    world.clock.advance(5)
    assert front.cut and "before its process had to stop" in front.cut[0]
    assert stopped(p1)


def test_websockets_are_cut_when_their_process_drains_unless_asked_to_stay() -> None:
    for abort in (True, False):
        world = World(drain_timeout=5)
        a = world.app("a", min_instances=1, abort_websockets_on_process_shutdown=abort)
        world.start()
        [p1] = a.ready
        request(a)
        request(a)
        tunnel, plain = on(p1, FakeFront(tunnel=True)), on(p1, FakeFront())
        a.restart()
        assert bool(tunnel.cut) is abort
        assert plain.cut == [], "a plain request finishes on its own"


def test_the_stop_signal_is_configurable() -> None:
    world = World()
    a = world.app("a", min_instances=1, stop_signal="INT")
    world.start()
    [p1] = a.ready
    a.restart()
    signals = transport_of(p1).signals
    assert signals == ["INT"] and transport_of(p1).stdin_closed


# The restart files.

def files(world: World, root: Path) -> tuple[Any, RestartFiles]:
    a = world.app("a", root=str(root), min_instances=1)
    world.start()
    watcher = RestartFiles(a, world.clock)  # no reactor: polling only
    watcher.start()
    return a, watcher


def touch(path: Path, mtime_ns: int) -> None:
    path.touch()
    os.utime(path, ns=(mtime_ns, mtime_ns))


def test_restart_txt_restarts_once_per_change_of_its_mtime(tmp_path: Path) -> None:
    (tmp_path / "tmp").mkdir()
    restart_txt = tmp_path / "tmp" / "restart.txt"
    touch(restart_txt, 10**18)  # there before the server: no restart for it
    world = World()
    a, _ = files(world, tmp_path)
    world.clock.advance(STAT_INTERVAL)
    assert a.restarts == 0
    touch(restart_txt, 2 * 10**18)
    world.clock.advance(STAT_INTERVAL)
    assert a.restarts == 1
    world.clock.advance(STAT_INTERVAL * 5)
    assert a.restarts == 1, "once per change"
    restart_txt.unlink()
    world.clock.advance(STAT_INTERVAL)
    assert a.restarts == 1, "deleting it does not restart"
    touch(restart_txt, 2 * 10**18)
    world.clock.advance(STAT_INTERVAL)
    assert a.restarts == 2, "it appeared (again)"


def test_always_restart_txt_restarts_on_requests_at_most_once_a_second(tmp_path: Path) -> None:
    (tmp_path / "tmp").mkdir()
    world = World()
    a, _ = files(world, tmp_path)
    (tmp_path / "tmp" / "always_restart.txt").touch()
    world.clock.advance(STAT_INTERVAL)
    assert a.always_restart and a.restarts == 0, "on requests, not by itself"
    waiter = RecordingWaiter()
    a.checkout(waiter)
    assert a.restarts == 1
    a.checkout(RecordingWaiter())
    assert a.restarts == 1
    world.clock.advance(1.0)
    a.checkout(RecordingWaiter())
    assert a.restarts == 2
    (tmp_path / "tmp" / "always_restart.txt").unlink()
    world.clock.advance(STAT_INTERVAL)
    a.checkout(RecordingWaiter())
    assert a.restarts == 2


def test_restart_dir_setting(tmp_path: Path) -> None:
    elsewhere = tmp_path / "signals"
    elsewhere.mkdir()
    world = World()
    a = world.app("a", root=str(tmp_path), restart_dir=str(elsewhere))
    world.start()
    watcher = RestartFiles(a, world.clock)
    watcher.start()
    (elsewhere / "restart.txt").touch()
    world.clock.advance(STAT_INTERVAL)
    assert a.restarts == 1
    watcher.stop()


def test_stopping_the_group_ends_a_rolling_restart() -> None:
    world, a, _old = rolling_world()
    done = a.restart()
    a.stop()
    exit_all(world.spawner.spawned)
    assert done.called and not a.rolling

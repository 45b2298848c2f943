"""A verified fake: the same assertions against FakeSpawner and the real Spawner.

The real Spawner runs on FakeProcessReactor (no process is forked, no socket
opened); readiness comes through its real PortProbe.  If the fake and the
real Spawner ever disagree on what a fresh process looks like, when its start
timeout fires or how an exit is reported, one of these tests fails for one
of the two.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Any

import pytest
from twisted.internet.interfaces import IProcessTransport
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from passenger.config import AppConfig
from passenger.pool.process import AppProcess
from passenger.spawn.spawner import Spawner, SpawnError
from tests.unit.fakes import (
    FakePortAllocator,
    FakeProcessReactor,
    FakeSpawner,
    RecordingObserver,
    assert_no_delayed_calls,
    delays,
    make_app,
    transport_of,
)


class Harness:
    """How a test drives one implementation."""

    clock: Clock
    ports: FakePortAllocator
    spawner: Any
    make_listening: Callable[[AppProcess], None]
    make_next_spawn_fail: Callable[[], None]


class FakeHarness(Harness):
    def __init__(self) -> None:
        self.clock = Clock()
        self.ports = FakePortAllocator()
        self.spawner = FakeSpawner(self.clock, self.ports)

    def make_listening(self, process: AppProcess) -> None:
        process.listening()

    def make_next_spawn_fail(self) -> None:
        self.spawner.fail_next(SpawnError("could not start /bin/sh in /srv/app: Resource temporarily unavailable"))


class RealHarness(Harness):
    def __init__(self) -> None:
        self.reactor = self.clock = FakeProcessReactor()
        self.ports = FakePortAllocator()
        self.spawner = Spawner(self.reactor, self.ports)  # type: ignore[arg-type]

    def make_listening(self, process: AppProcess) -> None:
        self.reactor.connect_probe(process.port)

    def make_next_spawn_fail(self) -> None:
        self.reactor.spawn_error = OSError(errno.EAGAIN, "Resource temporarily unavailable")


@pytest.fixture(params=[FakeHarness, RealHarness], ids=["FakeSpawner", "Spawner"])
def harness(request: pytest.FixtureRequest) -> Harness:
    return request.param()


APP: AppConfig = make_app(concurrency=4, start_timeout=12.0, shutdown_timeout=3.0)


def test_spawn_returns_a_spawning_process_with_a_free_port(harness: Harness) -> None:
    observer = RecordingObserver()
    process = harness.spawner.spawn(APP, 7, observer, [20000, 20001])

    assert isinstance(process, AppProcess)
    assert process.state == "spawning"
    assert isinstance(process.port, int) and 1024 < process.port <= 65535
    assert process.port not in (20000, 20001)
    assert harness.ports.requests == [{20000, 20001}]
    assert process.number == 7
    assert process.app == APP.name
    assert process.concurrency == 4
    assert process.shutdown_timeout == 3.0
    assert process.observer is observer
    assert process.clock is harness.clock
    assert process.sessions == 0
    transport = transport_of(process)
    assert verifyObject(IProcessTransport, transport)
    assert isinstance(process.pid, int)
    assert transport.signals == [] and not transport.stdin_closed
    assert observer.events == []


def test_spawn_arms_the_start_timeout(harness: Harness) -> None:
    observer = RecordingObserver()
    process = harness.spawner.spawn(APP, 1, observer)
    # (The real spawner also looks for a wrong port every fraction of a second.)
    assert [d for d in delays(harness.clock) if d >= 1] == [pytest.approx(12.0)]

    harness.clock.advance(11.9)
    assert observer.events == []
    assert transport_of(process).signals == []

    harness.clock.advance(0.1)
    assert observer.events == [("failed", process, "did not start listening within the start timeout; killed")]
    assert transport_of(process).signals == ["KILL"]
    assert process.state == "stopping"
    # Only the KILL retry remains; it goes once the process is reaped.
    assert delays(harness.clock) == [pytest.approx(3.0)]
    transport_of(process).end(signal=9)
    assert process.state == "dead"
    assert len(observer.events) == 1
    assert_no_delayed_calls(harness.clock)


def test_listening_makes_it_ready_and_disarms_the_timeout(harness: Harness) -> None:
    observer = RecordingObserver()
    process = harness.spawner.spawn(APP, 1, observer)
    harness.make_listening(process)
    assert process.state == "ready"
    assert observer.events == [("ready", process, None)]
    assert_no_delayed_calls(harness.clock)


@pytest.mark.parametrize(
    ("code", "signal", "description"),
    [(3, None, "exited with status 3"), (0, None, "exited with status 0"), (None, 9, "killed by signal 9")],
)
def test_exit_before_ready_is_reported_as_a_failed_spawn(harness: Harness, code: int | None, signal: int | None,
                                                          description: str) -> None:
    observer = RecordingObserver()
    process = harness.spawner.spawn(APP, 1, observer)
    transport_of(process).end(code=code, signal=signal)
    assert observer.events == [("failed", process, "exited before it was ready: " + description)]
    assert process.state == "dead"
    assert process.exit_reason == description
    assert_no_delayed_calls(harness.clock)


@pytest.mark.parametrize(("code", "signal", "description"), [(1, None, "exited with status 1"),
                                                             (None, 15, "killed by signal 15")])
def test_exit_after_ready_is_reported_as_an_exit(harness: Harness, code: int | None, signal: int | None,
                                                  description: str) -> None:
    observer = RecordingObserver()
    process = harness.spawner.spawn(APP, 1, observer)
    harness.make_listening(process)
    transport_of(process).end(code=code, signal=signal)
    assert observer.events == [("ready", process, None), ("exited", process, description)]
    assert process.state == "dead"
    assert_no_delayed_calls(harness.clock)


def test_pid_outlives_the_transport(harness: Harness) -> None:
    """Both transports forget the pid at the exit, as Twisted's does; the process keeps it for the logs."""
    process = harness.spawner.spawn(APP, 1, RecordingObserver())
    pid = process.pid
    assert isinstance(pid, int)
    transport_of(process).end(code=1)
    assert transport_of(process).pid is None
    assert process.pid == pid


def test_a_failed_start_raises_spawn_error(harness: Harness) -> None:
    harness.make_next_spawn_fail()
    with pytest.raises(SpawnError, match="Resource temporarily unavailable"):
        harness.spawner.spawn(APP, 1, RecordingObserver())
    assert_no_delayed_calls(harness.clock)
    # The next spawn works again.
    process = harness.spawner.spawn(APP, 2, RecordingObserver())
    assert process.state == "spawning"

"""The real Spawner on FakeProcessReactor: what it asks the OS for, and its probe."""

from __future__ import annotations

import errno
import os

import pytest
from twisted.internet.error import ConnectionRefusedError
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure

from passenger.spawn import ports as ports_module
from passenger.spawn.journey import shell_prologue
from passenger.spawn.ports import NoFreePort, PortAllocator
from passenger.spawn.spawner import WRONG_PORT_FIRST_CHECK, Spawner, SpawnError
from tests.unit.fakes import (
    FakePortAllocator,
    FakeProcessReactor,
    RecordingObserver,
    assert_no_delayed_calls,
    delays,
    make_app,
)


def make() -> tuple[FakeProcessReactor, Spawner]:
    reactor = FakeProcessReactor()
    return reactor, Spawner(reactor, FakePortAllocator(first=23000))  # type: ignore[arg-type]


def refuse_latest(reactor: FakeProcessReactor) -> None:
    _host, _port, factory, _timeout, _bind = reactor.tcpClients[-1]
    factory.clientConnectionFailed(reactor.connectors[-1], Failure(ConnectionRefusedError()))


def test_runs_the_command_through_sh_exec_in_the_app_root_with_its_environment() -> None:
    reactor, spawner = make()
    root = os.environ["TMPDIR"]
    app = make_app(root=root, start_command="node server.js", environment="staging", envvars={"FOO": "bar"})
    process = spawner.spawn(app, 1, RecordingObserver())

    [call] = reactor.spawned
    assert call.executable == "/bin/sh"
    assert call.args == ["/bin/sh", "-c", shell_prologue() + "exec node server.js"]
    assert call.path == root
    assert call.child_fds == {0: "w", 1: "r", 2: "r"}
    assert call.env["PORT"] == str(process.port) == "23000"
    assert call.env["FOO"] == "bar"
    assert call.env["IN_PASSENGER"] == "1"
    for name in ("PASSENGER_APP_ENV", "RAILS_ENV", "RACK_ENV", "WSGI_ENV", "NODE_ENV"):
        assert call.env[name] == "staging"
    assert process.transport is call.transport
    assert call.protocol.transport is call.transport


def test_probe_connects_at_once_to_the_process_port_on_loopback() -> None:
    reactor, spawner = make()
    process = spawner.spawn(make_app(), 1, RecordingObserver())
    assert [(host, port) for host, port, *_ in reactor.tcpClients] == [("127.0.0.1", process.port)]


def test_exit_stops_a_probe_waiting_to_retry() -> None:
    reactor, spawner = make()
    observer = RecordingObserver()
    process = spawner.spawn(make_app(start_timeout=30.0), 1, observer)
    refuse_latest(reactor)
    assert delays(reactor) == [pytest.approx(0.001), pytest.approx(WRONG_PORT_FIRST_CHECK), pytest.approx(30.0)]
    reactor.spawned[0].transport.end(code=2)
    assert_no_delayed_calls(reactor)
    reactor.advance(1)
    assert len(reactor.tcpClients) == 1
    assert observer.events == [("failed", process, "exited before it was ready: exited with status 2")]


def test_a_process_ends_even_when_its_failure_report_cannot_be_made(monkeypatch: pytest.MonkeyPatch) -> None:
    """Its stop waits for it to be dead: an error while reporting must not leave it short of that."""
    from passenger.spawn import spawner as spawner_module

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EIO, "the work directory cannot be read")

    monkeypatch.setattr(spawner_module.Handshake, "_report", broken)
    reactor, spawner = make()
    process = spawner.spawn(make_app(), 1, RecordingObserver())
    logged: list[dict[str, object]] = []
    globalLogPublisher.addObserver(logged.append)
    try:
        reactor.spawned[0].transport.end(code=2)
    finally:
        globalLogPublisher.removeObserver(logged.append)
    assert process.state == "dead"
    assert any("Could not report the end of process" in str(e.get("log_format")) for e in logged)


def test_start_timeout_stops_the_probe() -> None:
    reactor, spawner = make()
    process = spawner.spawn(make_app(start_timeout=5.0, shutdown_timeout=2.0), 1, RecordingObserver())
    refuse_latest(reactor)
    reactor.advance(0.001)
    assert len(reactor.tcpClients) == 2
    reactor.advance(5.0)
    assert process.state == "stopping"
    attempts = len(reactor.tcpClients)
    assert reactor.connectors[-1]._disconnected
    refuse_latest(reactor)  # the connector's failure after disconnect()
    reactor.advance(1.0)
    assert len(reactor.tcpClients) == attempts
    # Only the KILL timer is left, and reaping the process removes it.
    assert delays(reactor) == [pytest.approx(1.0)]
    reactor.spawned[0].transport.end(signal=9)
    assert_no_delayed_calls(reactor)


def test_output_lines_are_kept_for_the_error_report() -> None:
    reactor, spawner = make()
    process = spawner.spawn(make_app(), 1, RecordingObserver())
    protocol = reactor.spawned[0].protocol
    protocol.childDataReceived(1, b"booting\nlistening on ")
    protocol.childDataReceived(2, b"warning: x\r\n")
    reactor.spawned[0].transport.end(code=1)
    assert process.log_tail() == ["[stdout] booting", "[stderr] warning: x", "[stdout] listening on "]


def test_os_refusal_becomes_a_spawn_error_naming_the_root() -> None:
    reactor, spawner = make()
    reactor.spawn_error = OSError(errno.EAGAIN, "Resource temporarily unavailable")
    with pytest.raises(SpawnError) as info:
        spawner.spawn(make_app(), 1, RecordingObserver())
    assert f"could not start /bin/sh in {os.environ['TMPDIR']}: Resource temporarily unavailable" in str(info.value)
    assert reactor.tcpClients == []


def test_port_allocator_is_round_robin_and_skips_taken_and_unbindable(monkeypatch: pytest.MonkeyPatch) -> None:
    unbindable = {10003}
    monkeypatch.setattr(ports_module, "_bindable", lambda port: port not in unbindable)
    allocator = PortAllocator(10000, 10004)
    allocator._next = 10000
    assert allocator.allocate() == 10000
    assert allocator.allocate({10001}) == 10002
    assert allocator.allocate() == 10004  # 10003 cannot be bound
    assert allocator.allocate() == 10000  # wraps around
    with pytest.raises(NoFreePort):
        allocator.allocate({10000, 10001, 10002, 10004})

"""AppProcess's lifecycle: spawning -> ready -> stopping -> dead, on a Clock."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from passenger.pool.process import AppProcess, describe_exit
from tests.unit.fakes import (
    FakeProcessTransport,
    RecordingObserver,
    assert_no_delayed_calls,
    delays,
    exit_failure,
)

START_TIMEOUT = 10.0
SHUTDOWN_TIMEOUT = 4.0


def spawned() -> tuple[AppProcess, FakeProcessTransport, RecordingObserver, Clock]:
    """A process as the spawner leaves it: spawning, with its start timeout armed."""
    clock, observer = Clock(), RecordingObserver()
    process = AppProcess(app="app", number=1, port=20001, concurrency=None, clock=clock, observer=observer,
                         shutdown_timeout=SHUTDOWN_TIMEOUT)
    transport = FakeProcessTransport(on_end=process.exited)
    process.transport = transport
    process.arm(START_TIMEOUT, process.start_timed_out)
    return process, transport, observer, clock


def ready() -> tuple[AppProcess, FakeProcessTransport, RecordingObserver, Clock]:
    process, transport, observer, clock = spawned()
    process.listening()
    observer.events.clear()
    return process, transport, observer, clock


def test_listening_makes_it_ready_and_cancels_the_start_timer() -> None:
    process, transport, observer, clock = spawned()
    assert process.state == "spawning"
    assert process.ready_at is None
    process.listening()
    assert process.state == "ready"
    assert process.ready_at is not None
    assert observer.events == [("ready", process, None)]
    assert_no_delayed_calls(clock)
    clock.advance(START_TIMEOUT * 2)
    assert transport.signals == []
    # A late second "listening" changes nothing.
    process.listening()
    assert observer.events == [("ready", process, None)]


def test_start_timeout_sends_kill_and_reports_a_failed_spawn() -> None:
    process, transport, observer, clock = spawned()
    clock.advance(START_TIMEOUT - 0.01)
    assert transport.signals == [] and observer.events == []
    clock.advance(0.01)
    assert transport.signals == ["KILL"]
    assert process.state == "stopping"
    assert observer.events == [("failed", process, "did not start listening within the start timeout; killed")]
    # Too late to become ready.
    process.listening()
    assert process.state == "stopping"
    assert len(observer.events) == 1
    # KILL again if it is still around after the shutdown timeout.
    clock.advance(SHUTDOWN_TIMEOUT)
    assert transport.signals == ["KILL", "KILL"]
    transport.end(signal=9)
    assert process.state == "dead"
    assert len(observer.events) == 1, "a failed spawn is reported once"
    assert_no_delayed_calls(clock)


@pytest.mark.parametrize(("code", "signal", "description"),
                         [(2, None, "exited with status 2"), (0, None, "exited with status 0"),
                          (None, 11, "killed by signal 11")])
def test_exit_while_spawning_reports_a_failed_spawn_with_the_exit_status(code: int | None, signal: int | None,
                                                                         description: str) -> None:
    process, transport, observer, clock = spawned()
    transport.end(code=code, signal=signal)
    assert process.state == "dead"
    assert process.exit_reason == description
    assert observer.events == [("failed", process, "exited before it was ready: " + description)]
    assert_no_delayed_calls(clock)
    assert transport.signals == []


def test_exit_while_ready_reports_an_exit() -> None:
    process, transport, observer, clock = ready()
    transport.end(code=137)
    assert process.state == "dead"
    assert observer.events == [("exited", process, "exited with status 137")]
    assert_no_delayed_calls(clock)


class FakeConnection:
    def __init__(self) -> None:
        self.gone = 0

    def process_gone(self) -> None:
        self.gone += 1


def test_exit_tells_every_connection_and_drops_idle_ones() -> None:
    process, transport, _, _ = ready()
    busy, idle = FakeConnection(), FakeConnection()
    process.connections.update({busy, idle})  # type: ignore[arg-type]
    process.idle.append(idle)  # type: ignore[arg-type]
    transport.end(code=1)
    assert (busy.gone, idle.gone) == (1, 1)
    assert process.idle == []


@pytest.mark.parametrize(("make", "first"), [(spawned, "KILL"), (ready, "TERM")], ids=["spawning", "ready"])
def test_stop_closes_stdin_sends_term_then_kill_and_fires_on_exit(make: object, first: str) -> None:
    """A process still spawning gets KILL at once: its stop signal could be lost (between fork and exec the
    child still has the server's signal handlers; tests/integration/test_stop_while_spawning.py)."""
    process, transport, observer, clock = make()  # type: ignore[operator]
    d = process.stop()
    assert process.state == "stopping"
    assert transport.stdin_closed
    assert transport.signals == [first]
    assert delays(clock) == [pytest.approx(SHUTDOWN_TIMEOUT)], "the start timer is replaced by the KILL timer"
    assert not d.called

    clock.advance(SHUTDOWN_TIMEOUT - 0.01)
    assert transport.signals == [first]
    clock.advance(0.01)
    assert transport.signals == [first, "KILL"]
    assert not d.called
    clock.advance(SHUTDOWN_TIMEOUT * 10)
    assert not d.called

    transport.end(signal=9)
    assert d.called
    assert d.result is None
    assert process.state == "dead"
    assert process.exit_reason == "killed by signal 9"
    assert observer.events == [], "a stop the group asked for is not reported back"
    assert_no_delayed_calls(clock)


def test_stop_that_term_is_enough_for_fires_without_kill() -> None:
    process, transport, _, clock = ready()
    d = process.stop()
    transport.end(code=0)
    assert d.called
    assert transport.signals == ["TERM"]
    assert_no_delayed_calls(clock)
    clock.advance(SHUTDOWN_TIMEOUT * 2)
    assert transport.signals == ["TERM"]


def test_stop_twice_signals_once_and_both_fire_on_exit() -> None:
    process, transport, _, _ = ready()
    first, second = process.stop(), process.stop()
    assert transport.signals == ["TERM"]
    assert transport.closed_fds == [0]
    assert not first.called and not second.called
    transport.end(code=0)
    assert first.called and second.called


def test_stop_after_a_start_timeout_waits_for_the_exit() -> None:
    process, transport, _, clock = spawned()
    clock.advance(START_TIMEOUT)
    d = process.stop()
    assert not d.called
    assert transport.signals == ["KILL"]
    transport.end(signal=9)
    assert d.called


@pytest.mark.parametrize("make", [spawned, ready], ids=["died-spawning", "died-ready"])
def test_stop_on_a_dead_process_fires_at_once(make: object) -> None:
    process, transport, _, clock = make()  # type: ignore[operator]
    transport.end(code=1)
    d = process.stop()
    assert d.called and d.result is None
    assert transport.signals == []
    assert not transport.stdin_closed
    assert_no_delayed_calls(clock)


def test_signalling_a_process_that_is_already_gone_is_harmless() -> None:
    process, transport, _, _ = ready()
    transport.ended = True  # reaped, but the exit has not been delivered yet
    d = process.stop()
    assert transport.signals == []
    assert not d.called


@pytest.mark.parametrize(
    ("reason", "text"),
    [(exit_failure(0), "exited with status 0"), (exit_failure(3), "exited with status 3"),
     (exit_failure(None, 15), "killed by signal 15")],
)
def test_describe_exit(reason: Failure, text: str) -> None:
    assert describe_exit(reason) == text

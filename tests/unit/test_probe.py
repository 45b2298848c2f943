"""PortProbe on MemoryReactorClock: immediate first try, 1 ms -> 2 ms backoff, ready once."""

from __future__ import annotations

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from passenger.spawn.probe import CONNECT_TIMEOUT, PortProbe
from tests.unit.fakes import assert_no_delayed_calls, delays

PORT = 24680


def make() -> tuple[MemoryReactorClock, PortProbe, list[int]]:
    reactor = MemoryReactorClock()
    calls: list[int] = []
    probe = PortProbe(reactor, reactor, PORT, lambda: calls.append(1))
    return reactor, probe, calls


def refuse(reactor: MemoryReactorClock, probe: PortProbe) -> None:
    probe.clientConnectionFailed(reactor.connectors[-1], Failure(ConnectionRefusedError()))


def accept(probe: PortProbe) -> object:
    return probe.buildProtocol(IPv4Address("TCP", "127.0.0.1", PORT))


def test_first_attempt_is_immediate() -> None:
    reactor, probe, calls = make()
    assert reactor.tcpClients == []
    probe.start()
    assert len(reactor.tcpClients) == 1
    host, port, factory, timeout, _ = reactor.tcpClients[0]
    assert (host, port, factory) == ("127.0.0.1", PORT, probe)
    assert timeout == CONNECT_TIMEOUT
    assert probe.attempts == 1
    assert calls == []
    assert_no_delayed_calls(reactor)


def test_retries_back_off_from_1ms_to_at_most_10ms() -> None:
    reactor, probe, calls = make()
    probe.start()
    expected = [0.001, 0.002, 0.002, 0.002, 0.002, 0.002, 0.002, 0.002]
    for attempt, delay in enumerate(expected, 1):
        assert len(reactor.tcpClients) == attempt
        refuse(reactor, probe)
        assert delays(reactor) == [pytest.approx(delay)]
        reactor.advance(delay / 2)
        assert len(reactor.tcpClients) == attempt, "retried before its delay"
        reactor.advance(delay)
        assert len(reactor.tcpClients) == attempt + 1
        assert_no_delayed_calls(reactor)
    assert probe.attempts == len(expected) + 1
    assert calls == []


def test_on_ready_is_called_once() -> None:
    reactor, probe, calls = make()
    probe.start()
    refuse(reactor, probe)
    reactor.advance(0.001)
    protocol = accept(probe)
    assert calls == [1]
    assert probe.stopped
    # A duplicate connection, or a late failure, changes nothing.
    accept(probe)
    refuse(reactor, probe)
    assert calls == [1]
    assert_no_delayed_calls(reactor)
    reactor.advance(1)
    assert len(reactor.tcpClients) == 2

    # The probe's connection hangs up at once.
    transport = StringTransport()
    protocol.makeConnection(transport)  # type: ignore[attr-defined]
    assert transport.disconnecting


def test_stop_cancels_a_pending_retry() -> None:
    reactor, probe, calls = make()
    probe.start()
    refuse(reactor, probe)
    assert len(reactor.getDelayedCalls()) == 1
    probe.stop()
    assert_no_delayed_calls(reactor)
    reactor.advance(1)
    assert len(reactor.tcpClients) == 1
    assert calls == []


def test_stop_abandons_a_connection_attempt_in_progress() -> None:
    reactor, probe, calls = make()
    probe.start()
    probe.stop()
    assert reactor.connectors[-1]._disconnected
    # What the reactor reports afterwards is ignored.
    accept(probe)
    refuse(reactor, probe)
    assert calls == []
    assert_no_delayed_calls(reactor)

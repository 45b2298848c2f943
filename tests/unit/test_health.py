"""HealthMonitor on a Clock with a scripted check, and check_http on MemoryReactorClock."""

from __future__ import annotations

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.error import ConnectionDone, ConnectionRefusedError, DNSLookupError, TimeoutError
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from passenger.spawn.health import HealthMonitor, HealthResult, check_http
from tests.unit.fakes import assert_no_delayed_calls, delays

OK = HealthResult(True, 200, "answered 200")
BAD = HealthResult(False, 503, "answered 503")
REQUEST = (b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
           b"User-Agent: passenger-health-check\r\n\r\n")


def outcome(d: Deferred[HealthResult]) -> HealthResult | Failure | None:
    """What ``d`` fired with so far (None if it has not fired); the result stays in ``d``."""
    seen: list[HealthResult | Failure] = []

    def record(result: HealthResult | Failure) -> HealthResult | Failure:
        seen.append(result)
        return result

    d.addBoth(record)
    return seen[0] if seen else None


# HealthMonitor


class ScriptedCheck:
    """A check whose Deferreds the test fires by hand."""

    def __init__(self) -> None:
        self.pending: list[Deferred[HealthResult]] = []
        self.cancelled = 0

    def __call__(self) -> Deferred[HealthResult]:
        d: Deferred[HealthResult] = Deferred(lambda _: self._cancelled())
        self.pending.append(d)
        return d

    def _cancelled(self) -> None:
        self.cancelled += 1

    @property
    def calls(self) -> int:
        return len(self.pending)

    def answer(self, result: HealthResult) -> None:
        self.pending[-1].callback(result)


def make_monitor(failures_allowed: int = 3, interval: float = 5.0
                 ) -> tuple[Clock, ScriptedCheck, HealthMonitor, list[HealthResult]]:
    clock = Clock()
    check = ScriptedCheck()
    unhealthy: list[HealthResult] = []
    monitor = HealthMonitor(clock, check, interval, failures_allowed, unhealthy.append)
    return clock, check, monitor, unhealthy


def test_first_check_runs_one_interval_after_start() -> None:
    clock, check, monitor, _ = make_monitor(interval=5.0)
    assert_no_delayed_calls(clock)
    monitor.start()
    assert delays(clock) == [5.0]
    clock.advance(4.9)
    assert check.calls == 0
    clock.advance(0.1)
    assert check.calls == 1


def test_next_check_is_scheduled_an_interval_after_the_previous_one_finished() -> None:
    clock, check, monitor, _ = make_monitor(interval=5.0)
    monitor.start()
    clock.advance(5)
    clock.advance(2)  # the check takes 2 s
    check.answer(OK)
    assert delays(clock) == [5.0]
    clock.advance(5)
    assert check.calls == 2


def test_no_second_check_while_one_is_pending() -> None:
    clock, check, monitor, unhealthy = make_monitor(interval=1.0)
    monitor.start()
    clock.advance(1)
    assert check.calls == 1
    clock.pump([1.0] * 20)
    assert check.calls == 1
    assert clock.getDelayedCalls() == []
    check.answer(BAD)
    clock.advance(1)
    assert check.calls == 2
    assert unhealthy == []


def test_unhealthy_after_consecutive_failures_once_then_stopped() -> None:
    clock, check, monitor, unhealthy = make_monitor(failures_allowed=3, interval=1.0)
    monitor.start()
    for expected_failures in (1, 2):
        clock.advance(1)
        check.answer(BAD)
        assert monitor.failures == expected_failures
        assert unhealthy == []
    clock.advance(1)
    last = HealthResult(False, None, "timed out after 2.0s")
    check.answer(last)
    assert unhealthy == [last]
    assert monitor.running is False
    assert_no_delayed_calls(clock)
    clock.pump([1.0] * 10)
    assert check.calls == 3
    assert unhealthy == [last]


def test_success_resets_the_count() -> None:
    clock, check, monitor, unhealthy = make_monitor(failures_allowed=2, interval=1.0)
    monitor.start()
    for result in (BAD, OK, BAD, OK, BAD):
        clock.advance(1)
        check.answer(result)
    assert monitor.failures == 1
    assert unhealthy == []
    assert monitor.last_result == BAD
    clock.advance(1)
    check.answer(BAD)
    assert unhealthy == [BAD]


def test_single_failure_allowed() -> None:
    clock, check, monitor, unhealthy = make_monitor(failures_allowed=1, interval=1.0)
    monitor.start()
    clock.advance(1)
    check.answer(OK)
    clock.advance(1)
    check.answer(BAD)
    assert unhealthy == [BAD]


def test_stop_cancels_the_next_check() -> None:
    clock, check, monitor, _ = make_monitor()
    monitor.start()
    assert len(clock.getDelayedCalls()) == 1
    monitor.stop()
    assert_no_delayed_calls(clock)
    clock.advance(100)
    assert check.calls == 0
    monitor.stop()  # idempotent


def test_stop_cancels_a_pending_check_and_ignores_it() -> None:
    clock, check, monitor, unhealthy = make_monitor(failures_allowed=1, interval=1.0)
    monitor.start()
    clock.advance(1)
    monitor.stop()
    assert check.cancelled == 1
    assert check.pending[0].called
    assert outcome(check.pending[0]) is None, "the CancelledError should have been consumed, not left unhandled"
    assert unhealthy == []
    assert_no_delayed_calls(clock)


def test_restart_after_stop_starts_counting_afresh() -> None:
    clock, check, monitor, unhealthy = make_monitor(failures_allowed=2, interval=1.0)
    monitor.start()
    clock.advance(1)
    check.answer(BAD)
    monitor.stop()
    monitor.start()
    assert monitor.failures == 0
    clock.advance(1)
    check.answer(BAD)
    assert unhealthy == []
    clock.advance(1)
    check.answer(BAD)
    assert unhealthy == [BAD]


def test_start_twice_does_not_double_the_schedule() -> None:
    clock, _, monitor, _ = make_monitor()
    monitor.start()
    monitor.start()
    assert len(clock.getDelayedCalls()) == 1


def test_checks_that_fire_synchronously_are_handled() -> None:
    clock = Clock()
    results = iter([OK, BAD, BAD])
    unhealthy: list[HealthResult] = []
    monitor = HealthMonitor(clock, lambda: succeed(next(results)), 1.0, 2, unhealthy.append)
    monitor.start()
    clock.pump([1.0] * 5)
    assert unhealthy == [BAD]
    assert_no_delayed_calls(clock)


def test_a_check_that_raises_or_errbacks_counts_as_a_failure() -> None:
    clock = Clock()
    attempts: list[int] = []

    def broken() -> Deferred[HealthResult]:
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("boom")
        return fail(ValueError("bad"))

    unhealthy: list[HealthResult] = []
    monitor = HealthMonitor(clock, broken, 1.0, 2, unhealthy.append)
    monitor.start()
    clock.pump([1.0] * 5)
    assert len(attempts) == 2
    assert [(r.ok, r.status) for r in unhealthy] == [(False, None)]
    assert "ValueError" in unhealthy[0].detail and "bad" in unhealthy[0].detail


@pytest.mark.parametrize(("interval", "failures_allowed"), [(0, 1), (-1, 1), (1, 0)])
def test_rejects_nonsense_settings(interval: float, failures_allowed: int) -> None:
    with pytest.raises(ValueError):
        HealthMonitor(Clock(), ScriptedCheck(), interval, failures_allowed, lambda _: None)


# check_http


def start_check(path: str = "/health", timeout: float = 2.0, **kw: str
                ) -> tuple[MemoryReactorClock, Deferred[HealthResult], ClientFactory]:
    reactor = MemoryReactorClock()
    d = check_http(reactor, "127.0.0.1", 8080, path, timeout, **kw)
    host, port, factory, connect_timeout, _ = reactor.tcpClients[0]
    assert (host, port, connect_timeout) == ("127.0.0.1", 8080, timeout)
    assert isinstance(factory, ClientFactory)
    return reactor, d, factory


def connect(factory: ClientFactory) -> tuple[Protocol, StringTransport]:
    protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 8080))
    assert isinstance(protocol, Protocol)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def test_sends_a_minimal_get() -> None:
    _, d, factory = start_check()
    _, transport = connect(factory)
    assert transport.value() == REQUEST
    assert outcome(d) is None


def test_host_header_is_configurable() -> None:
    _, _, factory = start_check(path="/up?full=1", host_header="app.example")
    _, transport = connect(factory)
    assert transport.value().startswith(b"GET /up?full=1 HTTP/1.1\r\nHost: app.example\r\n")


@pytest.mark.parametrize(("answer", "expected"), [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", HealthResult(True, 200, "answered 200")),
    (b"HTTP/1.1 204 No Content\r\n\r\n", HealthResult(True, 204, "answered 204")),
    (b"HTTP/1.0 302 Found\r\nLocation: /x\r\n\r\n", HealthResult(True, 302, "answered 302")),
    (b"HTTP/1.1 399\r\n", HealthResult(True, 399, "answered 399")),
    (b"HTTP/1.1 404 Not Found\r\n\r\n", HealthResult(False, 404, "answered 404")),
    (b"HTTP/1.1 503 Service Unavailable\r\n\r\n", HealthResult(False, 503, "answered 503")),
    (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", HealthResult(False, 101, "answered 101")),
    (b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\n\r\n", HealthResult(True, 200, "answered 200")),
    (b"HTTP/1.1 100 Continue\n\nHTTP/1.1 500 Oops\n\n", HealthResult(False, 500, "answered 500")),
])
def test_status_line_decides(answer: bytes, expected: HealthResult) -> None:
    reactor, d, factory = start_check()
    protocol, transport = connect(factory)
    protocol.dataReceived(answer)
    assert outcome(d) == expected
    assert transport.disconnecting
    assert_no_delayed_calls(reactor)


def test_status_line_split_across_reads() -> None:
    _, d, factory = start_check()
    protocol, _ = connect(factory)
    for byte in b"HTTP/1.1 200 OK\r\n":
        assert outcome(d) is None
        protocol.dataReceived(bytes([byte]))
    assert outcome(d) == OK


def test_informational_head_split_across_reads() -> None:
    _, d, factory = start_check()
    protocol, _ = connect(factory)
    protocol.dataReceived(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n")
    assert outcome(d) is None
    protocol.dataReceived(b"\r\n")
    assert outcome(d) is None
    protocol.dataReceived(b"HTTP/1.1 502 Bad Gateway\r\n")
    assert outcome(d) == HealthResult(False, 502, "answered 502")


@pytest.mark.parametrize("garbage", [
    b"SSH-2.0-OpenSSH_9.6\r\n",
    b"\x16\x03\x01\x02\x00",
    b"HTTP/1.1 2000 OK\r\n",
    b"HTTP/1.1 OK\r\n",
    b"HTTP/1.1 200 OK" + b"x" * 20000,
])
def test_garbage_is_unhealthy(garbage: bytes) -> None:
    reactor, d, factory = start_check()
    protocol, transport = connect(factory)
    protocol.dataReceived(garbage)
    result = outcome(d)
    assert isinstance(result, HealthResult)
    assert (result.ok, result.status) == (False, None)
    assert result.detail.startswith("answered garbage: b'")
    assert transport.disconnecting
    assert_no_delayed_calls(reactor)


def test_timeout_after_connect_aborts_the_connection() -> None:
    reactor, d, factory = start_check(timeout=2.0)
    protocol, transport = connect(factory)
    protocol.dataReceived(b"HTTP/1.1 2")
    reactor.advance(1.99)
    assert outcome(d) is None
    reactor.advance(0.01)
    assert outcome(d) == HealthResult(False, None, "timed out after 2.0s")
    assert transport.disconnected, "the connection should be aborted, not closed gracefully"
    # The connection then closing, and late data, change nothing.
    protocol.dataReceived(b"00 OK\r\n")
    protocol.connectionLost(Failure(ConnectionDone()))
    assert outcome(d) == HealthResult(False, None, "timed out after 2.0s")
    assert_no_delayed_calls(reactor)


def test_timeout_while_connecting_stops_the_connect() -> None:
    reactor, d, factory = start_check(timeout=0.5)
    connector = reactor.connectors[0]
    reactor.advance(0.5)
    assert outcome(d) == HealthResult(False, None, "timed out after 0.5s")
    assert connector.stoppedConnecting
    # Twisted then reports the stopped connect as a failure: ignored.
    factory.clientConnectionFailed(connector, Failure(TimeoutError()))
    assert_no_delayed_calls(reactor)


def test_connect_timeout_reported_as_timeout() -> None:
    reactor, d, factory = start_check(timeout=3)
    factory.clientConnectionFailed(reactor.connectors[0], Failure(TimeoutError()))
    assert outcome(d) == HealthResult(False, None, "timed out after 3s")
    assert_no_delayed_calls(reactor)


def test_refused() -> None:
    reactor, d, factory = start_check()
    factory.clientConnectionFailed(reactor.connectors[0], Failure(ConnectionRefusedError()))
    assert outcome(d) == HealthResult(False, None, "connection refused")
    assert not reactor.connectors[0].stoppedConnecting
    assert_no_delayed_calls(reactor)


def test_other_connect_failures() -> None:
    reactor, d, factory = start_check()
    factory.clientConnectionFailed(reactor.connectors[0], Failure(DNSLookupError("no such host")))
    result = outcome(d)
    assert isinstance(result, HealthResult)
    assert (result.ok, result.status) == (False, None)
    assert result.detail.startswith("could not connect:") and "no such host" in result.detail


@pytest.mark.parametrize(("data", "detail"), [
    (b"", "connection closed before a status line"),
    (b"HTTP/1.1 20", "connection closed mid-answer: b'HTTP/1.1 20'"),
])
def test_connection_closed_without_a_status(data: bytes, detail: str) -> None:
    reactor, d, factory = start_check()
    protocol, _ = connect(factory)
    protocol.dataReceived(data)
    protocol.connectionLost(Failure(ConnectionDone()))
    assert outcome(d) == HealthResult(False, None, detail)
    assert_no_delayed_calls(reactor)


def test_cancel_aborts_and_leaves_nothing_behind() -> None:
    reactor, d, factory = start_check()
    _, transport = connect(factory)
    d.cancel()
    result = outcome(d)
    assert isinstance(result, Failure) and result.check(CancelledError)
    d.addErrback(lambda f: f.trap(CancelledError))
    assert transport.disconnected
    assert_no_delayed_calls(reactor)


def test_cancel_while_connecting_stops_the_connect() -> None:
    reactor, d, _ = start_check()
    d.addErrback(lambda f: f.trap(CancelledError))
    d.cancel()
    assert reactor.connectors[0].stoppedConnecting
    assert_no_delayed_calls(reactor)


class RaisingReactor(MemoryReactorClock):
    def connectTCP(self, host: str, port: int, factory: object, timeout: float = 30,
                   bindAddress: object = None) -> object:
        raise OverflowError("port must be 0-65535")


def test_connect_raising_still_gives_a_result() -> None:
    reactor = RaisingReactor()
    d = check_http(reactor, "127.0.0.1", 70000, "/", 1.0)
    assert outcome(d) == HealthResult(False, None, "could not connect: port must be 0-65535")
    assert_no_delayed_calls(reactor)


@pytest.mark.parametrize("path", ["health", "/a b", "/x\r\nEvil: 1", ""])
def test_rejects_paths_that_would_corrupt_the_request(path: str) -> None:
    reactor = MemoryReactorClock()
    with pytest.raises(ValueError):
        check_http(reactor, "127.0.0.1", 8080, path, 1.0)
    assert reactor.tcpClients == []


def test_rejects_a_bad_host_header() -> None:
    with pytest.raises(ValueError):
        check_http(MemoryReactorClock(), "127.0.0.1", 8080, "/", 1.0, host_header="a\r\nb")

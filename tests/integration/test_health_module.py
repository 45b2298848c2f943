"""check_http against real sockets on loopback, on the real reactor (pytest-twisted)."""

from __future__ import annotations

import socket
import time
from collections.abc import Generator
from typing import Any

import pytest_twisted  # type: ignore[import-untyped]
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, inlineCallbacks, maybeDeferred
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory, Protocol

from passenger.spawn.health import HealthResult, check_http

ANSWERS = {
    b"/ok": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
    b"/moved": b"HTTP/1.1 302 Found\r\nLocation: /ok\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    b"/broken": b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\nConnection: close\r\n\r\nboom",
}


class TinyHTTP(Protocol):
    """Answers by path from ANSWERS once the request head is in; records what it got."""

    factory: TinyHTTPFactory

    def connectionMade(self) -> None:
        self.head = b""
        self.factory.connections.append(self)

    def dataReceived(self, data: bytes) -> None:
        self.head += data
        if b"\r\n\r\n" not in self.head:
            return
        self.factory.requests.append(self.head)
        if self.factory.silent:
            return
        path = self.head.split(b" ")[1]
        assert self.transport is not None
        self.transport.write(ANSWERS.get(path, b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"))
        self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        self.factory.lost += 1


class TinyHTTPFactory(Factory):
    protocol = TinyHTTP  # type: ignore[assignment]
    noisy = False

    def __init__(self, silent: bool = False) -> None:
        self.silent = silent
        self.requests: list[bytes] = []
        self.connections: list[TinyHTTP] = []
        self.lost = 0


def serve(silent: bool = False) -> tuple[IListeningPort, TinyHTTPFactory, int]:
    from twisted.internet import reactor

    factory = TinyHTTPFactory(silent)
    listening = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[arg-type]
    address = listening.getHost()
    assert isinstance(address, IPv4Address)
    return listening, factory, address.port


def closed_port() -> int:
    """A loopback port that nothing listens on (just released by us)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sleep(seconds: float) -> Deferred[None]:
    from twisted.internet import reactor, task

    return task.deferLater(reactor, seconds)


def check(port: int, path: str, timeout: float = 5.0) -> Deferred[HealthResult]:
    from twisted.internet import reactor

    return check_http(reactor, "127.0.0.1", port, path, timeout)


@pytest_twisted.inlineCallbacks
def test_answers_from_a_real_server() -> Generator[Deferred[Any], Any, None]:
    listening, factory, port = serve()
    try:
        ok = yield check(port, "/ok")
        moved = yield check(port, "/moved")
        broken = yield check(port, "/broken")
        missing = yield check(port, "/nope")
    finally:
        yield maybeDeferred(listening.stopListening)
    assert ok == HealthResult(True, 200, "answered 200")
    assert moved == HealthResult(True, 302, "answered 302")
    assert broken == HealthResult(False, 500, "answered 500")
    assert missing == HealthResult(False, 404, "answered 404")
    assert factory.requests[0] == (b"GET /ok HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
                                   b"User-Agent: passenger-health-check\r\n\r\n")
    assert [r.split(b" ")[1] for r in factory.requests] == [b"/ok", b"/moved", b"/broken", b"/nope"]


@pytest_twisted.inlineCallbacks
def test_server_that_never_answers_times_out() -> Generator[Deferred[Any], Any, None]:
    listening, factory, port = serve(silent=True)
    try:
        started = time.monotonic()
        result = yield check(port, "/ok", timeout=0.3)
        elapsed = time.monotonic() - started
        # The abort reaches the server side promptly, so nothing is left open.
        deadline = time.monotonic() + 5
        while factory.lost < 1 and time.monotonic() < deadline:
            yield sleep(0.01)
    finally:
        yield maybeDeferred(listening.stopListening)
    assert result == HealthResult(False, None, "timed out after 0.3s")
    assert 0.25 <= elapsed < 2.0
    assert len(factory.requests) == 1, "the request should have been sent before the timeout"
    assert factory.lost == 1


@pytest_twisted.inlineCallbacks
def test_closed_port_is_refused() -> Generator[Deferred[Any], Any, None]:
    result = yield check(closed_port(), "/ok", timeout=5.0)
    assert result == HealthResult(False, None, "connection refused")


@inlineCallbacks
def _concurrent(port: int) -> Generator[Deferred[Any], Any, list[HealthResult]]:
    results = []
    for d in [check(port, "/ok"), check(port, "/broken"), check(port, "/moved")]:
        results.append((yield d))
    return results


@pytest_twisted.inlineCallbacks
def test_concurrent_checks_do_not_mix_up() -> Generator[Deferred[Any], Any, None]:
    listening, _, port = serve()
    try:
        results = yield _concurrent(port)
    finally:
        yield maybeDeferred(listening.stopListening)
    assert [(r.ok, r.status) for r in results] == [(True, 200), (False, 500), (True, 302)]

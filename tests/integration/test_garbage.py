"""The garbage collector's share: closed connections are freed at once, and what the server
built to start is left out of its passes.

A closed connection is freed by reference counting, not left to the cycle collector.

A connection left in reference cycles (its protocol and the parser whose callbacks
are the protocol's bound methods, the protocol and its response buffer) lingers
until the collector's next pass of the generation it reached; with thousands of
connections, that is a full collection over everything the server holds: 68 ms
on the benchmark machine when 10,000 clients left at once, during which no other
connection was served.

The server runs in this process (PassengerService on the real reactor, with its
own listener, apps spawned for real); real clients connect over loopback, end
their connections each in its own way, and the collector, told to keep what it
finds (``gc.DEBUG_SAVEALL``), must find nothing of the server's.

A server that owns its process (twistd, twist) freezes what exists once it has
started (``gc.freeze``), so that a full pass no longer walks the 48,000 objects
of its modules and setup; an embedded one leaves the application's heap alone.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Generator, Iterator
from typing import Any

import pytest
import pytest_twisted  # type: ignore[import-untyped]
from httptools import HttpRequestParser, HttpResponseParser
from twisted.internet.abstract import FileDescriptor
from twisted.internet.base import BaseConnector
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from passenger.embed import PassengerService, load_config
from passenger.http.front import FrontProtocol
from passenger.http.response_buffer import ResponseBuffer
from passenger.http.upstream import UpstreamConnection, UpstreamFactory
from tests.integration.conftest import APP_PYTHON, APPS, free_port, world_dir
from tests.polling import until

ECHO = f"{APP_PYTHON} echo_app.py"
#: What a connection is made of: its protocols and parsers, its response buffer, and, for an app
#: connection, the factory that made it (and its transport and connector, below).  A server's own
#: objects, its factory or a process's spawn record, are left to the collector when a server or
#: process ends: rare events.
CONNECTION_CLASSES = (FrontProtocol, UpstreamConnection, UpstreamFactory, ResponseBuffer, HttpRequestParser,
                      HttpResponseParser)


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def of_a_connection(thing: Any, port: int) -> bool:
    """Is ``thing`` part of a connection to the server on ``port`` (or from it to an app)?  Transports
    and connectors are told by what they were made for: earlier tests' own (test_eager's) may end
    while these run, and the test's client has Twisted's."""
    if isinstance(thing, CONNECTION_CLASSES):
        return True
    if isinstance(thing, FileDescriptor):  # a transport: accepted on the port, or opened to an app
        return getattr(getattr(thing, "server", None), "port", None) == port or isinstance(
            getattr(getattr(thing, "connector", None), "factory", None), UpstreamFactory)
    return isinstance(thing, BaseConnector) and isinstance(thing.factory, UpstreamFactory)


def connection_garbage(found: list[Any], port: int) -> list[str]:
    """What of connections the collector found unreachable (by class, for the failure message)."""
    names = []
    for thing in found:
        owner = getattr(thing, "__self__", None) if type(thing).__name__ == "builtin_function_or_method" else thing
        if of_a_connection(owner, port):
            names.append(f"{type(owner).__module__}.{type(owner).__qualname__}"
                         + (" (a bound method)" if owner is not thing else ""))
    return sorted(names)


class Client(Protocol):
    """A raw HTTP client: what it sends, what it got, and when it is closed."""

    def __init__(self) -> None:
        self.received = b""
        self.closed: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:
        self.closed.callback(None)


class Served:
    """PassengerService listening on a port of its own, with one echo_app process."""

    def __init__(self, owns_process: bool = False) -> None:
        self.reactor = _reactor()
        self.port = free_port()
        self.service = PassengerService(load_config(
            root=str(APPS), start_command=ECHO, listen=[f"tcp:{self.port}:interface=127.0.0.1"],
            min_instances=1, max_pool_size=1,
            instance_registry_dir=str(world_dir("registry", 0o755)), spawn_dir=str(world_dir("spawn", 0o755)),
        ), self.reactor, handle_signals=owns_process)

    @property
    def group(self) -> Any:
        assert self.service.pool is not None
        return next(iter(self.service.pool.groups.values()))

    def connections(self) -> int:
        assert self.service.front is not None
        return len(self.service.front.connections)

    @inlineCallbacks
    def connect(self, data: bytes) -> Generator[Deferred[Any], Any, Client]:
        client = yield connectProtocol(TCP4ClientEndpoint(self.reactor, "127.0.0.1", self.port), Client())
        assert client.transport is not None
        client.transport.write(data)
        return client

    def quiet(self) -> bool:
        """No client connection left, and the process holds no request."""
        return self.connections() == 0 and all(p.sessions == 0 for p in self.group.ready)


@pytest.fixture
def served() -> Iterator[Served]:
    server = Served()
    yield server
    if server.service.running:
        pytest_twisted.blockon(server.service.stopService())


@pytest.fixture
def keep_garbage() -> Iterator[Callable[[], list[Any]]]:
    """From here on the collector keeps what it finds unreachable; the function returned collects and says what."""
    gc.collect()
    gc.garbage.clear()
    gc.set_debug(gc.DEBUG_SAVEALL)

    def collect() -> list[Any]:
        gc.collect()
        found = list(gc.garbage)
        gc.garbage.clear()
        return found

    try:
        yield collect
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


GET = b"GET /echo HTTP/1.1\r\nHost: test\r\n\r\n"


@inlineCallbacks
def exchange(server: Served, data: bytes, ready: Callable[[Client], bool], what: str,
             abort: bool = False) -> Generator[Deferred[Any], Any, None]:
    """On a new connection: send ``data``, wait until ``ready``, then close it (or abort it)."""
    client = yield server.connect(data)
    yield until(lambda: ready(client), what=what)
    assert client.transport is not None
    (client.transport.abortConnection if abort else client.transport.loseConnection)()
    yield client.closed


def idle_keep_alive_closed_by_the_client(server: Served) -> Deferred[None]:
    return exchange(server, GET, lambda client: b"HTTP/1.1 200" in client.received
                    and all(p.sessions == 0 for p in server.group.ready), "the response")


@inlineCallbacks
def connection_close_answered(server: Served) -> Generator[Deferred[Any], Any, None]:
    client = yield server.connect(b"GET /echo HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
    yield client.closed
    assert client.received.startswith(b"HTTP/1.1 200")


def client_leaves_mid_response(server: Served) -> Deferred[None]:
    return exchange(server, b"GET /bytes?n=200000000 HTTP/1.1\r\nHost: test\r\n\r\n",
                    lambda client: len(client.received) > 1_000_000, "a part of the body", abort=True)


def client_leaves_inside_the_head(server: Served) -> Deferred[None]:
    return exchange(server, b"GET /echo HTTP/1.1\r\nHost: te", lambda client: server.connections() == 1,
                    "the connection accepted")


def app_ends_the_body_by_closing(server: Served) -> Deferred[None]:
    return exchange(server, b"GET /close HTTP/1.1\r\nHost: test\r\n\r\n" + GET,
                    lambda client: client.received.count(b"HTTP/1.1 200") == 2, "both responses")


def app_dies_mid_request(server: Served) -> Deferred[None]:
    """The app connection's side: the client's are still alive here, held by the warning about the
    502 (its ``log_source``) in Twisted's buffer of the events before logging begins, which a
    server under twistd has begun."""
    return exchange(server, b"POST /exit HTTP/1.1\r\nHost: test\r\nContent-Length: 0\r\n\r\n",
                    lambda client: b"HTTP/1.1 502" in client.received, "502 Bad Gateway")


@pytest.mark.parametrize("ending", [
    idle_keep_alive_closed_by_the_client, connection_close_answered, client_leaves_mid_response,
    client_leaves_inside_the_head, app_ends_the_body_by_closing, app_dies_mid_request,
], ids=lambda f: f.__name__)
@pytest_twisted.inlineCallbacks
def test_a_closed_connection_leaves_no_garbage_cycles(
        served: Served, keep_garbage: Callable[[], list[Any]],
        ending: Callable[[Served], Deferred[None]]) -> Any:
    served.service.startService()
    yield until(lambda: served.group.ready, what="a ready process")
    for _ in range(3):
        yield ending(served)
    yield until(lambda: served.quiet() and served.group.ready, what="the server's side of the connections closed")
    found = connection_garbage(keep_garbage(), served.port)
    assert not found, f"{len(found)} objects of connections were left in reference cycles: {sorted(set(found))}"


@pytest.mark.parametrize("owns_process", [True, False], ids=["twistd", "embedded"])
@pytest_twisted.inlineCallbacks
def test_a_server_that_owns_its_process_freezes_its_startup_objects(owns_process: bool) -> Any:
    gc.unfreeze()
    server = Served(owns_process)
    try:
        server.service.startService()
        assert (gc.get_freeze_count() > 10_000) is owns_process, gc.get_freeze_count()
        yield until(lambda: server.group.ready, what="a ready process")
    finally:
        gc.unfreeze()  # (this process is pytest's)
        yield server.service.stopService()

"""passenger.http.eager against real loopback sockets and the real reactor.

What must hold: bytes leave at once when nothing is queued; whatever the
kernel does not take goes through Twisted's own queue, in order, with its
producer pausing; pull producers and closing behave as they do in Twisted.
"""

from __future__ import annotations

import array
import io
import os
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.error import ConnectionAborted, ConnectionDone
from twisted.internet.interfaces import IPullProducer, IPushProducer
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher
from twisted.protocols.basic import FileSender
from twisted.python.failure import Failure
from zope.interface import implementer

from passenger.http.eager import (
    EagerTCPClient,
    EagerTCPServer,
    EagerUNIXClient,
    EagerUNIXServer,
    connect_tcp,
    connect_unix,
    make_eager,
)
from passenger.http.fastpath import write_pieces


def the_reactor() -> Any:
    from twisted.internet import reactor

    return reactor


class Recorder(Protocol):
    def __init__(self, made: Deferred[Recorder]) -> None:
        self.made = made
        self.received = b""
        self.lost: Deferred[None] = Deferred()
        #: Fires with the first bytes received.
        self.first_bytes: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        self.made.callback(self)

    def dataReceived(self, data: bytes) -> None:
        if not self.received:
            self.first_bytes.callback(data)
        self.received += data

    def connectionLost(self, reason: object = None) -> None:
        self.lost.callback(None)


class OneConnection(ClientFactory):
    """Builds one Recorder and fires ``made`` with it."""

    def __init__(self) -> None:
        self.made: Deferred[Recorder] = Deferred()

    def buildProtocol(self, addr: object) -> Recorder:
        return Recorder(self.made)


def listen_tcp() -> tuple[Any, OneConnection]:
    factory = OneConnection()
    port = make_eager(the_reactor().listenTCP(0, factory, interface="127.0.0.1"))
    return port, factory


@inlineCallbacks
def connected(small_buffers: bool = False):  # type: ignore[no-untyped-def]
    """(port, client socket, server Recorder) over loopback; 4 KiB kernel buffers if asked."""
    port, factory = listen_tcp()
    client = socket.socket()
    if small_buffers:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.connect(("127.0.0.1", port.getHost().port))
    server = yield factory.made
    if small_buffers:
        server.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    return port, client, server


def read_now(sock: socket.socket) -> bytes:
    """What has arrived on ``sock`` already, without waiting (loopback delivers inside send)."""
    sock.setblocking(False)
    data = b""
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except BlockingIOError:
            return data
        if not chunk:
            return data
        data += chunk


def read_exactly(sock: socket.socket, size: int) -> bytes:
    sock.setblocking(True)
    sock.settimeout(10)
    parts = []
    while size:
        chunk = sock.recv(min(size, 1 << 20))
        assert chunk, "the connection closed early"
        parts.append(chunk)
        size -= len(chunk)
    return b"".join(parts)


@implementer(IPushProducer)
class Pauses:
    def __init__(self) -> None:
        self.events: list[str] = []

    def pauseProducing(self) -> None:
        self.events.append("pause")

    def resumeProducing(self) -> None:
        self.events.append("resume")

    def stopProducing(self) -> None:
        self.events.append("stop")


@pytest_twisted.inlineCallbacks
def test_an_accepted_connection_sends_before_the_reactor_turns():  # type: ignore[no-untyped-def]
    port, client, server = yield connected()
    try:
        assert type(server.transport) is EagerTCPServer
        server.transport.write(b"hello")
        server.transport.writeSequence([b", ", b"eager ", b"world"])
        assert read_now(client) == b"hello, eager world"
    finally:
        client.close()
        yield port.stopListening()


@pytest_twisted.inlineCallbacks
def test_what_the_kernel_refuses_is_queued_in_order_and_pauses_the_producer():  # type: ignore[no-untyped-def]
    port, client, server = yield connected(small_buffers=True)
    try:
        transport = server.transport
        producer = Pauses()
        transport.registerProducer(producer, True)
        first = os.urandom(1 << 20)
        pieces = [os.urandom(size) for size in (1, 700, 65536, 3, 200_000)]
        last = b"the end"
        transport.write(first)
        assert producer.events == ["pause"], "more than bufferSize is queued: the producer is paused at once"
        transport.writeSequence(pieces)  # queued behind the rest of ``first``
        transport.write(last)
        expected = first + b"".join(pieces) + last
        got = yield deferToThread(read_exactly, client, len(expected))
        assert got == expected
        assert producer.events[-1] == "resume", "the queue drained: the producer was resumed"
        transport.unregisterProducer()
        transport.write(b"again")  # the queue is empty once more: at once
        assert read_now(client) == b"again"
    finally:
        client.close()
        yield port.stopListening()


@pytest_twisted.inlineCallbacks
def test_a_partial_sendmsg_queues_the_rest_of_the_pieces():  # type: ignore[no-untyped-def]
    port, client, server = yield connected(small_buffers=True)
    try:
        pieces = [os.urandom(size) for size in (10, 300_000, 5, 400_000, 1)]
        server.transport.writeSequence(pieces)
        expected = b"".join(pieces)
        got = yield deferToThread(read_exactly, client, len(expected))
        assert got == expected
    finally:
        client.close()
        yield port.stopListening()


@pytest_twisted.inlineCallbacks
def test_a_pull_producer_is_asked_for_more_until_the_end():  # type: ignore[no-untyped-def]
    port, client, server = yield connected()
    try:
        content = os.urandom(3 << 20)
        reading = deferToThread(read_exactly, client, len(content))
        yield FileSender().beginFileTransfer(io.BytesIO(content), server.transport)
        assert (yield reading) == content
    finally:
        client.close()
        yield port.stopListening()


@pytest_twisted.inlineCallbacks
def test_lose_connection_delivers_then_closes_and_abort_sends_nothing_more():  # type: ignore[no-untyped-def]
    port, factory = listen_tcp()
    first = socket.create_connection(("127.0.0.1", port.getHost().port))
    try:
        server = yield factory.made
        server.transport.write(b"bye")
        server.transport.loseConnection()
        server.transport.write(b" after")  # queued, as Twisted does: sent before the close
        yield server.lost
        assert read_exactly(first, 9) == b"bye after"
        first.settimeout(5)
        assert first.recv(100) == b""
    finally:
        first.close()
    factory.made = Deferred()
    second = socket.create_connection(("127.0.0.1", port.getHost().port))
    try:
        server = yield factory.made
        server.transport.abortConnection()
        server.transport.write(b"never")
        yield server.lost
        second.settimeout(5)
        with pytest.raises(ConnectionResetError):
            while second.recv(100):
                pass
    finally:
        second.close()
        yield port.stopListening()


@pytest_twisted.inlineCallbacks
def test_an_accepted_connection_has_tcp_nodelay_from_its_listening_socket():  # type: ignore[no-untyped-def]
    port, client, server = yield connected()
    try:
        accepted = server.transport.socket
        assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), "Linux passes it on from the listener"
        server.transport.setTcpNoDelay(True)  # nothing to do
        assert server.transport.getTcpNoDelay()
        server.transport.setTcpNoDelay(False)  # still Twisted's
        assert not accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        client.close()
        yield port.stopListening()


class CountingSends:
    """A transport's socket, with the bytes of each ``send`` recorded."""

    def __init__(self, sock: socket.socket, sends: list[bytes]) -> None:
        self._sock, self._sends = sock, sends

    def send(self, data: bytes, *flags: int) -> int:
        self._sends.append(bytes(data))
        return self._sock.send(data, *flags)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


@pytest_twisted.inlineCallbacks
def test_closing_with_nothing_queued_sends_nothing_more():  # type: ignore[no-untyped-def]
    port, client, server = yield connected()
    try:
        sends: list[bytes] = []
        server.transport.socket = CountingSends(server.transport.socket, sends)
        server.transport.write(b"bye")
        server.transport.loseConnection()
        yield server.lost
        assert sends == [b"bye"], "Twisted's doWrite sends its empty queue before closing; ours does not"
        client.settimeout(5)
        assert read_exactly(client, 3) == b"bye" and client.recv(100) == b""
    finally:
        client.close()
        yield port.stopListening()


@implementer(IPullProducer)
class Pulled:
    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


@pytest.mark.parametrize("change", ["loseConnection", "loseWriteConnection", "abortConnection", "a pull producer"])
@pytest_twisted.inlineCallbacks
def test_a_write_after_a_change_that_needs_twisteds_queue_goes_there_after_direct_writes(change):  # type: ignore[no-untyped-def]
    """A direct write keeps what ``queueing`` found (``_quiet``); the change must clear it."""
    port, client, server = yield connected()
    try:
        transport = server.transport
        transport.write(b"direct")
        assert read_now(client) == b"direct"
        if change == "a pull producer":
            transport.registerProducer(Pulled(), False)
        else:
            getattr(transport, change)()
        transport.write(b"later")
        assert transport._tempDataLen == len(b"later"), "Twisted's queue took it"
        assert read_now(client) == b"", "nothing went past Twisted's queue"
    finally:
        client.close()
        yield port.stopListening()


@pytest_twisted.inlineCallbacks
def test_connections_to_apps_are_eager_over_tcp_and_unix(tmp_path: Path):  # type: ignore[no-untyped-def]
    reactor = the_reactor()
    port, accepted = listen_tcp()
    dialing = OneConnection()
    connect_tcp(reactor, "127.0.0.1", port.getHost().port, dialing, timeout=5)
    client = yield dialing.made
    server = yield accepted.made
    assert type(client.transport) is EagerTCPClient
    client.transport.write(b"ping")
    assert (yield server.first_bytes) == b"ping"
    client.transport.loseConnection()
    yield port.stopListening()

    path = str(tmp_path / "app.sock")
    unix_accepted = OneConnection()
    unix_port = make_eager(reactor.listenUNIX(path, unix_accepted))
    unix_dialing = OneConnection()
    connect_unix(reactor, path, unix_dialing, timeout=5)
    client = yield unix_dialing.made
    server = yield unix_accepted.made
    assert type(client.transport) is EagerUNIXClient
    assert type(server.transport) is EagerUNIXServer
    server.transport.write(b"pong")
    assert (yield client.first_bytes) == b"pong"
    client.transport.loseConnection()
    yield unix_port.stopListening()


@pytest_twisted.inlineCallbacks
def test_descriptors_passed_over_a_unix_socket_are_not_kept(tmp_path: Path):  # type: ignore[no-untyped-def]
    """The eager Unix transports read with a plain recv (no ancillary data): a descriptor a peer
    passes along with its bytes is closed by the kernel, not leaked into the server."""
    path = str(tmp_path / "front.sock")
    accepted = OneConnection()
    port = make_eager(the_reactor().listenUNIX(path, accepted))
    read_end, write_end = os.pipe()
    client = socket.socket(socket.AF_UNIX)
    try:
        client.connect(path)
        server = yield accepted.made
        assert type(server.transport) is EagerUNIXServer
        client.sendmsg([b"ping"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [write_end]))])
        os.close(write_end)
        assert (yield server.first_bytes) == b"ping"
        os.set_blocking(read_end, False)
        try:
            assert os.read(read_end, 1) == b""  # end of file: no write end is open anywhere
        except BlockingIOError:
            pytest.fail("the pipe's write end is still open: the server kept the descriptor")
    finally:
        client.close()
        os.close(read_end)
        yield port.stopListening()


def test_other_reactors_keep_their_own_connect() -> None:
    reactor = MemoryReactor()
    connect_tcp(reactor, "127.0.0.1", 8000, ClientFactory(), timeout=5)
    connect_unix(reactor, "/tmp/app.sock", ClientFactory(), timeout=5)
    assert [(host, port) for host, port, *_ in reactor.tcpClients] == [("127.0.0.1", 8000)]
    assert [address for address, *_ in reactor.unixClients] == ["/tmp/app.sock"]


# Write passes: a PassengerEPollReactor of the test's own, turned by hand (never installed).
class Scripted(Protocol):
    """Runs ``script(transport, client)`` for the first bytes it receives, inside the reactor's pass."""

    def __init__(self, script: Any, client: list[socket.socket]) -> None:
        self.script = script
        self.client = client
        self.seen_in_pass: bytes | None = None
        self.lost = False
        self.reason: Any = None

    def connectionLost(self, reason: object = None) -> None:
        self.lost = True
        self.reason = reason

    def dataReceived(self, data: bytes) -> None:
        self.script(self.transport)
        self.seen_in_pass = read_now(self.client[0])  # what the peer has while the pass runs


@pytest.fixture
def passes():  # type: ignore[no-untyped-def]
    """(reactor, run(script) -> (protocol, client socket)) over loopback."""
    from passenger.reactor import PassengerEPollReactor

    reactor = PassengerEPollReactor()
    opened: list[socket.socket] = []
    ports: list[Any] = []

    def run(script: Any) -> tuple[Scripted, socket.socket]:
        client: list[socket.socket] = []
        made: list[Scripted] = []

        class Once(ClientFactory):
            def buildProtocol(self, addr: object) -> Scripted:
                made.append(Scripted(script, client))
                return made[0]

        port = make_eager(reactor.listenTCP(0, Once(), interface="127.0.0.1"))
        ports.append(port)
        sock = socket.create_connection(("127.0.0.1", port.getHost().port), timeout=5)
        opened.append(sock)
        client.append(sock)
        sock.sendall(b"go")
        turn_until(reactor, lambda: made and made[0].seen_in_pass is not None)
        return made[0], sock

    yield reactor, run
    for sock in opened:
        sock.close()
    for port in ports:
        port.stopListening()
    for selectable in reactor.removeAll():
        selectable.connectionLost(Failure(ConnectionDone()))
    turn_until(reactor, lambda: not reactor.getDelayedCalls())
    reactor._poller.close()


def turn_until(reactor: Any, done: Any, seconds: float = 5) -> None:
    """Turn the reactor (timers, then one poll pass) until ``done()``, for at most ``seconds``."""
    deadline = time.monotonic() + seconds
    while not done():
        assert time.monotonic() < deadline, "the reactor never got there"
        reactor.iterate(0.01)


def read_to_end(sock: socket.socket) -> bytes:
    sock.setblocking(True)
    sock.settimeout(5)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def test_writes_of_a_pass_leave_together_when_it_ends(passes):  # type: ignore[no-untyped-def]
    reactor, run = passes

    def script(transport: Any) -> None:
        transport.write(b"one ")
        transport.writeSequence([b"two ", b"three"])

    protocol, client = run(script)
    assert type(protocol.transport) is EagerTCPServer
    assert protocol.seen_in_pass == b"", "nothing leaves while the pass runs"
    assert not reactor.corked, "the pass ended: nothing is held"
    assert read_now(client) == b"one two three"


def test_writes_outside_a_pass_leave_at_once(passes):  # type: ignore[no-untyped-def]
    reactor, run = passes
    protocol, client = run(lambda transport: None)
    reactor.callLater(0, protocol.transport.write, b"from a timer")
    reactor.runUntilCurrent()  # timers run outside the poll pass
    assert read_now(client) == b"from a timer"


def test_closing_in_a_pass_sends_what_it_held_first(passes):  # type: ignore[no-untyped-def]
    reactor, run = passes

    def script(transport: Any) -> None:
        transport.writeSequence([b"last ", b"words"])
        transport.loseConnection()

    protocol, client = run(script)
    turn_until(reactor, lambda: protocol.lost)
    assert protocol.seen_in_pass + read_to_end(client) == b"last words"


def test_closing_in_a_pass_closes_as_it_ends_without_asking_for_writability(passes):  # type: ignore[no-untyped-def]
    reactor, run = passes
    asked: list[Any] = []
    add_writer = reactor.addWriter
    reactor.addWriter = lambda writer: (asked.append(writer), add_writer(writer))

    def script(transport: Any) -> None:
        transport.write(b"bye")
        transport.loseConnection()

    protocol, client = run(script)
    assert protocol.lost and protocol.reason.check(ConnectionDone), "closed when the pass ended"
    assert asked == [], "Twisted's way registers for writability and closes from the next pass's doWrite"
    assert protocol.seen_in_pass + read_to_end(client) == b"bye"


@pytest.mark.parametrize("held", [b"held ", b""], ids=["after held bytes", "with nothing held"])
def test_a_write_after_closing_in_a_pass_arrives_before_the_close(passes, held):  # type: ignore[no-untyped-def]
    reactor, run = passes

    def script(transport: Any) -> None:
        if held:
            transport.write(held)
        transport.loseConnection()
        transport.write(b"late")

    protocol, client = run(script)
    turn_until(reactor, lambda: protocol.lost)
    assert protocol.reason.check(ConnectionDone)
    assert protocol.seen_in_pass + read_to_end(client) == held + b"late"


def test_aborting_after_closing_in_a_pass_drops_what_was_held_as_in_twisted(passes):  # type: ignore[no-untyped-def]
    reactor, run = passes

    def script(transport: Any) -> None:
        transport.write(b"never sent")
        transport.loseConnection()
        transport.abortConnection()

    protocol, client = run(script)
    turn_until(reactor, lambda: protocol.lost)
    assert protocol.reason.check(ConnectionAborted)
    assert protocol.seen_in_pass + read_to_end(client) == b""


def test_aborting_in_a_pass_drops_what_it_held(passes):  # type: ignore[no-untyped-def]
    reactor, run = passes

    def script(transport: Any) -> None:
        transport.write(b"never sent")
        transport.abortConnection()

    protocol, client = run(script)
    turn_until(reactor, lambda: protocol.lost)
    assert protocol.seen_in_pass + read_to_end(client) == b""


def test_a_pull_producer_registered_in_a_pass_writes_after_what_was_held(passes):  # type: ignore[no-untyped-def]
    reactor, run = passes
    content = os.urandom(300_000)

    def script(transport: Any) -> None:
        transport.write(b"head:")
        FileSender().beginFileTransfer(io.BytesIO(content), transport).addCallback(
            lambda _: transport.loseConnection())

    protocol, client = run(script)
    expected = b"head:" + content
    got = protocol.seen_in_pass
    client.setblocking(False)
    deadline = time.monotonic() + 10
    while len(got) < len(expected) and time.monotonic() < deadline:
        reactor.iterate(0.01)
        got += read_now(client)
    assert got == expected


def test_a_write_of_text_in_a_pass_fails_at_the_caller(passes):  # type: ignore[no-untyped-def]
    _reactor, run = passes
    errors: list[type] = []

    def script(transport: Any) -> None:
        transport.write(b"fine")
        for bad in (lambda: transport.write("text"), lambda: transport.writeSequence([b"ok", "text"])):
            try:
                bad()
            except TypeError as e:
                errors.append(type(e))

    _protocol, client = run(script)
    assert errors == [TypeError, TypeError]
    assert read_now(client) == b"fine"


def test_a_push_producer_is_paused_inside_a_pass_as_in_twisted(passes):  # type: ignore[no-untyped-def]
    """What a pass holds counts: past bufferSize it goes out, and a full socket pauses the producer
    at once (the response relay drains held bytes in a loop until it is paused)."""
    _reactor, run = passes
    producer = Pauses()
    written: list[int] = []

    def script(transport: Any) -> None:
        transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        transport.registerProducer(producer, True)
        piece = b"x" * 16384
        while not producer.events and len(written) < 1000:  # 16 MiB if nothing ever pauses
            transport.write(piece)
            written.append(len(piece))

    protocol, _client = run(script)
    assert producer.events == ["pause"]
    assert sum(written) < 4 << 20, f"{sum(written)} bytes were taken before the producer was paused"
    protocol.transport.unregisterProducer()


def test_an_error_in_a_pass_is_logged_and_loses_that_connection_as_in_twisted(passes):  # type: ignore[no-untyped-def]
    """The pass reads the eager transports itself (passenger.http.fastpath): an exception from the
    protocol is logged with its traceback and becomes the reason the connection is lost."""
    reactor, run = passes
    logged: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(logged.append)

    def script(transport: Any) -> None:
        transport.protocol.seen_in_pass = b""
        raise ValueError("boom in dataReceived")

    try:
        protocol, client = run(script)
        turn_until(reactor, lambda: protocol.lost)
    finally:
        globalLogPublisher.removeObserver(logged)
    assert isinstance(protocol.reason.value, ValueError)
    failures = [event["failure"] for event in logged if "failure" in event]  # log.err(), as Twisted's reactors
    assert [str(f.value) for f in failures] == ["boom in dataReceived"]
    assert "script" in failures[0].getTraceback()
    assert read_to_end(client) == b""
    assert protocol.transport.fileno() == -1


def test_the_peer_closing_is_a_clean_close(passes):  # type: ignore[no-untyped-def]
    reactor, run = passes
    protocol, client = run(lambda transport: None)
    client.shutdown(socket.SHUT_WR)
    turn_until(reactor, lambda: protocol.lost)
    assert protocol.reason.check(ConnectionDone)


def test_a_response_read_in_a_pass_leaves_before_the_requests_of_that_pass_are_read(passes):  # type: ignore[no-untyped-def]
    """A client connection is read last in its pass, after what the app connections' reads wrote is sent."""
    reactor, run = passes
    order: list[str] = []
    protocol, client = run(lambda transport: order.append("request") if order else None)

    class AppSide(Protocol):
        def dataReceived(self, data: bytes) -> None:
            order.append("response")
            protocol.transport.write(b"relayed " + data)  # as the relay writes an app's response

    made: list[AppSide] = []

    class ToApp(ClientFactory):
        def buildProtocol(self, addr: object) -> AppSide:
            made.append(AppSide())
            return made[0]

    with socket.create_server(("127.0.0.1", 0)) as app:
        connect_tcp(reactor, "127.0.0.1", app.getsockname()[1], ToApp(), timeout=5)
        turn_until(reactor, lambda: made and made[0].transport.connected)
        assert type(made[0].transport) is EagerTCPClient
        peer, _ = app.accept()
        with peer:
            order.append("ready")
            client.sendall(b"next request")  # ready first: epoll returns it first
            peer.sendall(b"response")  # loopback delivers inside send: both are ready for one poll
            reactor.iterate(0)
            made[0].transport.loseConnection()
    assert order == ["ready", "response", "request"], "one pass, the app connection read first"
    assert protocol.seen_in_pass == b"relayed response", "the response left before the request was read"


def test_write_pieces_leaves_other_transports_their_own_write_sequence() -> None:
    transport = StringTransport()
    write_pieces(transport, [b"one ", b"two"])
    assert transport.value() == b"one two"

"""passenger.http.uring on real sockets, and the reactor's pass sending through it.

What must hold: every staged send reaches its own socket, in one submit; what the kernel
does not take is reported (bytes sent, or minus the errno) without waiting for room; a
send the ring cannot hold is refused so the caller sends it itself; and a pass of the
reactor sends its writes through the ring, in order, with Twisted finishing what the
kernel did not take.  Skipped where the kernel refuses io_uring (the server then sends
one call per socket: tests/unit/test_eager.py covers that path).
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure

from passenger.http import uring
from passenger.http.eager import EagerTCPServer, make_eager
from passenger.http.uring import LARGEST, Ring, open_ring
from tests.io_uring import no_io_uring
from tests.unit.test_eager import read_now, read_to_end, turn_until


def a_ring(entries: int = uring.ENTRIES) -> Ring:
    try:
        return open_ring(entries)
    except OSError as error:
        no_io_uring(error.strerror)


@pytest.fixture
def ring() -> Iterator[Ring]:
    made = a_ring()
    yield made
    made.close()


def pair() -> tuple[socket.socket, socket.socket]:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    return ours, theirs


def test_each_staged_send_reaches_its_own_socket_in_one_submit(ring: Ring) -> None:
    (a, a_peer), (b, b_peer) = pair(), pair()
    with a, a_peer, b, b_peer:
        assert ring.add(a.fileno(), [b"hello ", b"world"], 11)
        assert ring.add(b.fileno(), [b"x" * 300], 300)
        assert ring.add(a.fileno(), [b"!"], 1)
        assert ring.staged == 3
        assert ring.submit() == [11, 300, 1]
        assert ring.staged == 0
        assert a_peer.recv(100) == b"hello world!"
        assert b_peer.recv(1000) == b"x" * 300
        assert ring.submit() == [], "nothing staged: nothing sent"


def test_a_full_socket_reports_what_it_took_and_then_eagain_without_waiting(ring: Ring) -> None:
    a, peer = pair()
    with a, peer:
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        chunk = b"y" * 8000
        while ring.add(a.fileno(), [chunk], len(chunk)):
            pass
        results = ring.submit()
        assert results[-1] == -errno.EAGAIN, "the socket filled up: the kernel said so instead of waiting"
        taken = [r for r in results if r > 0]
        assert taken and all(r == len(chunk) for r in taken[:-1])
        assert set(results[len(taken):]) == {-errno.EAGAIN}, "once full, every later send is refused"
        a.close()
        assert len(read_to_end(peer)) == sum(taken), "the counts are what the peer received"


def test_a_bad_descriptor_fails_alone(ring: Ring) -> None:
    a, peer = pair()
    with a, peer:
        closed = os.dup(a.fileno())
        os.close(closed)
        assert ring.add(closed, [b"lost"], 4)
        assert ring.add(a.fileno(), [b"kept"], 4)
        assert ring.submit() == [-errno.EBADF, 4]
        assert peer.recv(10) == b"kept"


def test_a_send_to_a_closed_peer_fails_with_its_errno(ring: Ring) -> None:
    a, peer = pair()
    with a:
        peer.close()
        assert ring.add(a.fileno(), [b"nobody"], 6)
        assert ring.submit() == [-errno.EPIPE]


def test_what_the_ring_cannot_hold_is_refused() -> None:
    small = a_ring(4)
    a, peer = pair()
    with a, peer:
        try:
            half = b"z" * (LARGEST // 2 + 1)
            assert not small.add(a.fileno(), [half, half], 2 * len(half)), "too large to be worth joining"
            assert small.staged == 0
            for _ in range(small.capacity):
                assert small.add(a.fileno(), [b"z"], 1)
            assert not small.add(a.fileno(), [b"z"], 1), "every entry is taken"
            assert small.submit() == [1] * small.capacity
            assert peer.recv(10) == b"z" * small.capacity
        finally:
            small.close()


def test_one_large_piece_is_sent_from_where_it_lies(ring: Ring) -> None:
    a, peer = pair()
    with a, peer:
        large = os.urandom(3 * LARGEST)
        assert ring.add(a.fileno(), [large], len(large))
        assert ring.add(a.fileno(), [bytearray(b"then a bytearray")], 16)
        assert ring.add(a.fileno(), [memoryview(b"and a view")], 10)
        assert ring.submit() == [len(large), 16, 10]
        a.close()
        assert read_to_end(peer) == large + b"then a bytearray" + b"and a view"


# The reactor's pass, sending through the ring.
class Collect(Protocol):
    def dataReceived(self, data: bytes) -> None:
        script = self.factory.script  # type: ignore[attr-defined]
        if script is not None:
            script(self.transport)


@pytest.fixture
def two_clients() -> Iterator[tuple[Any, list[Any], list[socket.socket]]]:
    """(reactor with its ring, [server transports], [client sockets]): two accepted connections."""
    from passenger.reactor import PassengerEPollReactor

    reactor = PassengerEPollReactor()
    refused = reactor.use_io_uring(True)
    if refused:
        no_io_uring(refused)
    transports: list[Any] = []
    clients: list[socket.socket] = []

    class Factory(ClientFactory):
        script: Any = None

        def buildProtocol(self, addr: object) -> Collect:
            protocol = Collect()
            protocol.factory = self
            return protocol

    factory = Factory()
    port = make_eager(reactor.listenTCP(0, factory, interface="127.0.0.1"))
    for _ in range(2):
        clients.append(socket.create_connection(("127.0.0.1", port.getHost().port), timeout=5))
        turn_until(reactor, lambda: sum(type(r) is EagerTCPServer for r in reactor.getReaders()) == len(clients))
    transports = [r for r in reactor.getReaders() if type(r) is EagerTCPServer]
    transports.sort(key=lambda t: t.getPeer().port)
    clients.sort(key=lambda s: s.getsockname()[1])
    reactor.script_factory = factory
    yield reactor, transports, clients
    for client in clients:
        client.close()
    port.stopListening()
    for selectable in reactor.removeAll():
        selectable.connectionLost(Failure(ConnectionDone()))
    reactor.ring = getattr(reactor, "real_ring", reactor.ring)
    reactor.use_io_uring(False)
    reactor._poller.close()


class Counting:
    """The reactor's ring, recording how many sends each submit makes (the compiled Ring's methods
    cannot be replaced)."""

    def __init__(self, ring: Ring) -> None:
        self.ring = ring
        self.counts: list[int] = []
        self.lost_sends = False

    @property
    def staged(self) -> int:
        return self.ring.staged

    @property
    def capacity(self) -> int:
        return self.ring.capacity

    def add(self, fd: int, pieces: Any, size: int) -> bool:
        return self.ring.add(fd, pieces, size)

    def submit(self) -> list[int]:
        self.counts.append(self.ring.staged)
        return self.ring.submit()


def counting_submits(reactor: Any) -> list[int]:
    counting = Counting(reactor.ring)
    reactor.ring = counting
    reactor.real_ring = counting.ring
    return counting.counts


def in_a_pass(reactor: Any, client: socket.socket, writes: list[tuple[Any, Any]], done: Any) -> None:
    """Make ``writes`` ((transport, bytes, or a list of them for ``writeSequence``), in order) in the
    pass that reads ``client``'s next bytes, then turn the reactor until ``done()``."""

    def script(transport: Any) -> None:
        for target, data in writes:
            target.writeSequence(data) if isinstance(data, list) else target.write(data)

    reactor.script_factory.script = script
    client.sendall(b"go")
    turn_until(reactor, done)


def test_the_writes_of_a_pass_to_several_sockets_leave_in_one_submit(two_clients: Any) -> None:
    reactor, (one, two), (client_one, client_two) = two_clients
    counts = counting_submits(reactor)

    in_a_pass(reactor, client_one, [(one, b"to one"), (two, [b"to ", b"two"]), (one, b", again")],
              lambda: counts)
    assert counts == [2], "one submit for both sockets"
    assert not reactor.corked
    assert read_now(client_one) == b"to one, again"
    assert read_now(client_two) == b"to two"


def test_what_the_kernel_does_not_take_is_finished_by_twisted_in_order(two_clients: Any) -> None:
    reactor, (one, two), (client_one, client_two) = two_clients
    one.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    client_one.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    filler = b"f" * 1000
    sent_before = 0
    try:
        while True:  # fill the socket behind Twisted's back: its own queue stays empty
            sent_before += one.socket.send(filler)
    except BlockingIOError:
        pass
    counts = counting_submits(reactor)

    in_a_pass(reactor, client_two, [(one, b"A" * 5000), (one, b"B" * 5000), (two, b"small")],
              lambda: counts)
    assert counts == [2]
    assert one.dataBuffer or one._tempDataLen, "the refused bytes wait in Twisted's queue"
    received = b""
    client_one.setblocking(False)
    expected = sent_before + 10000

    def drained() -> bool:
        nonlocal received
        try:
            received += client_one.recv(65536)
        except BlockingIOError:
            pass
        return len(received) >= expected

    turn_until(reactor, drained)
    assert received == b"f" * sent_before + b"A" * 5000 + b"B" * 5000
    assert read_now(client_two) == b"small"


def test_a_write_too_large_for_the_ring_is_sent_on_its_own(two_clients: Any) -> None:
    reactor, (one, two), (client_one, client_two) = two_clients
    counts = counting_submits(reactor)
    large = os.urandom(LARGEST + 1000)

    in_a_pass(reactor, client_two, [(one, b"head "), (one, large), (two, b"small"), (one, b" tail")],
              lambda: counts)
    assert counts == [1], "the small write went through the ring, the large one around it"
    client_one.settimeout(5)
    got = b""
    while len(got) < len(large) + 10:
        got += client_one.recv(65536)
    assert got == b"head " + large + b" tail"
    assert read_now(client_two) == b"small"


def test_without_io_uring_the_reactor_has_no_ring(two_clients: Any) -> None:
    reactor, (one, two), (client_one, client_two) = two_clients
    fd = reactor.ring.fd
    assert reactor.use_io_uring(False) is None
    assert reactor.ring is None
    with pytest.raises(OSError):
        os.fstat(fd)  # closed

    in_a_pass(reactor, client_one, [(one, b"one by one"), (two, b"as before")],
              lambda: not reactor.dispatching and read_now(client_two) == b"as before")
    assert read_now(client_one) == b"one by one"


def test_a_refused_io_uring_is_reported_and_leaves_no_ring(monkeypatch: pytest.MonkeyPatch) -> None:
    from passenger import reactor as reactor_module

    def refuse(entries: int = uring.ENTRIES) -> Ring:
        raise OSError(errno.EPERM, "io_uring_setup: Operation not permitted")

    monkeypatch.setattr(reactor_module, "open_ring", refuse)
    reactor = reactor_module.PassengerEPollReactor()
    try:
        assert reactor.use_io_uring(True) == "io_uring_setup: Operation not permitted"
        assert reactor.ring is None
    finally:
        reactor._poller.close()


class Failing(Counting):
    """The reactor's ring, whose submits fail as a dying ring's would."""

    def submit(self) -> list[int]:
        self.counts.append(self.ring.staged)
        raise OSError(errno.ENXIO, "No such device or address")

    def close(self) -> None:
        self.ring.close()


def test_a_ring_that_fails_is_given_up_and_nothing_is_lost(two_clients: Any) -> None:
    reactor, (one, two), (client_one, client_two) = two_clients
    failing = Failing(reactor.ring)
    reactor.ring = failing
    logged: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(logged.append)

    try:
        in_a_pass(reactor, client_one, [(one, b"first"), (two, b"second")],
                  lambda: failing.counts)
    finally:
        globalLogPublisher.removeObserver(logged.append)
    assert failing.counts == [2]
    assert reactor.ring is None, "the reactor gave the ring up"
    assert failing.ring.fd == -1, "and closed it"
    assert read_now(client_one) == b"first", "the staged sends went a call each"
    assert read_now(client_two) == b"second"
    errors = [formatEvent(event) for event in logged if event.get("log_level") == LogLevel.error]
    assert errors == ["io_uring failed ([Errno 6] No such device or address); the server sends a call per "
                      "socket from now on"]

    in_a_pass(reactor, client_two, [(one, b"third"), (two, b"fourth")],
              lambda: read_now(client_one) == b"third")
    assert read_now(client_two) == b"fourth"


def test_the_service_says_once_that_the_kernel_refused_io_uring(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from passenger import reactor as reactor_module
    from passenger.service import PassengerService
    from tests.unit.cli import parse

    refusals: list[int] = []

    def refuse(entries: int = uring.ENTRIES) -> Ring:
        refusals.append(entries)
        raise OSError(errno.EPERM, "io_uring_setup: Operation not permitted")

    monkeypatch.setattr(reactor_module, "open_ring", refuse)
    reactor = reactor_module.PassengerEPollReactor()
    logged: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(logged.append)
    try:
        service = PassengerService(parse("--app-start-command", "true")["config"], reactor=reactor)
        service._tune_reactor()
        service._tune_reactor()  # as a reload does
    finally:
        globalLogPublisher.removeObserver(logged.append)
        reactor._poller.close()
    assert len(refusals) == 2, "asked again at the reload"
    assert reactor.ring is None
    said = [formatEvent(event) for event in logged if "io_uring" in formatEvent(event)]
    assert said == ["io_uring is unavailable (io_uring_setup: Operation not permitted): each socket's writes are "
                    "sent by a call of their own"]


class LostAfterTaking(Failing):
    """The reactor's ring, failing after the kernel took the sends (their fate unknown)."""

    def submit(self) -> list[int]:
        self.counts.append(self.ring.staged)
        self.ring.submit()  # they go out...
        self.lost_sends = True  # ...but the ring cannot say so
        raise OSError(errno.ENXIO, "No such device or address")


def test_sends_whose_fate_the_ring_lost_abort_their_connections_rather_than_repeat(two_clients: Any) -> None:
    reactor, (one, two), (client_one, client_two) = two_clients
    lost = LostAfterTaking(reactor.ring)
    reactor.ring = lost

    in_a_pass(reactor, client_one, [(one, b"first"), (two, b"second")],
              lambda: lost.counts)
    assert reactor.ring is None
    turn_until(reactor, lambda: one.disconnected and two.disconnected)
    assert read_to_end(client_one) == b"first", "sent once, then the connection ends"
    assert read_to_end(client_two) == b"second"


def test_a_full_ring_makes_its_sends_before_it_takes_more(two_clients: Any) -> None:
    reactor, (one, two), (client_one, client_two) = two_clients
    own = reactor.ring
    small = Counting(a_ring(1))  # one entry: the second socket's send waits for the first submit
    reactor.ring = small

    try:
        in_a_pass(reactor, client_one, [(one, b"to one"), (two, b"to two")],
                  lambda: len(small.counts) == 2)
    finally:
        reactor.ring = own
        small.ring.close()
    assert small.counts == [1, 1]
    assert read_now(client_one) == b"to one"
    assert read_now(client_two) == b"to two"

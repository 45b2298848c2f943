"""Socket transports that send at once, or at the end of the reactor's pass.

Twisted's ``FileDescriptor.write`` only queues: the bytes go out on the next
pass of the reactor, after an ``epoll_ctl`` that asks for writability and
before another that takes it back.  For a relay that writes twice per request
that was a fifth of the server's time (py-spy, bench/compare_bench.py).

These transports send (``send`` for one piece, ``sendmsg`` for several, with no
join) as soon as nothing is queued, and hand only what the kernel did not take
to Twisted's own queue.  So back-pressure, producers, ``loseConnection`` and
errors keep Twisted's behaviour: an error seen here is left for Twisted's
``doWrite`` to meet again and report.

Under ``passenger.reactor.PassengerEPollReactor`` the writes made while it
dispatches one poll's events are held and sent together when the pass ends
(``fastpath.uncork``).  Sending to a process that sleeps in ``epoll_wait`` costs the
sender its wake-up, across CPUs; a burst of sends wakes each peer once for
several requests.  That took the system time per proxied request from 23 to
15 µs (bench/compare_bench.py's hello).  Held bytes never change what the peer
sees: they leave in order, before anything ``loseConnection`` waits for, and
past ``bufferSize`` at once, so a push producer is paused inside ``write`` as
Twisted does it.  Writes outside a pass (timers, other reactors) go at once.
A ``loseConnection`` in a pass with nothing in Twisted's queue closes the
connection once the pass's sends are made (``fastpath.close_pending``), where
Twisted asks for writability and closes from the next pass's ``doWrite``: two
``epoll_ctl`` and a pass less per connection, and its last bytes leave with the
others.

They are used where the server makes the connections itself: accepted client
connections (a listening port's ``transport`` class) and connections to app
processes (a connector's ``_makeTransport``).  Reactors that are not
posix-like (or fakes in tests) keep their own transports.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterable, Sequence
from functools import cache
from typing import Any
from weakref import WeakSet

from twisted.application.internet import StreamServerEndpointService
from twisted.internet import tcp
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamServerEndpoint
from twisted.internet.posixbase import PosixReactorBase
from zope.interface import implementer

from passenger.http import fastpath

try:
    from twisted.internet import unix
except ImportError:  # pragma: no cover (no AF_UNIX)
    unix = None  # type: ignore[assignment]


class EagerWrites:
    """Mixed into a Twisted socket transport (before it in the bases); the work is
    ``passenger.http.fastpath``'s, compiled."""

    #: Bytes written during the reactor's current pass, sent together when it ends (None: nothing waits).
    _corked: list[bytes] | None = None
    #: Their size: past ``bufferSize`` they go at once, so that a producer is paused as in Twisted.
    _corked_size = 0
    #: ``fastpath.queueing`` found nothing that sends new bytes to Twisted's queue, and nothing that could
    #: have changed that has happened since (each such method here clears it): ``take`` then skips the
    #: check's nine attribute lookups.
    _quiet = False

    def write(self, data: bytes) -> None:
        if not isinstance(data, bytes):
            super().write(data)  # Twisted's TypeError, at the caller
            return
        fastpath.take(self, (data,), len(data))

    def writeSequence(self, iovec: Iterable[bytes]) -> None:
        pieces = iovec if isinstance(iovec, (list, tuple)) else list(iovec)
        size = 0
        for piece in pieces:
            if not isinstance(piece, bytes):  # Twisted's TypeError, at the caller
                super().writeSequence(pieces)  # type: ignore[misc]
                return
            size += len(piece)
        fastpath.take(self, pieces, size)

    # Twisted's queue, for what the kernel did not take (called from fastpath).
    def _queue_pieces(self, pieces: Sequence[bytes]) -> None:
        self._quiet = False
        super().writeSequence(pieces)  # type: ignore[misc]

    def _queue_bytes(self, data: bytes) -> None:
        self._quiet = False
        super().write(data)  # type: ignore[misc]

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self._quiet = False  # a pull producer needs Twisted's queue
        super().registerProducer(producer, streaming)  # type: ignore[misc]

    # What must not overtake held bytes sends them first; what ends the connection drops them.
    def loseConnection(self) -> None:
        self._quiet = False
        this: Any = self  # with the Twisted transport this class is mixed into
        reactor = this.reactor
        if getattr(reactor, "dispatching", False) and this.producer is None and not fastpath.queueing(self):
            # In a pass, nothing left to Twisted (no queued bytes, no close or half-close under way, no
            # producer): what is held leaves with the pass's sends, and the connection closes right
            # after them (fastpath.close_pending).
            this.stopReading()
            this.disconnecting = 1
            reactor.closing.append(self)
            return
        fastpath.uncork(self)
        super().loseConnection()  # type: ignore[misc]

    def loseWriteConnection(self) -> None:
        fastpath.uncork(self)
        self._quiet = False
        super().loseWriteConnection()  # type: ignore[misc]

    def abortConnection(self) -> None:
        self._corked = None
        self._quiet = False
        super().abortConnection()  # type: ignore[misc]

    def connectionLost(self, reason: Any) -> None:
        self._corked = None
        self._quiet = False
        super().connectionLost(reason)  # type: ignore[misc]

    def writeSomeData(self, data: bytes) -> Any:
        """Twisted's ``doWrite`` sends its queue even when it is empty (after ``loseConnection``, whose
        bytes we sent at once): a ``send`` of nothing, 6% of a connection's time when each request
        has its own."""
        if not data:
            return 0
        return super().writeSomeData(data)  # type: ignore[misc]


class DirectReads:
    """Mixed into socket transports: ``doRead`` as Twisted's ``tcp.Connection`` does it, in one call
    (``fastpath.read``, which ``PassengerEPollReactor`` calls without this method).

    Twisted's passes the bytes through ``_dataReceived``, which checks what
    ``dataReceived`` returned to warn about a protocol returning a value; ours
    return None.  On a Unix socket Twisted reads with ``recvmsg`` for the
    descriptors a peer may pass (``IFileDescriptorReceiver``); HTTP passes none,
    our protocols take none, and the kernel closes any that come with a plain
    ``recv``.  Twisted's way cost 4 µs more per proxied request than TCP's."""

    #: The protocol splices what the socket has (``SpliceSource``): ``fastpath.read`` leaves it to it.
    splicing = False

    def doRead(self) -> Any:
        return fastpath.read(self)


class SpliceSource:
    """Mixed into app connections' transports: while ``splicing`` (set by the protocol), the readable
    socket is the protocol's to move to a client in the kernel (``UpstreamConnection.splice_read``,
    ``passenger.http.splice``) instead of ``fastpath.read``'s to read."""

    #: Bodies can be spliced from this transport's socket.
    splice_from = True


#: Listening TCP ports whose socket has TCP_NODELAY, which Linux gives every socket they accept.
NODELAY_PORTS: WeakSet[Any] = WeakSet()


class EagerTCPServer(DirectReads, EagerWrites, tcp.Server):
    """An accepted TCP connection that sends at once."""

    #: Bodies can be spliced into this socket.  Looked up on the class (``UpstreamConnection._start_splice``):
    #: a TLS wrapper over this transport forwards attribute lookups to it, and must not splice.
    splice_into = True

    def setTcpNoDelay(self, enabled: bool) -> None:
        """Nothing to do when the listening socket gave it already (``make_eager``): a ``setsockopt``
        per connection was 4 µs of a new connection's 59 on this VM."""
        if enabled and self.server in NODELAY_PORTS:
            return
        super().setTcpNoDelay(enabled)


class EagerTCPClient(SpliceSource, DirectReads, EagerWrites, tcp.Client):
    """A TCP connection to an app process that sends at once."""


fastpath.EAGER.update((EagerTCPServer, EagerTCPClient))
fastpath.READ_LAST.add(EagerTCPServer)


class ForgetsTransport:
    """Mixed into connectors: Twisted's keeps its transport after the connection ends (as it does not
    after a failed attempt), and the transport keeps the connector, a cycle that only the collector frees."""

    transport: tcp.Client | None
    state: str

    def connectionLost(self, reason: Any) -> None:
        super().connectionLost(reason)  # type: ignore[misc]
        if self.state == "disconnected":  # (not connecting again)
            self.transport = None


class EagerTCPConnector(ForgetsTransport, tcp.Connector):
    def _makeTransport(self) -> tcp.Client:
        return EagerTCPClient(self.host, self.port, self.bindAddress, self, self.reactor)


if unix is not None:
    class EagerUNIXServer(DirectReads, EagerWrites, unix.Server):
        """An accepted Unix-socket connection that sends at once."""

        splice_into = True

    class EagerUNIXClient(SpliceSource, DirectReads, EagerWrites, unix.Client):
        """A Unix-socket connection to an app process that sends at once."""

    class EagerUNIXConnector(ForgetsTransport, unix.Connector):
        def _makeTransport(self) -> Any:  # unix.Client (typed as tcp.Client in BaseConnector)
            return EagerUNIXClient(self.address, self, self.reactor, self.checkPID)

    fastpath.EAGER.update((EagerUNIXServer, EagerUNIXClient))
    fastpath.READ_LAST.add(EagerUNIXServer)


def eager(reactor: Any) -> bool:
    """Does ``reactor`` run Twisted's own socket transports (epoll, poll, select, asyncio)?"""
    return isinstance(reactor, PosixReactorBase)


def connect_tcp(reactor: Any, host: str, port: int, factory: Any, timeout: float) -> None:
    """``reactor.connectTCP`` with a transport that sends at once where the reactor allows."""
    if eager(reactor):
        EagerTCPConnector(host, port, factory, timeout, None, reactor).connect()
    else:
        reactor.connectTCP(host, port, factory, timeout=timeout)


def connect_unix(reactor: Any, path: str, factory: Any, timeout: float) -> None:
    """``reactor.connectUNIX`` with a transport that sends at once where the reactor allows."""
    if eager(reactor) and unix is not None:
        EagerUNIXConnector(path, factory, timeout, reactor, 0).connect()
    else:
        reactor.connectUNIX(path, factory, timeout=timeout)


@cache
def _eager_class(transport_class: type) -> type | None:
    """The eager variant of a listening port's connection class (None: leave it)."""
    if transport_class is tcp.Server:
        return EagerTCPServer
    if unix is not None and transport_class is unix.Server:
        return EagerUNIXServer
    return None


def make_eager(port: IListeningPort) -> IListeningPort:
    """Accept the connections of ``port`` (a Twisted TCP or Unix port) with eager transports."""
    current = getattr(port, "transport", None)
    eager_class = _eager_class(current) if isinstance(current, type) else None
    if eager_class is not None:
        port.transport = eager_class  # type: ignore[attr-defined]
        if eager_class is EagerTCPServer and sys.platform.startswith("linux"):
            _inherited_nodelay(port)
    return port


def _inherited_nodelay(port: Any) -> None:
    """Set TCP_NODELAY on the listening socket, for Linux to pass on to each accepted one."""
    try:
        port.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (AttributeError, OSError):
        return  # each connection sets it (FrontProtocol.connectionMade)
    NODELAY_PORTS.add(port)


@implementer(IStreamServerEndpoint)
class EagerEndpoint:
    """Listens through ``endpoint``, then makes the port's connections eager."""

    def __init__(self, endpoint: IStreamServerEndpoint) -> None:
        self._endpoint = endpoint

    def listen(self, factory: IProtocolFactory) -> Deferred[IListeningPort]:
        return self._endpoint.listen(factory).addCallback(make_eager)


def listening_service(description: str, factory: IProtocolFactory, reactor: Any) -> StreamServerEndpointService:
    """``strports.service`` for the HTTP front end: the same endpoints, with eager transports."""
    service = StreamServerEndpointService(EagerEndpoint(serverFromString(reactor, description)), factory)
    service._raiseSynchronously = True  # as strports.service: a port in use fails startService at once
    return service

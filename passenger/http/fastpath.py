"""The per-event work of the eager transports and of the reactor's pass, compiled.

``passenger.http.eager``'s transports are Twisted classes, which mypyc cannot
compile, and ``PassengerEPollReactor`` is Twisted's reactor.  Run as Python,
their methods were a fifth of the server's CPU per proxied request: about
twenty interpreted frames (the pass's loop, Twisted's ``_doReadOrWrite``,
``doRead``, ``write``, ``_take``, ``uncork``, ``_send``...; perf with
``--call-graph dwarf``, bench/compare_bench.py's hello).  So that work is
here, as functions of the transport, which mypyc compiles with the request
path; the classes' methods call them.

The functions keep Twisted's behaviour to the letter where they stand in for
it: a read event alone on one of the transports in ``EAGER`` is handled as
``_doReadOrWrite`` handles it (every other event still goes there), and what
the kernel does not take goes to Twisted's own queue (``_queue_pieces``/
``_queue_bytes``, the transport's ``super()`` methods).
"""

from __future__ import annotations

import select
from collections.abc import Sequence
from typing import Any, Final

from twisted.internet import posixbase
from twisted.internet.error import ConnectionFdescWentAway
from twisted.internet.main import CONNECTION_DONE, CONNECTION_LOST
from twisted.python import log

#: Pieces passed to one sendmsg (IOV_MAX is 1024 on Linux).
MAX_PIECES: Final = 256

#: The eager transport classes (``passenger.http.eager``), by exact type: ``run_pass`` reads their read
#: events itself (``read``), and ``write_pieces`` hands their writes to ``take``.
EAGER: Final[set[type]] = set()
#: Those of accepted (client) connections: ``run_pass`` reads them last, after sending what the rest of
#: the pass wrote, so that the responses an app finished go out before the new requests are read.
READ_LAST: Final[set[type]] = set()

_EPOLLIN: Final[int] = select.EPOLLIN if hasattr(select, "EPOLLIN") else 1
#: The reason ``_doReadOrWrite`` gives for a descriptor whose ``fileno()`` is -1 (private to Twisted).
_NO_FILEDESC: Final[BaseException] = getattr(posixbase, "_NO_FILEDESC", None) or ConnectionFdescWentAway(
    "File descriptor lost")


# The reactor's pass.
def run_pass(reactor: Any, events: list[tuple[int, int]]) -> None:
    """Dispatch one poll's events, holding the writes they make, then send what was held.

    Client connections' reads come last, after what the others wrote is sent: a burst of new
    requests does not hold up the responses that arrived with it (at half the maximum rate, p50
    fell from 0.60 to 0.53 ms at the same CPU: docs/performance.md)."""
    selectables: dict[int, Any] = reactor._selectables
    eager, read_last = EAGER, READ_LAST
    later: list[tuple[int, Any]] = []
    reactor.dispatching = True
    try:
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is None:
                continue
            kind = type(selectable)
            if event == _EPOLLIN and kind in eager:
                if kind in read_last:
                    later.append((fd, selectable))
                else:
                    read_event(reactor, selectable)
            else:
                reactor._doReadOrWrite(selectable, fd, event)
        if later:
            send_corked(reactor)
            for fd, selectable in later:
                if selectables.get(fd) is selectable:  # not closed meanwhile
                    read_event(reactor, selectable)
    finally:
        reactor.dispatching = False
        send_corked(reactor)
        if reactor.closing:
            close_pending(reactor)


def close_pending(reactor: Any) -> None:
    """Close the connections that ``loseConnection`` left to the end of the pass
    (``EagerWrites.loseConnection``), now that what they held is sent.

    Twisted's way, asking for writability and closing from the next pass's ``doWrite``, cost two
    ``epoll_ctl`` and a pass per connection.  One whose bytes the kernel did not all take (they
    are in Twisted's queue now) is left to that way."""
    closing: list[Any] = reactor.closing
    reactor.closing = []
    for transport in closing:
        if not transport.connected or transport._aborting:
            continue  # closed or aborted meanwhile
        if transport._tempDataLen or transport.dataBuffer or transport.producer is not None:
            transport.startWriting()  # doWrite sends the rest, then closes
            continue
        try:
            reactor._disconnectSelectable(transport, CONNECTION_DONE, False)
        except BaseException:
            log.err()  # as the reactor would, and the others still close


def read_event(reactor: Any, transport: Any) -> None:
    """A read event alone, as Twisted's ``_doReadOrWrite`` handles it: an error is logged and loses the
    connection, as does what ``doRead`` returns."""
    why: Any
    try:
        why = _NO_FILEDESC if transport.fileno() == -1 else read(transport)
    except BaseException as error:
        log.err()  # the exception being handled, with its traceback
        why = error
    if why:
        reactor._disconnectSelectable(transport, why, True)


def read(transport: Any) -> Any:
    """``doRead`` of a TCP or Unix transport, in one call; its protocol splices instead while ``splicing``."""
    if transport.splicing:
        return transport.protocol.splice_read()
    try:
        data = transport.socket.recv(transport.bufferSize)
    except BlockingIOError:
        return None
    except OSError:
        return CONNECTION_LOST
    if not data:
        return CONNECTION_DONE
    transport.protocol.dataReceived(data)
    return None


def send_corked(reactor: Any) -> None:
    """Send what the transports held so far in the pass (at its end, and before its client reads).

    The list is taken first: a write made while sending (a producer told to pause, say) before the
    client reads is held in a new one for the end of the pass; at the end, the pass is over
    (``dispatching`` is off) and such a write goes at once.  With the reactor's io_uring
    (``passenger.http.uring``), the sends go out in one system call."""
    corked: list[Any] = reactor.corked
    if corked:
        reactor.corked = []
        ring: Any = reactor.ring
        if ring is None or len(corked) < 2:
            for transport in corked:
                uncork(transport)
        else:
            send_through(reactor, ring, corked)


def send_through(reactor: Any, ring: Any, corked: list[Any]) -> None:
    """``uncork`` for each of ``corked``, with the sends staged in ``ring`` and made together; a send
    the ring does not take (several pieces too large to join) goes at once, and if the ring fails,
    the rest go a call each (each socket's bytes still leave in order)."""
    staged: list[tuple[Any, list[bytes]]] = []
    for transport in corked:
        pieces = to_send(transport)
        if pieces is None:
            continue
        if ring is not None and ring.staged >= ring.capacity:  # full: make what it holds first
            if not submit(reactor, ring, staged):
                ring = None
            staged = []
        if ring is not None and ring.add(transport.socket.fileno(), pieces, transport._corked_size):
            staged.append((transport, pieces))
        else:
            send(transport, pieces)
    if staged:
        submit(reactor, ring, staged)


def submit(reactor: Any, ring: Any, staged: list[tuple[Any, list[bytes]]]) -> bool:
    """Make the staged sends; the bytes the kernel did not take go to Twisted's queue (an error counts
    as nothing sent, as in ``send_one``).  If the ring itself fails, the reactor gives it up (it logs
    why) and the staged sends are made a call each instead, or, if the ring had taken them, their
    connections are aborted; False then."""
    try:
        results: list[int] = ring.submit()
    except OSError as error:
        lost: bool = ring.lost_sends
        reactor.ring_failed(error)
        for transport, pieces in staged:
            if lost:
                transport.abortConnection()  # how much of it went out is unknown: its stream cannot go on
            else:
                send(transport, pieces)
        return False
    for (transport, pieces), result in zip(staged, results, strict=True):
        queue_unsent(transport, pieces, result if result > 0 else 0)
    return True


# Writes.
def write_pieces(transport: Any, pieces: Sequence[bytes]) -> None:
    """``transport.writeSequence(pieces)``, straight into the eager path when the transport has one."""
    if type(transport) in EAGER:
        size = 0
        for piece in pieces:
            size += len(piece)
        take(transport, pieces, size)
    else:
        transport.writeSequence(pieces)


def queueing(transport: Any) -> bool:
    """Leave everything to Twisted: bytes are queued, the connection is closing or half-closing, or a
    pull producer is registered (it is asked for more from ``doWrite``, which needs queued bytes).

    ``take`` keeps a False answer (``_quiet``) until one of the transport's methods that could change
    it runs; the one change no method of ours sees, Twisted's ``doWrite`` setting ``_writeDisconnected``,
    comes only after ``_writeDisconnecting``, which already answers True."""
    return bool(transport._tempDataLen or transport.dataBuffer or not transport.connected
                or transport.disconnecting or transport._writeDisconnecting or transport._writeDisconnected
                or transport._aborting or (transport.producer is not None and not transport.streamingProducer))


def take(transport: Any, pieces: Sequence[bytes], size: int) -> None:
    """Bytes to write: held in a pass, queued behind what Twisted holds, else sent now."""
    corked: list[bytes] | None = transport._corked
    if corked is None:
        if not transport._quiet:
            if queueing(transport):
                transport._queue_pieces(pieces)
                return
            transport._quiet = True  # until one of the transport's methods that could change it
        reactor = transport.reactor
        if not getattr(reactor, "dispatching", False):
            send(transport, pieces)
            return
        corked = []  # hold this pass's writes
        transport._corked = corked
        transport._corked_size = 0
        reactor.corked.append(transport)
    corked.extend(pieces)
    held: int = transport._corked_size + size
    transport._corked_size = held
    if held > transport.bufferSize:
        uncork(transport)


def uncork(transport: Any) -> None:
    """The reactor's pass is over (or the transport must act now): send what it held."""
    pieces = to_send(transport)
    if pieces is not None:
        send(transport, pieces)


def to_send(transport: Any) -> list[bytes] | None:
    """Take what the transport held: the pieces to send now, or None (nothing held, or Twisted's
    queue took them).

    ``take`` found nothing queued when it began to hold, and nothing since can have queued
    bytes or closed the connection without handling what is held first: ``loseConnection``
    and ``loseWriteConnection`` send it, ``abortConnection`` and ``connectionLost`` drop it,
    and only ``send`` hands Twisted bytes.  A pull producer registered since is the one
    change left; Twisted's queue must take the bytes then, so that its ``doWrite`` asks the
    producer for more once they are out."""
    pieces: list[bytes] | None = transport._corked
    transport._corked = None
    if not pieces:
        return None
    if transport.producer is not None and not transport.streamingProducer:
        transport._queue_pieces(pieces)
        return None
    return pieces


def send(transport: Any, pieces: Sequence[bytes]) -> None:
    """Send now what the kernel takes; the rest goes to Twisted's queue (nothing may be queued)."""
    if len(pieces) == 1:
        send_one(transport, pieces[0])
        return
    if len(pieces) > MAX_PIECES:
        transport._queue_pieces(pieces)
        return
    try:
        sent: int = transport.socket.sendmsg(pieces)
    except OSError:  # as in send_one()
        sent = 0
    queue_unsent(transport, pieces, sent)


def queue_unsent(transport: Any, pieces: Sequence[bytes], sent: int) -> None:
    """Queue in Twisted what is left of ``pieces`` once the kernel took ``sent`` bytes of them."""
    for index, piece in enumerate(pieces):
        if sent < len(piece):
            rest = [piece[sent:], *pieces[index + 1:]] if sent else list(pieces[index:])
            transport._queue_pieces(rest)
            return
        sent -= len(piece)


def send_one(transport: Any, data: bytes) -> None:
    try:
        sent: int = transport.socket.send(data)
    except OSError:  # EAGAIN: queued; an error: Twisted's doWrite meets it again and closes its way
        sent = 0
    if sent != len(data):
        transport._queue_bytes(data[sent:])

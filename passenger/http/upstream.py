"""Connections to app processes: send one request at a time, parse the response.

A connection belongs to one process and is kept alive between requests
(architecture.md, decision 1): after a complete response that allows reuse it
goes back to the process's idle list.  The response head is rebuilt once with
the hop-by-hop headers removed; the body streams to the client as it comes,
re-chunked when the app's framing cannot be passed on as it is.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

from httptools import HttpParserError, HttpParserUpgrade, HttpResponseParser
from twisted.internet.interfaces import IConnector
from twisted.internet.main import CONNECTION_DONE, CONNECTION_LOST
from twisted.internet.protocol import ClientFactory
from twisted.protocols.basic import FileSender
from twisted.python.failure import Failure

from passenger.http.congestion import use_reno_within_host
from passenger.http.connection import CLOSED_RESPONSE_PARSER, ConnectionProtocol
from passenger.http.dates import date_line
from passenger.http.fastpath import queueing, uncork, write_pieces
from passenger.http.headers import CHUNKED, CONNECTION, DATE, LENGTH, PASSED, RESPONSE_SPECIAL, connection_tokens
from passenger.http.splice import AVAILABLE as SPLICE_AVAILABLE
from passenger.http.splice import FLAGS as SPLICE_FLAGS
from passenger.http.splice import PIPE_SIZE, SPLICE_MIN, give_back, read_all, take_pipe

if TYPE_CHECKING:
    from passenger.http.front import FrontProtocol, Request
    from passenger.pool.process import AppProcess

# How the response body is framed towards the client.
BODY_NONE: Final = 0  # HEAD, 204, 304: no body
BODY_LENGTH: Final = 1  # Content-Length passed on, body bytes as they are
BODY_CHUNKED: Final = 2  # the relay frames each piece as a chunk
BODY_UNTIL_CLOSE: Final = 3  # HTTP/1.0 client, unknown length: close when done

#: Bytes asked of the app's socket per read: a response head and what follows it (a large body's rest is
#: spliced, so a bigger first read only copies more of it through Python).
READ_SIZE: Final = 64 * 1024
#: Per read while a large body passes through Python (chunked, or for a slow client): fewer passes.
BODY_READ_SIZE: Final = 256 * 1024

_NO_BODY_STATUS: Final = (204, 304)
_CHUNK_END: Final = b"0\r\n\r\n"


class UpstreamConnection(ConnectionProtocol):
    """One keep-alive HTTP/1.1 connection to an app process."""

    def __init__(self, process: AppProcess, front: FrontProtocol | None) -> None:
        self.process = process
        self.front = front
        self.parser = HttpResponseParser(self)
        self.reused = False
        #: Bytes of the current response have arrived (so it cannot be retried).
        self.answered = False
        self.headers: list[tuple[bytes, bytes]] = []
        self.reason = b""
        self.mode = BODY_NONE
        self.interim = False
        self.head_done = False
        self.reset_parser = False
        self.tunnel = False
        self.closed = False
        #: The app gave neither a length nor chunking: its body ends when it closes.
        self.until_close = False
        #: What this read of the app's bytes has for the client: written once the whole read
        #: has parsed (one write per read, and nothing of a response that turns out broken).
        self.out: list[bytes] | None = None
        #: The response head is in ``out``, not yet written.
        self.head_unsent = False
        #: Streams a spooled request body (buffer_upload) to the app.
        self.sending_file: FileSender | None = None
        #: The request body still streams to the app, which paces the client (a registered producer).
        self.streaming = False
        #: A Content-Length body: its size, the bytes the parser has seen, and what the app's
        #: keep-alive says (decided at the head, for the reads that bypass the parser).
        self.body_expected = self.body_seen = 0
        self.keep_alive = True
        #: Bytes of the body still to come, relayed without the parser (after the body's first read).
        self.body_left = 0
        #: While the body is spliced (``passenger.http.splice``): the pipe (read end, write end) and the
        #: client's socket.
        self.pipe: tuple[int, int] | None = None
        self.splice_target = -1

    # Connection events.
    def connectionMade(self) -> None:
        transport = self.transport
        assert transport is not None
        front = self.front
        if self.process.unix_path is None:
            transport.setTcpNoDelay(True)
            if front is not None and front.factory.loopback_reno:
                use_reno_within_host(transport)
        transport.bufferSize = READ_SIZE
        self.process.connections.add(self)
        if front is None:
            transport.loseConnection()
        else:
            front.upstream_connected(self)

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:
        self.closed = True
        if self.pipe is not None:
            self._stop_splice(empty=False)
        process = self.process
        process.connections.discard(self)
        try:
            process.idle.remove(self)
        except ValueError:
            pass
        front = self.front
        self.front = None
        if front is not None:
            if self.tunnel:
                front.tunnel_closed()
            elif self.head_done and self.until_close:
                # The app framed its body by closing the connection: that is the end.
                self.front = front
                self._complete(reusable=False)
            else:
                front.upstream_lost(self, reason)
        if self.out is None:  # else a read is being parsed: dataReceived lets go when it ends
            self._let_go()

    def _let_go(self) -> None:
        """Cut the cycle of a closed connection and its parser (``NoCallbacks``)."""
        self.parser = CLOSED_RESPONSE_PARSER

    def process_gone(self) -> None:
        """The process died: this connection is useless."""
        if self.transport is not None:
            self.transport.abortConnection()

    # Sending.
    def send(self, front: FrontProtocol, request: Request) -> None:
        """Write the request head and whatever body has been read so far."""
        self.front = front
        self.answered = False
        self.head_done = False
        body = request.body
        if body:
            if request.chunked and not request.upgrade:
                pieces = [request.head]
                for chunk in body:
                    pieces += (b"%x\r\n" % len(chunk), chunk, b"\r\n")
                self._write(pieces)
            else:
                self._write([request.head, *body])
            body.clear()
        else:
            self._write((request.head,))
        request.sent = True
        transport: Any = self.transport
        if request.spool is not None:  # a buffered body on disk: streamed as the app reads
            self._flush_held()
            self.sending_file = sender = FileSender()
            sender.beginFileTransfer(request.spool, transport).addBoth(self._file_sent)
        elif request.complete:
            if request.chunked:
                self._write((_CHUNK_END,))
        elif request.has_body or request.upgrade:
            # The rest of the body (or the tunnel) streams through, paced by this connection.
            self.streaming = True
            transport.registerProducer(front, True)

    def _write(self, pieces: Sequence[bytes]) -> None:
        """Bytes for the app.  While the client's read is being parsed they wait for its end, so
        nothing of a read that turns out malformed reaches the app (the transports send at once)."""
        front = self.front
        if front is not None and front.held is not None and (front.held_for is None or front.held_for is self):
            front.held_for = self
            front.held.extend(pieces)
        else:
            write_pieces(self.transport, pieces)

    def _flush_held(self) -> None:
        front = self.front
        if front is not None and front.held_for is self:
            front.flush_held()

    def _file_sent(self, result: object) -> None:
        self.sending_file = None

    def stop_sending_file(self) -> bool:
        """The response came before all of a spooled body was sent: stop (the connection is not reusable)."""
        sender = self.sending_file
        if sender is None:
            return False
        self.sending_file = None
        sender.stopProducing()
        return True

    def send_body(self, request: Request, data: bytes) -> None:
        if request.chunked and not request.upgrade:
            self._write((b"%x\r\n" % len(data), data, b"\r\n"))
        else:
            self._write((data,))

    def end_body(self, request: Request) -> None:
        """The client's body is complete: close the chunking and stop pacing the client."""
        self.streaming = False
        transport: Any = self.transport
        if request.chunked and not request.upgrade:
            self._write((_CHUNK_END,))
        transport.unregisterProducer()
        # The app connection may have paused the client on the last piece of body.
        if self.front is not None:
            self.front.resumeProducing()

    # Receiving.
    def dataReceived(self, data: bytes) -> None:
        if self.tunnel:
            front = self.front
            if front is not None and front.transport is not None:
                front.transport.write(data)
            return
        if self.body_left:
            self._relay_body(data)
            return
        self.answered = True
        self.out = []
        try:
            self.parser.feed_data(data)
        except HttpParserUpgrade as e:
            self._flush()
            self._upgraded(data[e.args[0]:])
        except HttpParserError as e:
            self._bad_response(str(e))
            self.out = None
            return
        else:
            self._flush()
            if self.head_done and self.mode == BODY_CHUNKED:
                self._body_reads()
            if self.head_done and self.mode == BODY_LENGTH and self.front is not None:
                # The rest of this body passes through as read, without the parser (nor its copies).
                self.body_left = self.body_expected - self.body_seen
                if self.body_left >= SPLICE_MIN:
                    self._start_splice()
        self.out = None
        if self.closed:
            self._let_go()
        elif self.reset_parser:
            self.reset_parser = False
            self.parser = HttpResponseParser(self)

    def _relay_body(self, data: bytes) -> None:
        """Bytes of a body framed by Content-Length, after its first read: relayed as they are."""
        left = self.body_left
        rest = b""
        if len(data) > left:  # more than the app announced: framed as the parser would see it
            data, rest = data[:left], data[left:]
        self.body_left = left - len(data)
        self._body_reads()
        front = self.front
        if front is not None:
            front.sent += len(data)
            if front.transport is not None:
                front.write_response((data,))
        if not self.body_left:
            self._length_body_done()
            if rest:
                self.dataReceived(rest)
        elif self.body_left >= SPLICE_MIN and self.pipe is None:
            self._start_splice()

    def _length_body_done(self) -> None:
        """A body framed by Content-Length has all passed (the parser, which stopped inside it, starts anew)."""
        self.parser = HttpResponseParser(self)
        self._complete(reusable=self.keep_alive)

    def _body_reads(self) -> None:
        """The body goes on through Python: read it in bigger pieces until the response ends."""
        transport: Any = self.transport
        if transport is not None and transport.bufferSize != BODY_READ_SIZE:
            transport.bufferSize = BODY_READ_SIZE

    # Splicing: the rest of a large body goes from the app's socket to the client's in the kernel.
    def _start_splice(self) -> None:
        """Splice the rest of this body if both sockets allow it and the client keeps up."""
        front = self.front
        if not SPLICE_AVAILABLE or front is None:
            return
        client: Any = front.transport
        upstream: Any = self.transport
        # Asked of the classes: a wrapper such as TLS (a ProtocolWrapper) answers for the socket beneath it.
        if not getattr(type(client), "splice_into", False) or not getattr(type(upstream), "splice_from", False):
            return  # TLS to the client, another reactor's transports, a test's fake
        relay = front.relay
        if relay is not None and (relay.held or relay.client_paused):
            return  # a slow client: its bytes are held, in order, by the relay
        uncork(client)  # what this pass wrote to the client (the head) leaves first
        if queueing(client):
            return
        pipe = take_pipe()
        if pipe is None:
            return
        self.pipe = pipe
        self.splice_target = client.fileno()
        upstream.splicing = True

    def splice_read(self) -> Any:
        """The app's socket is readable while the body is spliced (``fastpath.read`` hands it over).

        Moves what it has through the pipe to the client.  If the client takes less, what the pipe
        holds goes the usual way and the body leaves the splice path (the relay holds bytes for a slow
        client).  Returns what ``doRead`` would: None, or why the connection is lost."""
        pipe = self.pipe
        transport = self.transport
        front = self.front
        if pipe is None or transport is None or front is None:
            self._stop_splice(empty=True)
            return None
        source = transport.fileno()
        while self.body_left:
            try:
                size = os.splice(source, pipe[1], min(self.body_left, PIPE_SIZE), flags=SPLICE_FLAGS)
            except BlockingIOError:
                return None
            except OSError:
                self._stop_splice(empty=True)
                return CONNECTION_LOST
            if not size:  # the app closed inside the body: connectionLost says so to the front end
                self._stop_splice(empty=True)
                return CONNECTION_DONE
            moved = self._splice_out(pipe[0], size)
            self.body_left -= moved
            front.sent += moved
            if moved < size:
                rest = read_all(pipe[0], size - moved)
                self._stop_splice(empty=len(rest) == size - moved)
                self._relay_body(rest)
                return None
        self._stop_splice(empty=True)
        self._length_body_done()
        return None

    def _splice_out(self, read_end: int, size: int) -> int:
        """Move up to ``size`` bytes from the pipe to the client; how many it took."""
        moved = 0
        target = self.splice_target
        while moved < size:
            try:
                done = os.splice(read_end, target, size - moved, flags=SPLICE_FLAGS)
            except OSError:  # full (EAGAIN) or gone (EPIPE): the usual path meets it again
                break
            if not done:
                break
            moved += done
        return moved

    def _stop_splice(self, empty: bool) -> None:
        pipe, self.pipe = self.pipe, None
        transport: Any = self.transport
        if transport is not None:
            transport.splicing = False
        if pipe is not None:
            give_back(pipe, empty)

    def _emit(self, *pieces: bytes) -> None:
        """Bytes for the client: kept until the read is parsed, or written now outside a read."""
        out = self.out
        if out is not None:
            out.extend(pieces)
            return
        front = self.front
        if front is not None and front.transport is not None:
            front.write_response(pieces)

    def _flush(self) -> None:
        out = self.out
        if out:
            self.out = []
            self.head_unsent = False
            front = self.front
            if front is not None and front.transport is not None:
                front.write_response(out)

    def on_message_begin(self) -> None:
        self.headers = []
        self.reason = b""

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        front = self.front
        if front is None or front.active is None:
            return
        request = front.active
        status = self.parser.get_status_code()
        if status < 200 and status != 101:
            self.interim = True
            if request.version != "1.0":
                self._emit(b"HTTP/1.1 %d %s\r\n\r\n" % (status, self.reason))
            return
        self.head_done = True
        parts = [b"HTTP/1.1 %d %s\r\n" % (status, self.reason)]
        length: bytes | None = None
        chunked = dated = False
        listed: set[bytes] | None = None
        special = RESPONSE_SPECIAL
        for name, value in self.headers:  # one pass and one lookup for the usual header
            kind = special.get(name.lower())
            if kind is None:
                parts += (name, b": ", value, b"\r\n")
            elif kind == DATE:
                dated = True
                parts += (name, b": ", value, b"\r\n")
            elif kind == LENGTH:
                length = value
            elif kind == CHUNKED:
                chunked = True
            elif kind == CONNECTION:
                listed = connection_tokens(value) if listed is None else listed | connection_tokens(value)
        if listed is not None:  # the app named more hop-by-hop headers: leave those out too
            parts[1:] = [piece for name, value in self.headers
                         if special.get(lname := name.lower()) in PASSED and lname not in listed
                         for piece in (name, b": ", value, b"\r\n")]
        if request.response_extra:
            parts.append(request.response_extra)
        if not dated:
            parts.append(date_line())
        if front.factory.response_extra:
            parts.append(front.factory.response_extra)
        keep_alive = request.keep_alive and not front.closing
        if status == 101:
            self.mode = BODY_NONE
            parts.append(b"Connection: upgrade\r\n")
            for name, value in self.headers:
                if name.lower() == b"upgrade":
                    parts += (b"Upgrade: ", value, b"\r\n")
            parts.append(b"\r\n")
            front.status = status
            front.begin_response(self, BODY_NONE, True)
            self._flush()
            self._emit(*parts)
            self._flush()
            return
        if request.is_head or status in _NO_BODY_STATUS:
            self.mode = BODY_NONE
            if length is not None and status != 204:
                parts += (b"Content-Length: ", length, b"\r\n")
            if request.is_head:
                # httptools cannot be told a HEAD response has no body; start afresh.
                self.reset_parser = True
        elif length is not None:
            self.mode = BODY_LENGTH
            self.body_expected = int(length)
            self.body_seen = 0
            self.keep_alive = self.parser.should_keep_alive()
            parts += (b"Content-Length: ", length, b"\r\n")
        else:
            self.until_close = not chunked
            if request.version != "1.0":
                self.mode = BODY_CHUNKED
                parts.append(b"Transfer-Encoding: chunked\r\n")
            else:
                self.mode = BODY_UNTIL_CLOSE
                keep_alive = False
        if not keep_alive:
            parts.append(b"Connection: close\r\n\r\n")
        elif request.version == "1.0":
            parts.append(b"Connection: keep-alive\r\n\r\n")
        else:
            parts.append(b"\r\n")
        front.status = status
        front.begin_response(self, self.mode, keep_alive)
        self._emit(b"".join(parts))  # one piece: Twisted checks each piece of a writeSequence in Python
        self.head_unsent = self.out is not None
        if self.mode == BODY_NONE and status != 101:
            self._complete()

    def on_body(self, data: bytes) -> None:
        front = self.front
        if front is None:
            return
        transport = front.transport
        if transport is None:
            return
        front.sent += len(data)
        self.body_seen += len(data)
        if self.mode == BODY_CHUNKED:
            self._emit(b"%x\r\n" % len(data), data, b"\r\n")
        else:
            self._emit(data)

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        if self.mode != BODY_NONE:
            self._complete()

    def _complete(self, reusable: bool | None = None) -> None:
        front = self.front
        if front is None:
            return
        if self.mode == BODY_CHUNKED:
            self._emit(_CHUNK_END)
        self._flush()  # before the front end answers anything else on the connection
        transport: Any = self.transport
        if transport is not None and transport.bufferSize != READ_SIZE:
            transport.bufferSize = READ_SIZE
        self.head_done = False
        self.until_close = False
        if reusable is None:
            reusable = self.parser.should_keep_alive()
        front.end_response(self, reusable)

    def _upgraded(self, rest: bytes) -> None:
        front = self.front
        if front is None:
            return
        self.tunnel = True
        front.start_tunnel(self)
        if rest and front.transport is not None:
            front.transport.write(rest)

    def _bad_response(self, why: str) -> None:
        front = self.front
        if front is not None:
            if self.head_unsent:  # nothing of this response reached the client: it can still get a 502
                self.head_unsent = False
                self.out = None
                front.unbegin_response()
            else:
                self._flush()  # the body's good part, parsed before the error, goes to the client
            front.bad_response(self, why)
        self.front = None
        if self.transport is not None:
            self.transport.abortConnection()


class UpstreamFactory(ClientFactory):
    """Opens one connection to ``process`` for ``front``."""

    noisy = False

    def __init__(self, process: AppProcess, front: FrontProtocol) -> None:
        self.process = process
        self.front: FrontProtocol | None = front

    def buildProtocol(self, addr: object) -> UpstreamConnection:  # type: ignore[override]  # not a twisted Protocol
        front, self.front = self.front, None
        return UpstreamConnection(self.process, front)

    def clientConnectionFailed(self, connector: IConnector, reason: Failure) -> None:
        front, self.front = self.front, None
        if front is not None:
            front.connect_failed(self.process, reason)

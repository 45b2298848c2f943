"""The client side of the relay: one protocol per client connection.

Requests are parsed with httptools (llhttp), their head is rebuilt once with
the hop-by-hop and forwarding headers replaced, and their body streams to the
app process as it arrives.  Requests on one connection are served in order:
a pipelined request waits, parsed and buffered, until the one before it is
answered, and reading from the client pauses meanwhile.

Back-pressure runs both ways: the app connection pauses this client's reads
when it cannot take more body, and the client connection pauses the app
connection's reads when the client is slow to take the response.
"""

from __future__ import annotations

import ipaddress
import os
import tempfile
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, BinaryIO, ClassVar, Final

from httptools import HttpParserCallbackError, HttpParserError, HttpParserUpgrade, HttpRequestParser
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IProtocolNegotiationFactory, IPushProducer, ISSLTransport
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import classImplements, implementer

from passenger import __version__
from passenger.config import ServerConfig
from passenger.http.access_log import AccessLog
from passenger.http.congestion import is_loopback, use_reno
from passenger.http.connection import CLOSED_REQUEST_PARSER, ConnectionProtocol
from passenger.http.errors import REASONS, error_response, page_response
from passenger.http.fastpath import write_pieces
from passenger.http.headers import (
    FORWARDED,
    HOST_CHARS,
    NAME_CHARS,
    NAME_CHARS_UNDERSCORE,
    REQUEST_DROPPED,
    REQUEST_ID_CHARS,
    connection_tokens,
    pick,
)
from passenger.http.response_buffer import ResponseBuffer
from passenger.http.router import Router
from passenger.http.static import StaticFile, StaticFiles
from passenger.http.upstream import BODY_UNTIL_CLOSE, UpstreamConnection, UpstreamFactory
from passenger.pool.process import IDLE_CONNECTIONS, READY
from passenger.spawn.report import SpawnReport, error_answer

if TYPE_CHECKING:
    from passenger.pool.group import Group
    from passenger.pool.process import AppProcess

# Why reading from the client is paused (a bit each).
PAUSED_PIPELINE: Final = 1  # a later request is parsed and waits for the current one
PAUSED_UPSTREAM: Final = 2  # the app connection's write buffer is full
PAUSED_WAITING: Final = 4  # body buffered while the request waits for a process

#: A buffered request body (buffer_upload) is kept in memory up to this size, then spooled to a file.
UPLOAD_MEMORY: Final = 65536
#: The end of a request head framed by chunking (replaced by a length once a buffered body is whole).
CHUNKED_END: Final = b"Transfer-Encoding: chunked\r\n\r\n"
#: Body bytes held for a request that has no app connection yet.
WAITING_BUFFER: Final = 65536
#: Limits of a request head (nginx's and HAProxy's order of magnitude).
MAX_TARGET: Final = 8192
MAX_HEADER: Final = 8192
MAX_HEAD: Final = 65536
MAX_FIELDS: Final = 100


def ignore_stalled(stalled: bool) -> None:
    """A closed connection's relay has no send deadline to start or stop."""


class Refused(Exception):
    """Raised in a parser callback: the request is answered with ``status`` and the connection closed."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


#: Seconds between two looks at the client deadlines.
SWEEP_INTERVAL: Final = 1.0
#: Seconds a connection accepted just before a graceful stop gets to send its first request.
SHUTDOWN_GRACE: Final = 1.0
#: Attempts to place a request when processes refuse connections.
MAX_TRIES: Final = 3
#: Requests that may be sent again when a kept-alive connection turns out closed (RFC 9110 §9.2.1).
SAFE_METHODS: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE"})


class Request:
    """A parsed request, from its head to the end of its response."""

    __slots__ = (
        "body",
        "body_size",
        "buffered",
        "buffering",
        "chunked",
        "complete",
        "expect_continue",
        "group",
        "has_body",
        "head",
        "headers",
        "host",
        "id_line",
        "is_head",
        "keep_alive",
        "method",
        "response_extra",
        "sent",
        "spool",
        "started",
        "tries",
        "upgrade",
        "url",
        "version",
    )

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.method = b""
        self.version = "1.1"
        self.keep_alive = True
        self.upgrade = False
        self.is_head = False
        self.head = b""
        self.host: bytes | None = None
        self.group: Group | None = None
        #: Header lines the server adds to the response (X-Request-Id, the sticky-session cookie).
        self.response_extra = b""
        self.id_line = b""
        self.chunked = False
        self.has_body = False
        self.body: list[bytes] = []
        self.buffered = 0
        self.body_size = 0
        #: The body is being read in full before a process is chosen (buffer_upload).
        self.buffering = False
        #: Where a buffered body past UPLOAD_MEMORY goes (an unnamed temporary file).
        self.spool: BinaryIO | None = None
        #: The client waits for "100 Continue" before it sends the body.
        self.expect_continue = False
        self.complete = False
        self.sent = False
        self.tries = 0
        #: When its head was complete (reactor seconds): the start of its latency and queue time.
        self.started = 0.0


class FrontProtocol(ConnectionProtocol):
    log: ClassVar[Logger] = Logger()

    def __init__(self, factory: FrontFactory) -> None:
        self.factory = factory
        #: The reactor's clock, bound once: read four or five times a request (the factory and the reactor
        #: are Python objects, whose attributes compiled code looks up by name).
        self.seconds: Callable[[], float] = factory.reactor.seconds
        #: The app of the request in progress (set when it starts; requests on a connection go one at a time).
        self.group: Group = factory.router.only  # type: ignore[assignment]
        self.request_timer: IDelayedCall | None = None
        self.parser = HttpRequestParser(self)
        self.parsing: Request | None = None
        self.active: Request | None = None
        #: Requests parsed behind the active one (a list: a deque is 760 bytes, an empty list 56, and
        #: pipelines are short: reading pauses behind a waiting request).
        self.pipeline: list[Request] = []
        self.process: AppProcess | None = None
        self.upstream: UpstreamConnection | None = None
        self.paused = 0
        self.closing = False
        self.disconnected = False
        self.tunnel = False
        self.responding = False
        self.broken = False
        self.peer = b""
        #: The peer is a trusted proxy: its X-Forwarded-* headers are kept and extended.
        self.trusted = False
        self.local_port = b""
        self.scheme = b"http"
        #: The response in progress, for the access log: its status, body bytes sent, when a process got it.
        self.status = 0
        self.sent = 0
        self.upstream_at: float | None = None
        #: Seconds the app took for the response, once it is complete (it may still be draining to the client).
        self.upstream_time: float | None = None
        #: Carries responses to the client, holding what a slow client cannot take yet (made at the first response).
        self.relay: ResponseBuffer | None = None
        #: The app's response is complete and held bytes are draining to the client.
        self.delivering = False
        #: The deadline is the client's to read some of the response (send_timeout).
        self.send_stalled = False
        #: When the client must have done its next step (FrontFactory's sweep closes it then); 0: no deadline.
        self.deadline = 0.0
        #: Bytes of the request head parsed so far (the limits of MAX_HEAD).
        self.head_size = 0
        #: Bytes of the head received but not yet parsed into a header (the line in progress).
        self.line_pending = 0
        self.in_head = False
        #: Requests completely received on this connection.
        self.completed = 0
        #: Requests begun on this connection.
        self.requests = 0
        self.grace: IDelayedCall | None = None
        #: Bytes for the app connection ``held_for``, held while a read is parsed (UpstreamConnection._write).
        self.held: list[bytes] | None = None
        self.held_for: UpstreamConnection | None = None

    # Connection events.
    def connectionMade(self) -> None:
        transport = self.transport
        assert transport is not None
        factory = self.factory
        self.deadline = self.seconds() + factory.head_timeout
        peer = transport.getPeer()
        if isinstance(peer, (IPv4Address, IPv6Address)):
            self.peer = peer.host.encode("ascii")
            self.trusted = self.factory.trusts(peer.host)
            self.local_port = factory.local_port(transport)
            if hasattr(transport, "setTcpNoDelay"):
                transport.setTcpNoDelay(True)
            if factory.loopback_reno and (is_loopback(peer.host) or peer.host == self._local_host()):
                use_reno(transport)
        if ISSLTransport.providedBy(transport):
            self.scheme = b"https"
        self.factory.connections.add(self)

    def _local_host(self) -> str | None:
        """The address the client connected to (a ``getsockname``: only where it is needed)."""
        address = getattr(self.transport.getHost(), "host", None) if self.transport is not None else None
        return address if isinstance(address, str) else None

    def _local_address(self) -> bytes:
        """host:port the client connected to (the Host of an HTTP/1.0 request that has none)."""
        address = self._local_host()
        if address is None or not self.local_port:
            return b"localhost"
        return (f"[{address}]" if ":" in address else address).encode("ascii") + b":" + self.local_port

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:
        self.disconnected = True
        if self.grace is not None and self.grace.active():
            self.grace.cancel()
        self.factory.connection_closed(self)
        if self.active is not None:
            self._abandon()
        if self.held is None:  # else a read is being parsed: flush_held lets go when it ends
            self._let_go()

    def _let_go(self) -> None:
        """Cut the reference cycles of a closed connection (its parser's callbacks and its relay's are
        this protocol's bound methods), so that it is freed with its last reference (``NoCallbacks``)."""
        self.parser = CLOSED_REQUEST_PARSER
        if self.relay is not None:  # (its other callback, on_drained, went with Twisted's stopProducing)
            self.relay.stalled = ignore_stalled

    def _abandon(self) -> None:
        """The client is gone: give back whatever its request holds."""
        upstream, self.upstream = self.upstream, None
        if upstream is not None:
            upstream.front = None
            if upstream.transport is not None:
                upstream.transport.abortConnection()
        process, self.process = self.process, None
        if process is not None:
            self._cancel_request_timer()
            self.group.release(process)
        elif self.active is not None and self.active.group is not None and not self.delivering:
            self.group.cancel(self)
        self.active = None
        self.pipeline.clear()

    # Reading.
    def dataReceived(self, data: bytes) -> None:
        if self.tunnel:
            if self.active is not None:
                self._body_piece(self.active, data)
            return
        if self.broken:
            return
        self.held = []
        was_in_head, size_before, done_before = self.in_head, self.head_size, self.completed
        try:
            try:
                self.parser.feed_data(data)
            except HttpParserUpgrade as e:
                rest = data[e.args[0]:]
                request = self.active if self.active is not None and self.active.upgrade else None
                if request is not None and rest:
                    self._body_piece(request, rest)
                self.tunnel = True
            except HttpParserCallbackError as e:
                cause = e.__context__
                if isinstance(cause, Refused):
                    self._refuse(cause.status, cause.detail)
                else:  # our own bug, not the client's: log it loudly and close
                    self.log.failure("Internal error while handling a request", Failure(cause or e))
                    self._refuse(500, "The server failed to handle the request.")
            except HttpParserError as e:
                if "HTTP version" in str(e):
                    self._refuse(505, "Only HTTP/1.0 and HTTP/1.1 are supported.", str(e))
                else:
                    self._refuse(400, "The request could not be understood.", str(e))
            else:
                if self.in_head and (was_in_head or self.completed == done_before):
                    # All of this read is head.  What the callbacks have not accounted for yet is
                    # the line being received: the parser buffers it, so it is limited now.
                    self.line_pending += len(data) - (self.head_size - (size_before if was_in_head else 0))
                    if self.line_pending > MAX_HEADER + 512:
                        self._refuse(431, "A request header (or the request line) is longer than 8 KiB.")
        finally:
            self.flush_held()

    def flush_held(self) -> None:
        """Send what the parsed read has for the app, unless its request was given up meanwhile."""
        held, target = self.held, self.held_for
        self.held = self.held_for = None
        if held and target is not None and target is self.upstream and target.transport is not None:
            write_pieces(target.transport, held)
        if self.disconnected:
            self._let_go()

    def on_message_begin(self) -> None:
        self.parsing = Request()
        self.requests += 1
        self.in_head = True
        self.head_size = self.line_pending = 0
        if self.active is None:  # a new request after an idle keep-alive: its head has a deadline
            factory = self.factory
            self.deadline = self.seconds() + factory.head_timeout

    def on_url(self, url: bytes) -> None:
        request = self.parsing
        assert request is not None
        request.url += url
        self.head_size += len(url)
        if len(request.url) > MAX_TARGET:
            raise Refused(414, "The request target is longer than 8 KiB.")

    def on_header(self, name: bytes, value: bytes) -> None:
        request = self.parsing
        assert request is not None
        headers = request.headers
        headers.append((name, value))
        size = len(name) + len(value)
        self.head_size += size + 4
        if size > MAX_HEADER or self.head_size > MAX_HEAD or len(headers) > MAX_FIELDS:
            self._header_limit(size, len(headers))

    def _header_limit(self, size: int, fields: int) -> None:
        if size > MAX_HEADER:
            raise Refused(431, "A request header is longer than 8 KiB.")
        if fields > MAX_FIELDS:
            raise Refused(431, f"The request has more than {MAX_FIELDS} header fields.")
        raise Refused(431, "The request head is larger than 64 KiB.")

    def on_headers_complete(self) -> None:
        request = self.parsing
        assert request is not None
        parser = self.parser
        self.in_head = False
        request.method = method = parser.get_method()
        request.version = version = parser.get_http_version()
        if version != "1.1" and version != "1.0":
            raise Refused(505, f"HTTP/{version} is not supported; use HTTP/1.1.")
        request.keep_alive = parser.should_keep_alive()
        request.upgrade = parser.should_upgrade()
        request.is_head = method == b"HEAD"
        request.head = self._upstream_head(request)
        request.group = self.factory.router.route(request.host, request.url)
        factory = self.factory
        request.started = now = self.seconds()
        if self.active is None:
            # A body to read has a deadline for each pause; else the client waits for the answer.
            self.deadline = now + factory.body_timeout if request.has_body else 0.0
            self._start(request)
        else:
            self.pipeline.append(request)
            self._pause(PAUSED_PIPELINE)

    def on_body(self, data: bytes) -> None:
        request = self.parsing
        if request is not None:
            if self.deadline:
                self.deadline = self.seconds() + self.factory.body_timeout
            request.body_size += len(data)
            if request.body_size > self.factory.max_body_size:
                raise Refused(413, "The request body is larger than this server accepts.")
            self._body_piece(request, data)

    def on_message_complete(self) -> None:
        request = self.parsing
        if request is None:
            return
        self.parsing = None
        self.completed += 1
        request.complete = True
        if request is self.active:
            self.deadline = 0.0  # the client has said everything; the app's turn
            if request.buffering:
                self._buffered(request)
                return
        upstream = self.upstream
        if upstream is not None and upstream.streaming and request is self.active:
            upstream.end_body(request)
        if request.upgrade:
            request.keep_alive = False

    def _body_piece(self, request: Request, data: bytes) -> None:
        if request.sent:
            upstream = self.upstream
            if upstream is not None and request is self.active:
                upstream.send_body(request, data)
            return
        request.buffered += len(data)
        if request.buffering:
            spool = request.spool
            if spool is None:
                request.body.append(data)
                if request.buffered > UPLOAD_MEMORY:  # from here on, on disk
                    request.spool = spool = tempfile.TemporaryFile(dir=self.factory.data_buffer_dir)
                    spool.writelines(request.body)
                    request.body.clear()
            else:
                spool.write(data)
            return
        request.body.append(data)
        if request.buffered > WAITING_BUFFER:
            self._pause(PAUSED_WAITING)

    def _upstream_head(self, request: Request) -> bytes:
        """The request head as the app will see it, built once; refuses what is ambiguous."""
        factory = self.factory
        dropped = REQUEST_DROPPED
        allowed_chars = factory.header_name_chars
        trusted = self.trusted
        kept: list[tuple[bytes, bytes, bytes]] = []
        extra: set[bytes] | None = None
        length: bytes | None = None
        host: bytes | None = None
        hosts = 0
        upgrade: bytes | None = None
        codings: list[bytes] = []
        expect: bytes | None = None
        request_id: bytes | None = None
        forwarded: dict[bytes, bytes] | None = None
        for name, value in request.headers:
            lname = name.lower()
            if lname in dropped:
                if lname == b"content-length":
                    length = value
                elif lname == b"transfer-encoding":
                    codings.append(value)
                elif lname == b"connection":
                    tokens = connection_tokens(value)
                    extra = tokens if extra is None else extra | tokens
                elif lname == b"upgrade":
                    upgrade = value
                elif lname == b"expect":
                    expect = value
                elif lname == b"x-request-id":
                    request_id = value
                elif trusted and lname in FORWARDED:
                    if forwarded is None:
                        forwarded = {}
                    forwarded[lname] = forwarded[lname] + b", " + value if lname in forwarded else value
                continue
            if name.translate(None, allowed_chars):
                continue  # "_" or other characters that could pass for another header once normalised
            if lname == b"host":
                host = value
                hosts += 1
            kept.append((name, lname, value))
        version = request.version
        if hosts > 1:
            raise Refused(400, "The request has more than one Host header.")
        if host is None:
            if version == "1.1":
                raise Refused(400, "An HTTP/1.1 request must have a Host header.")
            kept.append((b"Host", b"host", self._local_address()))  # HTTP/1.0: the app gets HTTP/1.1, which needs one
        elif not host or host.translate(None, HOST_CHARS):
            raise Refused(400, "The Host header is not a host name.")
        if codings:
            if version == "1.0":
                raise Refused(400, "Transfer-Encoding is not allowed in an HTTP/1.0 request.")
            if len(codings) != 1 or codings[0].strip().lower() != b"chunked":
                raise Refused(400, "Only Transfer-Encoding: chunked is accepted.")
            request.chunked = True
        elif length is not None and int(length) > factory.max_body_size:
            raise Refused(413, "The request body is larger than this server accepts.")
        if expect is not None:
            if expect.strip().lower() != b"100-continue":
                raise Refused(417, "Only Expect: 100-continue is supported.")
            request.expect_continue = version == "1.1"
        if request_id is None or not 0 < len(request_id) <= 200 or request_id.translate(None, REQUEST_ID_CHARS):
            request_id = factory.new_request_id()
        request.response_extra = request.id_line = b"X-Request-Id: " + request_id + b"\r\n"
        parts = [request.method, b" ", request.url, b" HTTP/1.1\r\n"]
        for name, lname, value in kept:
            if extra is None or lname not in extra:
                parts += (name, b": ", value, b"\r\n")
        parts += (b"X-Request-Id: ", request_id, b"\r\n")
        if forwarded is not None:  # a trusted proxy's: extended
            chain = forwarded.get(b"x-forwarded-for")
            parts += (b"X-Forwarded-For: ", chain + b", " + self.peer if chain else self.peer, b"\r\n",
                      b"X-Forwarded-Proto: ", forwarded.get(b"x-forwarded-proto", self.scheme), b"\r\n")
            if host is not None or b"x-forwarded-host" in forwarded:
                parts += (b"X-Forwarded-Host: ", forwarded.get(b"x-forwarded-host", host or b""), b"\r\n")
            parts += (b"X-Forwarded-Port: ", forwarded.get(b"x-forwarded-port", self.local_port), b"\r\n")
            if b"forwarded" in forwarded:
                parts += (b"Forwarded: ", forwarded[b"forwarded"], b", for=", self._forwarded_for(), b"\r\n")
            if b"x-forwarded-prefix" in forwarded:  # where the proxy mounts us: only it can say
                parts += (b"X-Forwarded-Prefix: ", forwarded[b"x-forwarded-prefix"], b"\r\n")
        else:
            if self.peer:
                parts += (b"X-Forwarded-For: ", self.peer, b"\r\n")
            parts += (b"X-Forwarded-Proto: ", self.scheme, b"\r\n")
            if host is not None:
                parts += (b"X-Forwarded-Host: ", host, b"\r\n")
            if self.local_port:
                parts += (b"X-Forwarded-Port: ", self.local_port, b"\r\n")
        if host is not None:
            request.host = host
        if request.upgrade and upgrade is not None:
            parts += (b"Connection: upgrade\r\nUpgrade: ", upgrade, b"\r\n")
        if request.chunked:
            request.has_body = True
            parts.append(b"Transfer-Encoding: chunked\r\n")
        elif length is not None:
            request.has_body = length != b"0"
            parts += (b"Content-Length: ", length, b"\r\n")
        parts.append(b"\r\n")
        return b"".join(parts)

    def _forwarded_for(self) -> bytes:
        """The peer as a ``for=`` value of RFC 7239 (IPv6 quoted and bracketed)."""
        return b'"[' + self.peer + b']"' if b":" in self.peer else self.peer

    # Placing the request on a process.
    def _start(self, request: Request) -> None:
        self.active = request
        if self.closing:
            request.keep_alive = False
        request.tries += 1
        group = request.group
        if group is None:
            self._send_error(404, "Not Found", "No application is configured for this host and path.")
            return
        self.group = group
        static = group.static
        if static is not None:
            found = static.find(request.method, request.url)
            if found is not None:
                self._serve_static(static, found, request)
                return
        app = group.app
        if request.has_body and not request.complete and (
                app.buffer_upload if app.buffer_upload is not None else bool(app.concurrency)):
            request.buffering = True  # placed once the whole body is here (on_message_complete)
            self._invite_body(request)  # the buffer is where it goes
            return
        self._place(request)

    def _place(self, request: Request) -> None:
        """Find the request a process (now, or when one is free)."""
        app = self.group.app
        sticky_id = self._sticky_id(request, app.sticky_sessions_cookie_name) if app.sticky_sessions else None
        process = self.group.checkout(self, sticky_id)
        if process is not None:
            self.deliver(process)

    def _buffered(self, request: Request) -> None:
        """The whole body of a buffered request is here: frame it by its length and place it."""
        request.buffering = False
        if request.chunked:
            request.chunked = False
            request.head = request.head[:-len(CHUNKED_END)] + b"Content-Length: %d\r\n\r\n" % request.buffered
        if request.spool is not None:
            request.spool.seek(0)
        self._place(request)

    def _serve_static(self, static: StaticFiles, found: StaticFile, request: Request) -> None:
        """A file of the app's public directory answers the request; no process is involved."""
        transport = self.transport
        if transport is None or self.disconnected:
            return
        request.keep_alive = (request.keep_alive and not self.closing
                              and (request.complete or not request.has_body))
        self.responding = True
        self.status = found.status
        sent = static.respond(found, request.method, request.headers, request.version, request.keep_alive,
                              transport)
        sent.addCallbacks(lambda _: self._static_sent(request), self._static_failed)

    def _static_sent(self, request: Request) -> None:
        self.responding = False
        if self.active is request:
            self._next(request)

    def _static_failed(self, reason: Failure) -> None:
        """The client went away, or the file changed under us: the response cannot be finished."""
        self.responding = False
        self.active = None
        if self.transport is not None and not self.disconnected:
            self.transport.abortConnection()

    def deliver(self, process: AppProcess) -> None:
        """Waiter: ``process`` will serve the active request."""
        if self.disconnected or self.active is None:
            self.group.release(process)
            return
        self._resume(PAUSED_WAITING)
        self.process = process
        request = self.active
        self.upstream_at = now = self.seconds()
        self.group.stats.queue_time.observe(now - request.started)
        app = self.group.app
        if app.max_request_time:
            self.request_timer = self.factory.reactor.callLater(app.max_request_time, self._ran_too_long, process)
        if request.expect_continue:
            self._invite_body(request)  # the process is where it goes
        if process.sticky_id is not None:
            request.response_extra = request.id_line + b"Set-Cookie: %s=%d; Path=%s; %s\r\n" % (
                app.sticky_sessions_cookie_name.encode(), process.sticky_id, app.base_uri.encode(),
                app.sticky_sessions_cookie_attributes.encode())
        idle = process.idle
        if idle:
            upstream = idle.pop()
            upstream.reused = True
            self.upstream_connected(upstream)
        else:
            process.connect(self.factory.reactor, UpstreamFactory(process, self))

    def _invite_body(self, request: Request) -> None:
        """"100 Continue" for a client that waits for it before sending the body, once the body has somewhere to go."""
        if request.expect_continue and not request.complete and not request.sent and self.transport is not None:
            request.expect_continue = False
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def reject(self, status: int, title: str, detail: str) -> None:
        """Waiter: no process will come."""
        self.process = None
        self._send_error(status, title, detail)

    def spawn_failed(self, report: SpawnReport) -> None:
        """Waiter: the app cannot start; answer as Passenger does (§1.8), with its error ID."""
        self.process = None
        request = self.active
        accept, content_type = pick(request.headers, b"accept", b"content-type") if request is not None else (None, None)
        self._send_page(*error_answer(report, self.group.app, accept, content_type))

    def upstream_connected(self, upstream: UpstreamConnection) -> None:
        request = self.active
        if self.disconnected or request is None or self.process is not upstream.process:
            upstream.front = None
            if upstream.transport is not None:
                upstream.transport.loseConnection()
            return
        self.upstream = upstream
        upstream.send(self, request)
        # What was held while waiting is on its way: read the rest of the body.
        self._resume(PAUSED_WAITING)

    def connect_failed(self, process: AppProcess, reason: Failure) -> None:
        """The process refused the connection: try another, unless the app already saw this request."""
        if self.process is not process:
            return
        self.log.warn("Process {pid} of {app} refused a connection on port {port}: {error}",
                      pid=process.pid, app=process.app, port=process.port, error=reason.getErrorMessage())
        self.process = None
        self._cancel_request_timer()
        self.group.release(process)
        self.group.unreachable(process)
        request = self.active
        if request is None or self.disconnected:
            return
        if request.tries >= MAX_TRIES or request.sent:
            self.group.stats.upstream_errors += 1
            self._send_error(502, "Bad Gateway", "The application did not accept the connection.")
        else:
            self._start(request)

    def upstream_lost(self, upstream: UpstreamConnection, reason: Failure) -> None:
        """The app closed the connection before the response was complete."""
        request = self.active
        process = upstream.process
        if request is None or upstream is not self.upstream:
            return
        self.upstream = None
        if self.responding:
            self.group.stats.upstream_errors += 1
            self.log.warn("Process {pid} of {app} closed the connection in the middle of a response",
                          pid=process.pid, app=process.app)
            self._end_early(upstream)
            return
        if (upstream.reused and not upstream.answered and request.method in SAFE_METHODS
                and not request.has_body and process.state == READY):
            # The app may have closed this kept-alive connection just before we
            # reused it.  A safe request can go again, once, on a new connection.
            request.tries = MAX_TRIES
            process.connect(self.factory.reactor, UpstreamFactory(process, self))
            return
        self.log.warn("Process {pid} of {app} closed the connection without answering ({reason})",
                      pid=process.pid, app=process.app, reason=reason.getErrorMessage())
        self.group.stats.upstream_errors += 1
        self._release()
        self._send_error(502, "Bad Gateway", "The application closed the connection without sending a response.")

    def bad_response(self, upstream: UpstreamConnection, why: str) -> None:
        process = upstream.process
        self.log.warn("Process {pid} of {app} sent an invalid response: {why}", pid=process.pid, app=process.app, why=why)
        self.group.stats.upstream_errors += 1
        self.upstream = None
        self._release()
        if self.responding:
            self._end_early(upstream)
        else:
            self._send_error(502, "Bad Gateway", "The application sent an invalid response.")

    def _end_early(self, upstream: UpstreamConnection) -> None:
        """The app's part of a response that has begun ended early: it closed, broke the framing, or was cut off.

        Where the client can see from the framing (a length, or chunks) that the response is incomplete, what
        the app sent is delivered and then the connection closes.  Where the close itself ends the body
        (HTTP/1.0 without a length), the connection is reset instead, so the part is not taken for the whole."""
        request = self.active
        if request is None or upstream.mode == BODY_UNTIL_CLOSE:
            self.upstream = None
            self._release()
            if self.transport is not None:
                self.transport.abortConnection()
            return
        request.keep_alive = False
        self.end_response(upstream, False)

    def _release(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            self._cancel_request_timer()
            self.group.release(process)

    def _cancel_request_timer(self) -> None:
        timer, self.request_timer = self.request_timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _ran_too_long(self, process: AppProcess) -> None:
        """max_request_time passed: the process is replaced, and this request ends."""
        self.request_timer = None
        if self.process is not process:
            return
        self.group.stats.upstream_errors += 1
        self.group.stuck(process, self.group.app.max_request_time)
        self.cut_off(process, "The application did not answer within its max_request_time.")

    def cut_off(self, process: AppProcess, detail: str) -> None:
        """The server gives up on this request to ``process``: 504, or if the response began, it ends early."""
        if self.process is not process:
            return
        upstream = self.upstream
        if self.responding and not self.tunnel and upstream is not None:
            self._end_early(upstream)
            if upstream.transport is not None:
                upstream.transport.abortConnection()  # after the close _end_early asked for: the app is stuck
            return
        self._cancel_request_timer()
        self.upstream = None
        if upstream is not None:
            upstream.front = None
            if upstream.transport is not None:
                upstream.transport.abortConnection()
        self.process = None
        self.group.release(process)
        if self.responding or self.tunnel:
            self.responding = False
            if self.transport is not None:
                self.transport.abortConnection()
            return
        self._send_error(504, "Gateway Timeout", detail)

    @staticmethod
    def _sticky_id(request: Request, cookie_name: str) -> int | None:
        """The process id in the sticky-session cookie (the first Cookie header, as Passenger)."""
        wanted = cookie_name.encode() + b"="
        for name, value in request.headers:
            if name.lower() == b"cookie":
                for crumb in value.split(b";"):
                    crumb = crumb.strip()
                    if crumb.startswith(wanted):
                        number = crumb[len(wanted):]
                        return int(number) if number.isdigit() and len(number) < 12 else None
                return None
        return None

    # Writing the response.
    def begin_response(self, upstream: UpstreamConnection, mode: int, keep_alive: bool) -> None:
        """The app's response head is parsed (the upstream connection writes it)."""
        request = self.active
        transport: Any = self.transport
        if request is None or transport is None:
            return
        request.keep_alive = keep_alive
        self.responding = True
        relay = self.relay
        if relay is None:
            factory = self.factory
            self.relay = relay = ResponseBuffer(transport, factory.data_buffer_dir, factory.response_high_watermark,
                                                self._client_stalled)
        relay.start(upstream.transport, self.status == 101)

    def write_response(self, pieces: Sequence[bytes]) -> None:
        """Bytes of the app's response for the client (held if the client is slow)."""
        relay = self.relay
        if relay is not None:
            relay.write(pieces)
        elif self.transport is not None:
            write_pieces(self.transport, pieces)

    def _stop_relay(self) -> None:
        self.responding = False
        if self.relay is not None:
            self.relay.stop()

    def unbegin_response(self) -> None:
        """The response turned out broken before any of it was written."""
        if self.responding:
            self._stop_relay()

    def _client_stalled(self, stalled: bool) -> None:
        """The client stopped reading the response (its send deadline starts), or read some more."""
        if stalled:
            if not self.deadline:
                self.send_stalled = True
                self.deadline = self.seconds() + self.factory.send_timeout
        elif self.send_stalled:
            self.send_stalled = False
            self.deadline = 0.0

    def end_response(self, upstream: UpstreamConnection, reusable: bool) -> None:
        request = self.active
        self.upstream = None
        upstream.front = None
        responding, self.responding = self.responding, False
        process = upstream.process
        if upstream.stop_sending_file():
            reusable = False  # part of the spooled body is still unsent
        if request is not None and not request.complete:
            # The app answered before the whole body was sent: neither side can be reused.
            reusable = False
            request.keep_alive = False
            if upstream.transport is not None and upstream.streaming:
                upstream.streaming = False
                upstream.transport.unregisterProducer()
            self._resume(PAUSED_UPSTREAM)
        if reusable and process.state == READY and not upstream.closed and len(process.idle) < IDLE_CONNECTIONS:
            process.idle.append(upstream)
        elif upstream.transport is not None:
            upstream.transport.loseConnection()
        self._release()
        if self.upstream_at is not None and self.factory.access_log is not None:
            self.upstream_time = self.seconds() - self.upstream_at
        relay = self.relay
        if responding and relay is not None and self.transport is not None:
            # The process is free now; the client may still be reading what the relay holds.
            self.delivering = True
            relay.upstream_done(self._delivered)
        else:
            self._next(request)

    def _delivered(self) -> None:
        self.delivering = False
        self._next(self.active)

    def _next(self, finished: Request | None) -> None:
        """The active request is answered: close, or go on with the next one."""
        self.active = None
        if finished is not None and finished.spool is not None:
            finished.spool.close()
            finished.spool = None
        if finished is not None:
            now = self.seconds()
            group = finished.group
            if group is not None and self.status:
                group.stats.response(self.status, now - finished.started)
            access_log = self.factory.access_log
            if access_log is not None:
                upstream_at, upstream = self.upstream_at, self.upstream_time
                if upstream is None and upstream_at is not None:
                    upstream = now - upstream_at
                access_log.log(self.peer, finished.method, finished.url, finished.version, self.status, self.sent,
                               finished.headers, finished.id_line[14:-2], upstream, now)
        self.status = self.sent = 0
        self.upstream_at = self.upstream_time = None
        self.send_stalled = False
        if self.disconnected or self.transport is None:
            return
        if finished is not None and not finished.keep_alive:
            self.transport.loseConnection()
            self.pipeline.clear()
            return
        if self.closing and not self.pipeline:
            self.transport.loseConnection()
            return
        factory = self.factory
        if self.pipeline:
            self.deadline = 0.0
            self._start(self.pipeline.pop(0))
        elif self.parsing is not None:  # the next request is on its way
            self.deadline = self.seconds() + factory.head_timeout
        else:
            self.deadline = self.seconds() + factory.keepalive_timeout
        if not self.pipeline:
            self._resume(PAUSED_PIPELINE)

    def timed_out(self) -> None:
        """The deadline passed: an idle connection closes; a slow request head or body gets 408."""
        self.deadline = 0.0
        transport = self.transport
        if transport is None or self.disconnected:
            return
        if self.send_stalled:
            self.log.info("Closing the connection of {peer}: it read nothing of its response for {timeout} s "
                          "(send_timeout)", peer=self.peer.decode(), timeout=self.factory.send_timeout)
            transport.abortConnection()
            return
        if self.paused:  # we are not reading (back-pressure): the client is not the slow one
            self.deadline = self.seconds() + self.factory.body_timeout
            return
        if self.parsing is None and self.active is None:
            transport.loseConnection()  # idle keep-alive (or a client that never sent a byte)
            return
        self._refuse(408, "The client took too long to send its request.", "request head or body timeout")

    def _send_error(self, status: int, title: str, detail: str) -> None:
        self._send_page(status, None, title, detail)

    def _send_page(self, status: int, body: bytes | None, kind: str, detail: str = "") -> None:
        """Answer the active request ourselves: ``body`` of type ``kind``, or a small page titled ``kind``."""
        request = self.active
        transport = self.transport
        if transport is None or self.disconnected:
            return
        # Keep the connection only if no unread body would be mistaken for the next request.
        keep_alive = (request is not None and request.keep_alive and not self.closing
                      and (request.complete or not request.has_body))
        if request is not None:
            request.keep_alive = keep_alive
        self.status = status
        if body is None:
            transport.write(error_response(status, kind, detail, keep_alive))
        else:
            transport.write(page_response(status, body, kind, keep_alive))
        self._next(request)

    def _refuse(self, status: int, detail: str, why: str | None = None) -> None:
        """A request that must not reach an app (unparseable, ambiguous, too large): answer ``status`` and close.

        Nothing more is read from the connection: what follows could not be
        framed with certainty.
        """
        transport = self.transport
        self.broken = True
        self.closing = True
        self.pipeline.clear()
        if transport is None:
            return
        self.log.info("Refused a request from {peer} with {status}: {why}", peer=self.peer.decode(), status=status,
                      why=why or detail)
        if self.active is not None and self.parsing is not self.active:
            return  # a later request is bad: answer the current one, then close
        if self.active is not None:
            if self.responding:
                transport.abortConnection()
                return
            self._abandon()
        transport.write(error_response(status, REASONS.get(status, "Error"), detail, False))
        transport.loseConnection()

    # Tunnels (Upgrade: websocket and friends).
    def start_tunnel(self, upstream: UpstreamConnection) -> None:
        self.tunnel = True
        request = self.active
        if request is not None and request.body:
            upstream.send_body(request, b"".join(request.body))
            request.body.clear()

    def tunnel_closed(self) -> None:
        self.upstream = None
        self._release()
        self.active = None
        if self.transport is not None:
            if self.responding:
                self._stop_relay()
            self.transport.loseConnection()

    # Reading back-pressure, for the app connection (IPushProducer).
    def pauseProducing(self) -> None:
        self._pause(PAUSED_UPSTREAM)

    def resumeProducing(self) -> None:
        self._resume(PAUSED_UPSTREAM)

    def stopProducing(self) -> None:
        pass

    def _pause(self, reason: int) -> None:
        if not self.paused and self.transport is not None:
            self.transport.pauseProducing()
        self.paused |= reason

    def _resume(self, reason: int) -> None:
        if self.paused & reason:
            self.paused &= ~reason
            if not self.paused and self.transport is not None and not self.disconnected:
                self.transport.resumeProducing()

    # Server shutdown.
    def shut_down(self) -> None:
        """Finish the request in flight, if any, then close.

        A connection idle between two requests closes now.  One that has not
        sent (all of) its first request yet was accepted a moment ago and its
        request is on its way: it gets SHUTDOWN_GRACE seconds to arrive, and is served.
        """
        self.closing = True
        if self.active is None and self.transport is not None:
            if self.requests and self.parsing is None:
                self.transport.loseConnection()
            elif self.grace is None:
                self.grace = self.factory.reactor.callLater(SHUTDOWN_GRACE, self._grace_over)

    def _grace_over(self) -> None:
        self.grace = None
        if self.active is None and self.transport is not None:
            self.transport.loseConnection()


classImplements(FrontProtocol, IPushProducer)  # for the app connection's transport, while a body streams


@implementer(IProtocolNegotiationFactory)
class FrontFactory(Factory):
    """Builds a FrontProtocol per client connection and tracks them for shutdown."""

    noisy = False
    log = Logger()

    def acceptableProtocols(self) -> list[bytes]:
        """ALPN over ``ssl:`` listeners: we speak HTTP/1.1.

        Without it Twisted (26.10) selects an empty protocol and OpenSSL aborts
        the handshake of every client that offers ALPN (curl, browsers).
        """
        return [b"http/1.1"]

    def __init__(self, router: Router[Group], reactor: Any, config: ServerConfig | None = None) -> None:
        self.router = router
        self.reactor = reactor
        self.connections: set[FrontProtocol] = set()
        self._drained: list[Deferred[None]] = []
        self._sweep: Any = None
        self.access_log: AccessLog | None = None
        self._refused_logged = -1e9
        self._request_prefix = os.urandom(12).hex().encode("ascii")
        self._request_count = 0
        #: Listening ports' numbers as text (``local_port``), forgotten with the ports.
        self._port_texts: weakref.WeakKeyDictionary[Any, bytes] = weakref.WeakKeyDictionary()
        self.configure(config or ServerConfig(apps=()))

    def configure(self, config: ServerConfig) -> None:
        """The front end's share of the server config (at start and on reload)."""
        self.max_body_size = config.max_body_size
        self.header_name_chars = NAME_CHARS_UNDERSCORE if config.allow_underscore_headers else NAME_CHARS
        self.trusted_proxies = config.trusted_proxies
        self.head_timeout = config.request_head_timeout
        self.body_timeout = config.request_body_timeout
        self.keepalive_timeout = config.keepalive_timeout
        self.max_connections = config.max_connections
        self.data_buffer_dir = config.data_buffer_dir
        self.response_high_watermark = config.response_buffer_high_watermark
        self.send_timeout = config.send_timeout
        #: Connections within this host use Reno (``passenger.http.congestion``): clients here, apps there.
        self.loopback_reno = config.loopback_reno
        if self.access_log is not None and self.access_log.path != config.access_log:
            self.access_log.close()
            self.access_log = None
        if config.access_log and self.access_log is None:
            self.access_log = AccessLog(config.access_log, self.reactor)
        #: Added to every proxied response (X-Powered-By when the version may be shown).
        self.response_extra = (b"X-Powered-By: passenger/" + __version__.encode() + b"\r\n"
                               if config.show_version_in_header else b"")

    def local_port(self, transport: Any) -> bytes:
        """The port a TCP connection came in on, as text (X-Forwarded-Port): its listening port's,
        found once per port (Twisted's accepted transports name it ``server``); a ``getsockname``
        per connection was 4 µs of a new connection's 59 on this VM."""
        port = getattr(transport, "server", None)
        text = self._port_texts.get(port) if port is not None else None
        if text is None:
            host = (port if port is not None else transport).getHost()
            text = str(getattr(host, "port", "")).encode("ascii")
            if port is not None:
                self._port_texts[port] = text
        return text

    def new_request_id(self) -> bytes:
        """A request id unique to this server's life: a random prefix and a counter (no syscall per request)."""
        self._request_count = count = self._request_count + 1
        return self._request_prefix + hex(count).encode()

    def trusts(self, address: str) -> bool:
        """Is ``address`` one of the trusted proxies?"""
        if not self.trusted_proxies:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.trusted_proxies)

    def buildProtocol(self, addr: object) -> FrontProtocol | None:  # type: ignore[override]  # not a twisted Protocol
        if self.max_connections and len(self.connections) >= self.max_connections:
            now = self.reactor.seconds()
            if now - self._refused_logged >= 10:  # a line every 10 s, not one per connection
                self._refused_logged = now
                self.log.warn("{count} client connections are open (max_connections); closing new ones",
                              count=len(self.connections))
            return None  # Twisted closes the connection at once
        if self._sweep is None:
            self._start_sweep()
        return FrontProtocol(self)

    def _start_sweep(self) -> None:
        from twisted.internet.task import LoopingCall

        self._sweep = LoopingCall(self.sweep)
        self._sweep.clock = self.reactor
        self._sweep.start(SWEEP_INTERVAL, now=False)

    def sweep(self) -> None:
        """Close the connections whose deadline passed (one pass a second beats a timer per read)."""
        now = self.reactor.seconds()
        for protocol in [p for p in self.connections if p.deadline and p.deadline <= now]:
            protocol.timed_out()

    def stop_sweeping(self) -> None:
        """The server stops: no more deadlines, and the access log is flushed and closed."""
        if self._sweep is not None and self._sweep.running:
            self._sweep.stop()
        self._sweep = None
        if self.access_log is not None:
            self.access_log.close()
            self.access_log = None

    def connection_closed(self, protocol: FrontProtocol) -> None:
        self.connections.discard(protocol)
        if not self.connections and self._drained:
            waiters, self._drained = self._drained, []
            for d in waiters:
                d.callback(None)

    def shut_down(self) -> Deferred[None]:
        """Close idle connections, let busy ones finish; fires when all are closed."""
        for protocol in list(self.connections):
            protocol.shut_down()
        if not self.connections:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._drained.append(d)
        return d

    def abort_all(self) -> None:
        for protocol in list(self.connections):
            if protocol.transport is not None:
                protocol.transport.abortConnection()

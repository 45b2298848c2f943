"""Embedding passenger in a Twisted application: the public API.

Three names, importable from here (``from passenger.embed import ...``):

``load_config(path=None, **settings)``
    A :class:`ServerConfig` from an optional TOML file and keyword settings
    (the file's keys), through the same loader as ``twistd passenger``, so
    every check and error message is the same.
``PassengerService(config, reactor=None)``
    The server as an ``IService``: add it to any service tree with
    ``setServiceParent``.  ``listen=[]`` gives a pool with no HTTP listener of
    its own, for use with...
``AppPoolResource(service, app_name=None)``
    A ``twisted.web`` resource that proxies the requests it gets, wherever it
    is mounted in a :class:`~twisted.web.server.Site`, to the app's processes.

``docs/embedding.md`` has the details and ``docs/examples/`` two runnable examples.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, UNIXClientEndpoint
from twisted.internet.error import ConnectError
from twisted.internet.interfaces import IProtocolFactory, IPushProducer, IStreamClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.internet.task import Cooperator
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import URI, Agent, FileBodyProducer, HTTPConnectionPool, ResponseDone, _HTTP11ClientFactory
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IAgentEndpointFactory, IResponse
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from passenger import __version__
from passenger.config import ConfigError, ServerConfig
from passenger.http.congestion import use_reno_within_host
from passenger.http.errors import error_response
from passenger.http.headers import (
    FORWARDED,
    NAME_CHARS,
    NAME_CHARS_UNDERSCORE,
    REQUEST_DROPPED,
    REQUEST_ID_CHARS,
    RESPONSE_DROPPED,
    connection_tokens,
)
from passenger.loader import build_config, find_setting
from passenger.options import SETTINGS
from passenger.service import PassengerService
from passenger.spawn.report import SpawnReport, error_answer

if TYPE_CHECKING:
    from passenger.pool.group import Group
    from passenger.pool.process import AppProcess

__all__ = ["AppPoolResource", "ConfigError", "PassengerService", "load_config"]

#: Attempts to place a request when processes refuse connections (as the front end).
MAX_TRIES = 3
#: Seconds to connect to an app process.
CONNECT_TIMEOUT = 10
#: Idle keep-alive connections kept per app process (Twisted's default, 2, would reconnect under load).
IDLE_CONNECTIONS_PER_PROCESS = 16
#: The header that tells the app where it is mounted (the path it was stripped of).
PREFIX_HEADER = b"X-Forwarded-Prefix"
#: Status codes whose responses have no body.
_NO_BODY = (204, 304)
_OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


# Configuration.

def load_config(path: str | None = None, **settings: Any) -> ServerConfig:
    """The server configuration from an optional TOML file and keyword settings.

    Keywords are the file's keys (``root``, ``start_command``, ``min_instances``,
    ``listen``...) with Python values; like command-line options they apply to
    every app of the file and override it.  Unlike ``twistd passenger``, no
    ``PASSENGER_*`` environment variable is read: an embedding program's
    configuration is its own.  ``listen=[]`` (or ``()``) means no HTTP listener
    of the server's own, for an :class:`AppPoolResource` in your Site.

    :raises ConfigError: a bad key or value, with a one-line message naming it.
    """
    values: dict[str, Any] = {}
    for key, value in settings.items():
        setting = find_setting(key, "load_config: ")
        if setting.key in values:
            raise ConfigError(f"load_config: {setting.key!r} is given twice (as an alias too)")
        values[setting.key] = value
    own_listener = values.get("listen") not in ([], ())
    if not own_listener:
        del values["listen"]
    try:
        config = build_config(values, path, {})
        if own_listener:
            from passenger.tap import _check_listen

            for description in (*config.listen, *config.admin_listen):
                _check_listen(description)
    except ConfigError as e:
        # The loader names keyword values as command-line options; name them as they were given.
        raise ConfigError(_OPTION.sub(lambda m: _KEYWORDS.get(m.group(), m.group()), str(e))) from None
    return config if own_listener else attrs.evolve(config, listen=())


_KEYWORDS = {setting.option: setting.key for setting in SETTINGS} | {"--config": "path"}


# Connections to app processes.

@implementer(IStreamClientEndpoint)
class _NoDelay:
    """An endpoint whose TCP connections send at once (a request's head and body are two writes), and use
    Reno when they stay within the host while ``reno()`` says so (``loopback_reno``, ``passenger.http.congestion``)."""

    def __init__(self, endpoint: IStreamClientEndpoint, reno: Callable[[], bool]) -> None:
        self._endpoint = endpoint
        self._reno = reno

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[Any]:
        def no_delay(protocol: Any) -> Any:
            transport = getattr(protocol, "transport", None)
            if transport is not None and hasattr(transport, "setTcpNoDelay"):
                transport.setTcpNoDelay(True)
                if self._reno():
                    use_reno_within_host(transport)
            return protocol

        return self._endpoint.connect(protocolFactory).addCallback(no_delay)


@implementer(IAgentEndpointFactory)
class _ProcessEndpoints:
    """Where the URI of a request to a process leads: its TCP port, or the Unix socket a Kuria app reported.

    A Unix socket has no URI of its own; it gets a made-up host name that is
    never seen by the app (the Host header is always set explicitly).
    """

    def __init__(self, reactor: Any, reno: Callable[[], bool]) -> None:
        self._reactor = reactor
        self._reno = reno
        self._unix: dict[bytes, str] = {}

    def base(self, process: AppProcess) -> bytes:
        """``http://host:port`` of ``process``, to which the request target is appended."""
        if process.unix_path is not None:
            host = b"unix-" + hashlib.sha256(process.unix_path.encode()).hexdigest()[:20].encode()
            self._unix[host] = process.unix_path
            return b"http://" + host
        host = process.host.encode()
        return b"http://%s:%d" % (b"[" + host + b"]" if b":" in host else host, process.port)

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        path = self._unix.get(uri.host)
        if path is not None:
            return UNIXClientEndpoint(self._reactor, path, timeout=CONNECT_TIMEOUT)
        host = uri.host.decode("ascii").strip("[]")
        kind = TCP6ClientEndpoint if ":" in host else TCP4ClientEndpoint
        return _NoDelay(kind(self._reactor, host, uri.port, timeout=CONNECT_TIMEOUT), self._reno)


class _QuietClientFactory(_HTTP11ClientFactory):
    """Twisted's factory for pooled connections logs every connection it makes ("Starting factory ...")."""

    noisy = False


def _page(error: tuple[int, str, str]) -> bytes:
    """The front end's own error page (its body, without the HTTP head)."""
    return error_response(*error, keep_alive=False).partition(b"\r\n\r\n")[2]


# The resource.

class AppPoolResource(Resource):
    """Serves the requests it receives from one app of a :class:`PassengerService`.

    Mount it anywhere in a Site (``root.putChild(b"app", resource)``).  The app
    gets the path below the mount point (``/app/x?y`` arrives as ``/x?y``) and
    the mount point in ``X-Forwarded-Prefix: /app``, with ``X-Forwarded-For``,
    ``-Proto``, ``-Host`` and ``-Port``.  Each request checks out the least busy
    process of the app's group (or waits in its queue), streams its body to
    it, and streams the response back with back-pressure, over keep-alive
    connections that are reused.  The service waits for these requests when it
    stops (within its ``drain_timeout``), before it stops the app processes.
    """

    isLeaf = True
    log = Logger()

    def __init__(self, service: PassengerService, app_name: str | None = None, reactor: Any = None) -> None:
        """``app_name`` is required when the service runs more than one app; ``reactor`` defaults to the service's."""
        super().__init__()
        names = [app.name for app in service.config.apps]
        if app_name is None:
            if len(names) != 1:
                raise ValueError(f"the service runs {len(names)} apps ({', '.join(names)}); say which with app_name")
            app_name = names[0]
        elif app_name not in names:
            raise ValueError(f"the service has no app named {app_name!r} (it has: {', '.join(names)})")
        self.service = service
        self.app_name = app_name
        self._reactor = reactor
        self._agent: Agent | None = None
        self._connections: HTTPConnectionPool | None = None
        self._endpoints: _ProcessEndpoints | None = None
        self._cooperator: Cooperator | None = None
        #: Requests from their arrival to their end (answered or abandoned, their process released).
        self.in_flight: set[_Exchange] = set()
        self._drained: list[Deferred[None]] = []
        self._request_prefix = os.urandom(12).hex().encode("ascii")
        self._request_count = 0
        service.drains.append(self.drain)

    @property
    def reactor(self) -> Any:
        return self._reactor if self._reactor is not None else self.service.reactor

    def agent(self) -> tuple[Agent, _ProcessEndpoints]:
        """The HTTP client to app processes, made at the first request (the reactor may not be chosen before)."""
        if self._agent is None or self._endpoints is None:
            self._connections = HTTPConnectionPool(self.reactor, persistent=True)
            self._connections._factory = _QuietClientFactory
            self._connections.maxPersistentPerHost = IDLE_CONNECTIONS_PER_PROCESS
            self._endpoints = _ProcessEndpoints(self.reactor, lambda: self.service.config.loopback_reno)
            self._agent = Agent.usingEndpointFactory(self.reactor, self._endpoints, self._connections)
        return self._agent, self._endpoints

    @property
    def cooperator(self) -> Cooperator:
        """Paces request bodies on this resource's reactor (FileBodyProducer's default uses the global one)."""
        if self._cooperator is None:
            reactor = self.reactor
            self._cooperator = Cooperator(scheduler=lambda work: reactor.callLater(0, work))
        return self._cooperator

    def group(self) -> Group | None:
        """The app's group, looked up per request: the service builds it at start and a reload may remove it."""
        pool = self.service.pool
        return pool.groups.get(self.app_name) if pool is not None and self.service.running else None

    def render(self, request: Request) -> int:
        group = self.group()
        exchange = _Exchange(self, request, group)
        self.in_flight.add(exchange)
        if group is None:
            removed = self.service.running and self.service.pool is not None
            exchange.reject(503, "Service Unavailable", "This application was removed from the server." if removed
                            else "The application server is not running.")
        else:
            exchange.start()
        return NOT_DONE_YET

    def new_request_id(self) -> bytes:
        self._request_count += 1
        return self._request_prefix + hex(self._request_count).encode()

    def ended(self, exchange: _Exchange) -> None:
        self.in_flight.discard(exchange)
        if not self.in_flight and self._drained:
            waiters, self._drained = self._drained, []
            for d in waiters:
                d.callback(None)

    def drain(self) -> Deferred[None]:
        """Fires when no request is in flight, then closes the idle connections to the app.

        The service calls this when it stops, before stopping the app's
        processes; cancelling it (the drain timeout passed) cuts off what is left.
        """
        def close_idle(_: object) -> Deferred[None]:
            return self._connections.closeCachedConnections() if self._connections is not None else succeed(None)

        if not self.in_flight:
            return close_idle(None)

        def cut_off(d: Deferred[None]) -> None:
            # Out of the waiters first: a cancelled drain must fail (CancelledError), not succeed.
            self._drained.remove(d)
            for exchange in list(self.in_flight):
                exchange.cut_off()

        d: Deferred[None] = Deferred(cut_off)
        self._drained.append(d)
        return d.addCallback(close_idle)


class _BodyRelay(Protocol):
    """Carries the app's response body to the client; the app connection pauses while the client is slow."""

    def __init__(self, exchange: _Exchange) -> None:
        self.exchange = exchange

    def connectionMade(self) -> None:
        self.exchange.relaying(self)

    def dataReceived(self, data: bytes) -> None:
        self.exchange.request.write(data)

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:
        self.exchange.body_done(reason)

    def stop(self) -> None:
        """Stop reading the body (the client left, or the request is cut off); connectionLost follows."""
        producer = self.transport
        if producer is not None:
            IPushProducer(producer).stopProducing()


class _Exchange:
    """One request through an AppPoolResource: the group's Waiter, then the relay of its response.

    The process it holds is released exactly once (``_release``), whatever ends
    the request: its response complete, an error, the client leaving, a time limit.
    """

    log = Logger()

    def __init__(self, resource: AppPoolResource, request: Request, group: Group | None) -> None:
        self.resource = resource
        self.request = request
        self.group = group
        self.started = resource.reactor.seconds()
        self.process: AppProcess | None = None
        self.tries = 0
        self.queued = False
        #: The request sent to the process, until its response head arrives.
        self.pending: Deferred[IResponse] | None = None
        self.relay: _BodyRelay | None = None
        self.timer: Any = None
        #: The client left (or was cut off).
        self.gone = False
        #: An answer is complete (or was abandoned midway).
        self.answered = False
        self.status = 0
        #: The app's response head arrived: from now on an error can only cut the connection.
        self.responding = False
        self.request_id = b""

    # Placing the request.
    def start(self) -> None:
        self.request.notifyFinish().addErrback(self._client_gone)
        self._place()

    def _place(self) -> None:
        assert self.group is not None
        self.tries += 1
        self.queued = True
        process = self.group.checkout(self)
        if process is not None:
            self.deliver(process)

    def deliver(self, process: AppProcess) -> None:
        """Waiter: ``process`` serves this request (its session is counted)."""
        group = self.group
        assert group is not None
        self.queued = False
        if self.gone or self.answered:
            group.release(process)
            self._maybe_end()
            return
        self.process = process
        reactor = self.resource.reactor
        if self.tries == 1:
            group.stats.queue_time.observe(reactor.seconds() - self.started)
        limit = group.app.max_request_time
        if limit:
            self.timer = reactor.callLater(limit, self._ran_too_long, process)
        try:  # a failure here must not keep the process checked out
            d = self._send(process)
        except Exception:
            d = fail()
        self.pending = d
        d.addCallbacks(self._response, self._failed, errbackArgs=(process,))

    def _send(self, process: AppProcess) -> Deferred[IResponse]:
        """The request to ``process``: its head as the app sees it and the body the Site has read."""
        agent, endpoints = self.resource.agent()
        request = self.request
        body = None
        content = request.content
        if content is not None and not content.closed:
            content.seek(0, os.SEEK_END)
            if content.tell():
                content.seek(0)
                body = FileBodyProducer(content, cooperator=self.resource.cooperator)
        return agent.request(request.method, endpoints.base(process) + _target(request), self._headers(), body)

    def reject(self, status: int, title: str, detail: str) -> None:
        """Waiter: no process will come."""
        self.queued = False
        self._answer(status, _page((status, title, detail)), "text/html; charset=utf-8")

    def spawn_failed(self, report: SpawnReport) -> None:
        """Waiter: the app cannot start; the same answer as the front end's (Passenger's error page, or JSON)."""
        self.queued = False
        assert self.group is not None
        request = self.request
        self._answer(*error_answer(report, self.group.app, request.getHeader(b"accept"),
                                   request.getHeader(b"content-type")))

    # The request as the app sees it.
    def _headers(self) -> Headers:
        """The client's headers minus hop-by-hop ones, plus the forwarding headers (those of a trusted proxy extended)."""
        request = self.request
        config = self.resource.service.config
        allowed = NAME_CHARS_UNDERSCORE if config.allow_underscore_headers else NAME_CHARS
        dropped = set(REQUEST_DROPPED) | {PREFIX_HEADER.lower()}
        for value in request.requestHeaders.getRawHeaders(b"connection", []):
            dropped |= connection_tokens(value)
        peer = request.getClientAddress()
        address = peer.host if isinstance(peer, (IPv4Address, IPv6Address)) else ""
        trusted = bool(address) and _trusts(config.trusted_proxies, address)
        forwarded: dict[bytes, bytes] = {}
        headers = Headers()
        for name, values in request.requestHeaders.getAllRawHeaders():
            lname = name.lower()
            if lname in dropped:
                if trusted and (lname in FORWARDED or lname == PREFIX_HEADER.lower()):
                    forwarded[lname] = b", ".join(values)
                elif lname == b"x-request-id" and values:
                    value = values[-1]
                    if 0 < len(value) <= 200 and not value.translate(None, REQUEST_ID_CHARS):
                        self.request_id = value
                continue
            if name.translate(None, allowed):
                continue  # "_" and the like could pass for another header once normalised
            headers.setRawHeaders(name, values)
        local = request.getHost()
        local_port = str(getattr(local, "port", "")).encode("ascii")
        host = request.getHeader(b"host")
        if host is None:  # HTTP/1.0 without Host: the address the client connected to
            local_host = getattr(local, "host", "localhost")
            host = (f"[{local_host}]" if ":" in local_host else local_host).encode("ascii") + b":" + local_port
            headers.setRawHeaders(b"Host", [host])
        if not self.request_id:
            self.request_id = self.resource.new_request_id()
        headers.setRawHeaders(b"X-Request-Id", [self.request_id])
        peer_bytes = address.encode("ascii")
        chain = forwarded.get(b"x-forwarded-for")
        if peer_bytes:
            headers.setRawHeaders(b"X-Forwarded-For", [chain + b", " + peer_bytes if chain else peer_bytes])
        scheme = b"https" if request.isSecure() else b"http"
        headers.setRawHeaders(b"X-Forwarded-Proto", [forwarded.get(b"x-forwarded-proto", scheme)])
        headers.setRawHeaders(b"X-Forwarded-Host", [forwarded.get(b"x-forwarded-host", host)])
        if local_port:
            headers.setRawHeaders(b"X-Forwarded-Port", [forwarded.get(b"x-forwarded-port", local_port)])
        if b"forwarded" in forwarded and peer_bytes:
            for_value = b'"[' + peer_bytes + b']"' if b":" in peer_bytes else peer_bytes
            headers.setRawHeaders(b"Forwarded", [forwarded[b"forwarded"] + b", for=" + for_value])
        prefix = forwarded.get(PREFIX_HEADER.lower(), b"").rstrip(b"/") + _mount_point(request)
        if prefix:
            headers.setRawHeaders(PREFIX_HEADER, [prefix])
        return headers

    # The response.
    def _response(self, response: IResponse) -> None:
        self.pending = None
        request = self.request
        if self.gone or self.answered:
            response.deliverBody(_BodyRelay(self))  # stopped at once, and the process released
            return
        self.status = response.code
        self.responding = True
        request.setResponseCode(response.code, response.phrase)
        request.defaultContentType = None  # the app's headers as they are
        out = request.responseHeaders
        for name, values in response.headers.getAllRawHeaders():
            if name.lower() not in RESPONSE_DROPPED or (name.lower() == b"content-length" and request.method == b"HEAD"):
                out.setRawHeaders(name, values)
        if response.length is not UNKNOWN_LENGTH and response.code not in _NO_BODY and request.method != b"HEAD":
            out.setRawHeaders(b"Content-Length", [b"%d" % response.length])
        out.setRawHeaders(b"X-Request-Id", [self.request_id])
        if self.resource.service.config.show_version_in_header:
            out.setRawHeaders(b"X-Powered-By", [b"passenger/" + __version__.encode()])
        response.deliverBody(_BodyRelay(self))

    def relaying(self, relay: _BodyRelay) -> None:
        """The body starts: while the client is slow, the app connection is paused (request.registerProducer)."""
        self.relay = relay
        if self.gone or self.answered:
            relay.stop()
            return
        self.request.registerProducer(relay.transport, True)

    def body_done(self, reason: Failure) -> None:
        """The app's response ended: complete, or broken midway."""
        self.relay = None
        request = self.request
        if request.producer is not None and request.channel is not None:
            request.unregisterProducer()
        self._release()
        if self.gone or self.answered:
            self._maybe_end()
            return
        if reason.check(ResponseDone, PotentialDataLoss):  # PotentialDataLoss: a body framed by the app closing
            self._finish()
        else:
            self._broken("closed the connection in the middle of a response", reason)

    def _failed(self, reason: Failure, process: AppProcess) -> None:
        """No response head: a refused connection is tried on another process; anything else is a 502."""
        self.pending = None
        group = self.group
        assert group is not None
        if self.gone or self.answered:  # we cancelled it: the answer is given, or nobody waits for one
            self._release()
            self._maybe_end()
            return
        if reason.check(ConnectError) and self.process is process:
            self.log.warn("Process {pid} of {app} refused a connection: {error}", pid=process.pid,
                          app=group.app.name, error=reason.getErrorMessage())
            self._release()
            group.unreachable(process)
            content = self.request.content
            if self.tries < MAX_TRIES and (content is None or not content.closed):
                self._place()
                return
        else:
            self.log.warn("Process {pid} of {app} did not answer: {error}", pid=process.pid, app=group.app.name,
                          error=_reason(reason))
            self._release()
        group.stats.upstream_errors += 1
        self._answer(502, _page((502, "Bad Gateway", "The application did not send a response.")),
                     "text/html; charset=utf-8")

    # Ending.
    def _release(self) -> None:
        process, self.process = self.process, None
        timer, self.timer = self.timer, None
        if timer is not None and timer.active():
            timer.cancel()
        if process is not None and self.group is not None:
            self.group.release(process)

    def _answer(self, status: int, body: bytes, kind: str) -> None:
        """Answer with a page of the server's own (nothing of the app's response was sent)."""
        request = self.request
        if self.gone or self.answered or request.startedWriting:
            self._maybe_end()
            return
        self.status = status
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", kind.encode("ascii"))
        request.setHeader(b"Content-Length", b"%d" % len(body))
        request.setHeader(b"Cache-Control", b"no-cache, no-store, must-revalidate")
        request.write(body)
        self._finish()

    def _finish(self) -> None:
        self.answered = True
        self._count()
        self.request.finish()
        self._maybe_end()

    def _broken(self, why: str, reason: Failure | None = None) -> None:
        """The response cannot be completed: it ends short (``_end_short``), never as a truncated success."""
        group = self.group
        if group is not None:
            group.stats.upstream_errors += 1
            self.log.warn("App {app} {why} ({error})", app=group.app.name, why=why,
                          error=_reason(reason) if reason is not None else "")
        self.answered = True
        self._count()
        _end_short(self.request)
        self._maybe_end()

    def _count(self) -> None:
        if self.group is not None and self.status:
            self.group.stats.response(self.status, self.resource.reactor.seconds() - self.started)

    def _client_gone(self, reason: Failure) -> None:
        """notifyFinish failed: the client left before its answer was complete."""
        self.gone = True
        self._let_go()

    def _let_go(self) -> None:
        """Give up on this request: out of the queue, its request to the app or its response relay stopped."""
        if self.queued and self.group is not None:
            self.queued = False
            self.group.cancel(self)
        if self.pending is not None:
            self.pending.cancel()  # _failed releases
        elif self.relay is not None:
            self.relay.stop()  # body_done releases
        else:
            self._release()
        self._maybe_end()

    def _ran_too_long(self, process: AppProcess) -> None:
        """max_request_time passed: the process is replaced, and this request gets 504 (or is cut off)."""
        self.timer = None
        group = self.group
        if self.process is not process or group is None:
            return
        group.stats.upstream_errors += 1
        group.stuck(process, group.app.max_request_time)
        self.cut_off(504, "Gateway Timeout", "The application did not answer within its max_request_time.")

    def cut_off(self, status: int = 503, title: str = "Service Unavailable",
                detail: str = "The server is shutting down.") -> None:
        """The server gives up on this request: ``status`` if nothing was sent yet, else it ends short."""
        if self.gone or self.answered:
            self._let_go()
            return
        if not self.responding:
            self._answer(status, _page((status, title, detail)), "text/html; charset=utf-8")
        else:
            self.answered = True
            self._count()
            self._let_go()  # the relay stops first: nothing more is written after the close is asked for
            _end_short(self.request)
            return
        self._let_go()

    def _maybe_end(self) -> None:
        if ((self.gone or self.answered) and self.process is None and self.pending is None and self.relay is None
                and not self.queued):
            self.resource.ended(self)


def _target(request: Request) -> bytes:
    """The request target below the mount point, as the client wrote it (still percent-encoded), with its query."""
    segments = request.path.split(b"/")[1:]
    rest = segments[len(request.prepath or ()):]
    _, question, query = request.uri.partition(b"?")
    return b"/" + b"/".join(rest) + question + query


def _mount_point(request: Request) -> bytes:
    """Where the resource is mounted: ``/app`` (empty at the root of the site)."""
    segments = request.path.split(b"/")[1:]
    mounted = segments[:len(request.prepath or ())]
    return b"/" + b"/".join(mounted) if mounted and mounted != [b""] else b""


def _trusts(networks: tuple[Any, ...], address: str) -> bool:
    if not networks:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


def _end_short(request: Request) -> None:
    """A begun response that will not be completed: what was written is delivered and the connection then
    closes, which its length or its missing last chunk shows to be early.  An HTTP/1.0 response without a
    length ends at the close itself, so that connection is cut instead: the part must not pass for the whole."""
    if request.clientproto == b"HTTP/1.0" and not request.responseHeaders.hasHeader(b"content-length"):
        _abort(request)
    else:
        request.loseConnection()


def _abort(request: Request) -> None:
    """Cut the client's connection: a response that cannot be finished must not look finished."""
    channel = request.channel
    transport = getattr(channel, "transport", None)
    if transport is not None and hasattr(transport, "abortConnection"):
        transport.abortConnection()
    else:
        request.loseConnection()


def _reason(reason: Failure) -> str:
    """What went wrong, including the reasons a ResponseFailed wraps."""
    inner = getattr(reason.value, "reasons", None)
    if inner:
        return "; ".join(f.getErrorMessage() or type(f.value).__name__ for f in inner)
    return reason.getErrorMessage() or type(reason.value).__name__


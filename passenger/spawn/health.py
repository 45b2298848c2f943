"""HTTP health checks: readiness that needs a 2xx/3xx answer, and periodic liveness.

Passenger only waits for a TCP connect (GLS §1.7), so an app that listens
before it can serve gets traffic too early, and one that wedges later keeps
getting it.  :func:`check_http` asks ``GET <path>`` and looks at the status
line only; :class:`HealthMonitor` repeats a check and reports a process that
keeps failing.  Both take the reactor or clock as an argument, so tests run
them on ``MemoryReactorClock``/``Clock``.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import attrs
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionRefusedError, TCPTimedOutError, TimeoutError
from twisted.internet.interfaces import IConnector, IDelayedCall, IReactorTCP, IReactorTime
from twisted.internet.protocol import ClientFactory, Protocol, connectionDone
from twisted.python.failure import Failure

USER_AGENT = "passenger-health-check"
#: Give up on an answer whose status line (plus any 1xx heads) is longer than this.
MAX_HEAD = 16 * 1024

_STATUS_LINE = re.compile(rb"HTTP/\d\.\d (\d{3})(?:[ \t][^\r\n]*)?")
_BAD_REQUEST_CHARS = re.compile(r"[\x00-\x20\x7f]")


@attrs.frozen
class HealthResult:
    """Outcome of one check; ``detail`` is a short phrase for logs and error pages."""

    ok: bool
    status: int | None
    detail: str


def check_http(reactor: IReactorTCP, host: str, port: int, path: str, timeout: float,
               host_header: str = "localhost") -> Deferred[HealthResult]:
    """``GET path`` on ``host:port``; ok only for a 2xx or 3xx status within ``timeout`` seconds.

    The Deferred never errbacks (unless the caller cancels it, which aborts the
    connection): refusal, timeout, garbage and other statuses all give
    ``ok=False`` with a detail such as "connection refused", "timed out after
    2.0s" or "answered 503".  ``reactor`` must also provide IReactorTime.
    Raises ValueError at once for a path or Host header that would corrupt the
    request, since that is a configuration error, not an unhealthy app.
    """
    if not path.startswith("/") or _BAD_REQUEST_CHARS.search(path):
        raise ValueError(f"health check path must start with / and contain no spaces or control characters: {path!r}")
    if not host_header or _BAD_REQUEST_CHARS.search(host_header):
        raise ValueError(f"invalid Host header for health check: {host_header!r}")
    request = (f"GET {path} HTTP/1.1\r\nHost: {host_header}\r\nConnection: close\r\n"
               f"User-Agent: {USER_AGENT}\r\n\r\n").encode("ascii")
    check = _Check(IReactorTime(reactor), request, timeout)
    try:
        reactor.connectTCP(host, port, check, timeout=timeout)
    except Exception as e:  # e.g. a port out of range: still a result, and no timer left behind
        check.clientConnectionFailed(None, Failure(e))  # type: ignore[arg-type]
    return check.deferred


class _HealthProtocol(Protocol):
    def __init__(self, check: _Check) -> None:
        self._check = check

    def connectionMade(self) -> None:
        self._check.connected(self)

    def dataReceived(self, data: bytes) -> None:
        self._check.received(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._check.lost()


class _Check(ClientFactory):
    """One check: owns the Deferred, the overall timer and the connection."""

    noisy = False

    def __init__(self, clock: IReactorTime, request: bytes, timeout: float) -> None:
        self.deferred: Deferred[HealthResult] = Deferred(self._cancel)
        self._request = request
        self._timeout = timeout
        self._buffer = b""
        self._done = False
        self._connector: IConnector | None = None
        self._connecting = False
        self._protocol: _HealthProtocol | None = None
        self._timer: IDelayedCall | None = clock.callLater(timeout, self._timed_out)

    # ClientFactory

    def startedConnecting(self, connector: IConnector) -> None:
        self._connector = connector
        self._connecting = True

    def buildProtocol(self, addr: object) -> Protocol:
        self._connecting = False
        return _HealthProtocol(self)

    def clientConnectionFailed(self, connector: IConnector, reason: Failure) -> None:
        self._connecting = False
        if reason.check(ConnectionRefusedError):
            self._finish(False, None, "connection refused")
        elif reason.check(TimeoutError, TCPTimedOutError):
            self._finish(False, None, self._timeout_detail())
        else:
            self._finish(False, None, f"could not connect: {reason.getErrorMessage()}")

    # from _HealthProtocol

    def connected(self, protocol: _HealthProtocol) -> None:
        if self._done:  # timed out or cancelled while the connect completed
            self._abort(protocol)
            return
        self._protocol = protocol
        assert protocol.transport is not None
        protocol.transport.write(self._request)

    def received(self, data: bytes) -> None:
        if self._done:
            return
        self._buffer += data
        while not self._done:
            if not self._parse_head():
                break

    def lost(self) -> None:
        self._protocol = None
        self._finish(False, None, "connection closed before a status line" if not self._buffer
                     else f"connection closed mid-answer: {self._buffer[:60]!r}")

    # internals

    def _parse_head(self) -> bool:
        """Look at the buffer; True when a 1xx head was dropped and there may be more to parse."""
        if self._buffer[:5] != b"HTTP/"[:len(self._buffer[:5])]:
            self._garbage()
            return False
        end = self._buffer.find(b"\n")
        if end < 0:
            if len(self._buffer) > MAX_HEAD:
                self._garbage()
            return False
        match = _STATUS_LINE.fullmatch(self._buffer[:end].rstrip(b"\r"))
        if match is None:
            self._garbage()
            return False
        status = int(match.group(1))
        if 100 <= status < 200 and status != 101:  # informational (103 Early Hints): the real answer follows
            head_end = re.search(rb"\r?\n\r?\n", self._buffer)
            if head_end is None:
                if len(self._buffer) > MAX_HEAD:
                    self._garbage()
                return False
            self._buffer = self._buffer[head_end.end():]
            return bool(self._buffer)
        self._finish(200 <= status < 400, status, f"answered {status}")
        return False

    def _garbage(self) -> None:
        self._finish(False, None, f"answered garbage: {self._buffer[:60]!r}")

    def _timeout_detail(self) -> str:
        return f"timed out after {self._timeout}s"

    def _timed_out(self) -> None:
        self._timer = None
        self._finish(False, None, self._timeout_detail())

    def _finish(self, ok: bool, status: int | None, detail: str) -> None:
        if self._done:
            return
        self._close()
        self.deferred.callback(HealthResult(ok, status, detail))

    def _cancel(self, deferred: Deferred[HealthResult]) -> None:
        self._close()

    def _close(self) -> None:
        """Stop the timer and drop the connection, whatever state it is in."""
        self._done = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        protocol, self._protocol = self._protocol, None
        if protocol is not None:
            self._abort(protocol)
        elif self._connector is not None and self._connecting:
            self._connecting = False
            self._connector.stopConnecting()
        self._connector = None

    @staticmethod
    def _abort(protocol: Protocol) -> None:
        transport = protocol.transport
        if transport is None:
            return
        abort = getattr(transport, "abortConnection", None)  # TCP and TLS have it; plain ITransport does not
        if callable(abort):
            abort()
        else:
            transport.loseConnection()


class HealthMonitor:
    """Runs ``check`` every ``interval`` seconds and reports a process that keeps failing.

    The next check is scheduled ``interval`` after the previous one finished, so
    two never overlap and a slow app is not piled on; ``check`` must therefore
    always fire (``check_http`` does, through its timeout).  The first check runs
    ``interval`` after :meth:`start`, as it is meant to follow readiness.  After
    ``failures_allowed`` consecutive failures ``on_unhealthy`` is called once with
    the last result and the monitor stops; a success resets the count.
    """

    def __init__(self, clock: IReactorTime, check: Callable[[], Deferred[HealthResult]], interval: float,
                 failures_allowed: int, on_unhealthy: Callable[[HealthResult], None]) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be positive, not {interval!r}")
        if failures_allowed < 1:
            raise ValueError(f"failures_allowed must be at least 1, not {failures_allowed!r}")
        self._clock = clock
        self._check = check
        self._interval = interval
        self._failures_allowed = failures_allowed
        self._on_unhealthy = on_unhealthy
        self._call: IDelayedCall | None = None
        self._pending: Deferred[HealthResult] | None = None
        self.running = False
        #: Consecutive failures so far.
        self.failures = 0
        self.last_result: HealthResult | None = None

    def start(self) -> None:
        if self.running:
            return
        self.running = True
        self.failures = 0
        self._call = self._clock.callLater(self._interval, self._run)

    def stop(self) -> None:
        """Cancel the next check and any check in flight; idempotent."""
        self.running = False
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.cancel()

    def _run(self) -> None:
        self._call = None
        try:
            deferred = self._check()
        except Exception:
            deferred = fail()
        self._pending = deferred
        deferred.addBoth(self._finished, deferred)

    def _finished(self, outcome: HealthResult | Failure, deferred: Deferred[HealthResult]) -> None:
        if self._pending is not deferred:  # stopped meanwhile: drop the result (or CancelledError)
            return
        self._pending = None
        if isinstance(outcome, Failure):
            outcome = HealthResult(False, None, f"health check failed: {outcome.value!r}")
        self.last_result = outcome
        self.failures = 0 if outcome.ok else self.failures + 1
        if self.failures >= self._failures_allowed:
            self.stop()
            self._on_unhealthy(outcome)
            return
        self._call = self._clock.callLater(self._interval, self._run)

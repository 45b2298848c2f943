"""Readiness of a generic app: the first TCP connect to 127.0.0.1:PORT that succeeds.

Tries start a millisecond apart and back off to every 2 ms, so an app is seen
ready within about 2 ms of listening, at a cost of at most 500 loopback connects a
second while it boots (Passenger probes every 150 ms).
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IConnector, IDelayedCall, IReactorTCP, IReactorTime
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.python.failure import Failure

FIRST_DELAY = 0.001
MAX_DELAY = 0.002
CONNECT_TIMEOUT = 1.0


class _Probe(Protocol):
    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.loseConnection()


class PortProbe(ClientFactory):
    """Connects to ``host:port`` until it succeeds, then calls ``on_ready`` once."""

    protocol = _Probe
    noisy = False

    def __init__(self, reactor: IReactorTCP, clock: IReactorTime, port: int, on_ready: Callable[[], None],
                 host: str = "127.0.0.1") -> None:
        self._reactor = reactor
        self._clock = clock
        self.host = host
        self.port = port
        self._on_ready = on_ready
        self._delay = FIRST_DELAY
        self._pending: IDelayedCall | None = None
        self._connector: IConnector | None = None
        self.attempts = 0
        self.stopped = False

    def start(self) -> None:
        self._attempt()

    def stop(self) -> None:
        self.stopped = True
        if self._pending is not None and self._pending.active():
            self._pending.cancel()
        self._pending = None
        if self._connector is not None:
            self._connector.disconnect()
            self._connector = None

    def _attempt(self) -> None:
        self._pending = None
        if self.stopped:
            return
        self.attempts += 1
        self._connector = self._reactor.connectTCP(self.host, self.port, self, timeout=CONNECT_TIMEOUT)

    def buildProtocol(self, addr: object) -> Protocol:
        self._connector = None
        if not self.stopped:
            self.stopped = True
            self._on_ready()
        return _Probe()

    def clientConnectionFailed(self, connector: IConnector, reason: Failure) -> None:
        self._connector = None
        if self.stopped:
            return
        self._pending = self._clock.callLater(self._delay, self._attempt)
        self._delay = min(self._delay * 2, MAX_DELAY)

    def clientConnectionLost(self, connector: IConnector, reason: Failure) -> None:
        pass

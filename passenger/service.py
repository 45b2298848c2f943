"""PassengerService: the root service, for twistd/twist and for embedding.

Start: bind the listeners (in ``privilegedStartService``, before twistd sheds
privileges), then spawn every app's ``min_instances``.  Stop, in order: stop
accepting, let in-flight requests finish within the drain timeout, then stop
every app process (TERM, KILL after the shutdown timeout).  The Deferred from
``stopService`` fires only when every child has been reaped.
"""

from __future__ import annotations

from typing import Any

from twisted.application import strports
from twisted.application.service import IService, Service
from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks
from twisted.logger import Logger

from passenger import __version__
from passenger.config import ServerConfig
from passenger.http.front import FrontFactory
from passenger.http.router import Router
from passenger.pool.metrics import ProcessMemory
from passenger.pool.pool import Pool
from passenger.spawn.spawner import Spawner


def _global_reactor() -> Any:
    from twisted.internet import reactor

    return reactor


class PassengerService(Service):
    log = Logger()

    def __init__(self, config: ServerConfig, reactor: Any = None) -> None:
        self.config = config
        self._reactor = reactor
        self.pool: Pool | None = None
        self.front: FrontFactory | None = None
        self.listeners: list[IService] = []

    @property
    def reactor(self) -> Any:
        if self._reactor is None:
            self._reactor = _global_reactor()
        return self._reactor

    def _build(self) -> None:
        if self.pool is not None:
            return
        reactor, config = self.reactor, self.config
        self.pool = Pool(Spawner(reactor), reactor, config.max_pool_size, memory=ProcessMemory(),
                         drain_timeout=config.drain_timeout)
        router = Router((app.server_names, app.base_uri, self.pool.add(app)) for app in config.apps)
        self.front = FrontFactory(router, reactor)
        self.listeners = [strports.service(d, self.front, reactor=reactor) for d in self.config.listen]

    def privilegedStartService(self) -> None:
        self._build()
        for listener in self.listeners:
            listener.privilegedStartService()
        super().privilegedStartService()

    def startService(self) -> None:
        self._build()
        assert self.pool is not None
        super().startService()
        for listener in self.listeners:
            listener.startService()
        apps = ", ".join(f"{app.name} ({app.root})" for app in self.config.apps)
        self.log.info("passenger {version} serving {apps} on {listen}",
                      version=__version__, apps=apps, listen=", ".join(self.config.listen))
        self.pool.start()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self._stop()

    @inlineCallbacks
    def _stop(self) -> Any:
        pool, front = self.pool, self.front
        yield DeferredList([d for d in (s.stopService() for s in self.listeners) if d is not None],
                           consumeErrors=True)
        if front is not None:
            drained = front.shut_down()
            timeout = self.reactor.callLater(self.config.drain_timeout, drained.cancel)
            try:
                yield drained
            except Exception:
                self.log.warn("In-flight requests did not finish within {seconds}s; closing them",
                              seconds=self.config.drain_timeout)
                front.abort_all()
            else:
                timeout.cancel()
        if pool is not None:
            yield pool.stop()
        self.log.info("passenger stopped; every app process has exited")
        # twistd and twist re-raise the signal that stopped the reactor, so a
        # clean TERM would end with status -15.  The stop was graceful and
        # complete, so exit 0 as Passenger does (checked by test_smoke.py).
        if getattr(self.reactor, "_exitSignal", None) is not None:
            self.reactor._exitSignal = None

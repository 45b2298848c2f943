"""The admin side of a running server: its instance directory, API listeners, hooks and stats sampler."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.application import strports
from twisted.application.service import IService
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from passenger import __version__
from passenger.admin import instance
from passenger.admin.api import admin_site
from passenger.admin.auth import Passwords
from passenger.admin.hooks import Hooks
from passenger.config import ConfigError

if TYPE_CHECKING:
    from twisted.internet.interfaces import IListeningPort

    from passenger.service import PassengerService

#: Seconds between two samples of the request counters (the dashboard's chart).
SAMPLE_INTERVAL = 1.0


class AdminServer:
    log = Logger()

    def __init__(self, service: PassengerService) -> None:
        self.service = service
        self.instance: instance.Instance | None = None
        self.passwords: Passwords | None = None
        self.socket: IListeningPort | None = None
        #: ``--admin-listen`` endpoints: bound with the HTTP listeners, before privileges are dropped.
        self.listeners: list[IService] = []
        self.hooks: Hooks | None = None
        self._sampler: LoopingCall | None = None
        self._site: Any = None

    def build(self) -> None:
        """Make the --admin-listen services (their site gets its passwords at start)."""
        config = self.service.config
        self._site = admin_site(self.service, Passwords("", ""))
        self.listeners = [strports.service(d, self._site, reactor=self.service.reactor) for d in config.admin_listen]
        if config.admin_listen:
            # Prometheus scrapes over TCP: load prometheus-client now (about 3 MB), not at the first scrape,
            # whose import would stop the reactor, and every request with it, for 20-50 ms.
            import passenger.admin.metrics  # noqa: F401

    def start(self) -> None:
        service, config = self.service, self.service.config
        registry = instance.registry_dir(config.instance_registry_dir)
        try:
            made = instance.create(registry, {
                "version": __version__,
                "server_software": f"passenger/{__version__}",
                "listen": list(config.listen),
                "admin_listen": list(config.admin_listen),
                "apps": [app.name for app in config.apps],
            })
        except OSError as e:
            raise ConfigError(f"cannot make the instance directory in {registry}: {e.strerror}") from None
        self.instance = made
        self.passwords = Passwords(made.password(full=False) or "", made.password(full=True) or "")
        self._site.resource.passwords = self.passwords
        if not made.has_socket:
            self.log.warn("The admin socket path {path} is too long for a Unix socket; the admin API is only on "
                          "--admin-listen (use a shorter --instance-registry-dir)", path=str(made.socket_path))
        else:
            self.socket = service.reactor.listenUNIX(str(made.socket_path), self._site, mode=0o600, wantPID=False)
        for listener in self.listeners:
            listener.startService()
        if config.hooks:
            self.hooks = Hooks(service.reactor, config.hooks, str(made.path))
            assert service.pool is not None
            service.pool.listeners.append(self.hooks)
        self._sampler = LoopingCall(self._sample)
        self._sampler.clock = service.reactor
        self._sampler.start(SAMPLE_INTERVAL, now=True)
        self.log.info("Instance directory {path} (passenger-status and passenger-config find it there)",
                      path=str(made.path))

    def reconfigure(self) -> None:
        """After a reload: the hooks may have changed."""
        pool = self.service.pool
        if pool is None:
            return
        hooks = self.service.config.hooks
        if self.hooks is not None:
            self.hooks.commands = dict(hooks)  # hooks running now go on, and are waited for at stop
        elif hooks:
            self.hooks = Hooks(self.service.reactor, hooks, str(self.instance.path) if self.instance else None)
            pool.listeners.append(self.hooks)

    def _sample(self) -> None:
        pool = self.service.pool
        if pool is None:
            return
        now = self.service.reactor.seconds()
        for group in pool.groups.values():
            group.stats.sample(now)

    def stop(self) -> Deferred[Any]:
        """Stop answering and remove the instance directory (the server is gone for the tools)."""
        if self._sampler is not None and self._sampler.running:
            self._sampler.stop()
        stopping = [maybeDeferred(listener.stopService) for listener in self.listeners]
        if self.socket is not None:
            stopping.append(maybeDeferred(self.socket.stopListening))
            self.socket = None
        if self.hooks is not None:
            stopping.append(self.hooks.stop())  # before the directory they were given goes

        def remove(result: object) -> object:
            if self.instance is not None:
                instance.remove(self.instance)
                self.instance = None
            return result

        return DeferredList(stopping, consumeErrors=True).addBoth(remove)

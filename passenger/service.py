"""PassengerService: the root service, for twistd/twist and for embedding.

Start: bind the listeners (in ``privilegedStartService``, before twistd sheds
privileges), then spawn every app's ``min_instances`` and watch its restart
files.  Stop, in order: stop accepting, let in-flight requests finish within
the drain timeout, then stop every app process (stop signal, KILL after the
shutdown timeout).  The Deferred from ``stopService`` fires only when every
child has been reaped.

Under twistd/twist (``handle_signals``) the server also answers Passenger's
signals: HUP reloads the config file (apps added, removed, restarted when their
settings changed), USR2 restarts every app rolling, QUIT stops fast (no drain),
USR1 reopens the log file.  TERM and INT are the reactor's: a graceful stop.
"""

from __future__ import annotations

import gc
import resource
import signal
from collections.abc import Callable
from typing import Any

import attrs
from twisted.application.service import IService, Service
from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks
from twisted.logger import Logger
from twisted.python.logfile import BaseLogFile

from passenger import __version__
from passenger.admin.server import AdminServer
from passenger.config import AppConfig, ConfigError, ServerConfig
from passenger.http.eager import listening_service
from passenger.http.front import FrontFactory
from passenger.http.router import Router
from passenger.loader import with_backlog
from passenger.pool.group import Group
from passenger.pool.metrics import ProcessMemory
from passenger.pool.pool import Pool
from passenger.pool.restart_files import RestartFiles
from passenger.spawn.spawner import Spawner

#: Descriptors kept for app connections, spooled bodies, logs and the admin side, above max_connections.
OPEN_FILES_RESERVE = 1024
#: The open files limit taken when the hard limit is unlimited (the kernel caps it at nr_open).
OPEN_FILES_IF_UNLIMITED = 1 << 20


def _global_reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def twistd_log_file() -> BaseLogFile | None:
    """The log file twistd opened for ``--logfile``, found through the SIGUSR1 handler it installs.

    twistd keeps no other reference to it, and its own handler *rotates* the
    file (renames it), which fights logrotate; we reopen it instead.
    """
    handler = signal.getsignal(signal.SIGUSR1)
    for cell in getattr(handler, "__closure__", None) or ():
        if isinstance(cell.cell_contents, BaseLogFile):
            return cell.cell_contents
    return None


def freeze_startup_objects() -> None:
    """Leave what the server built to start (modules, classes, Twisted's and our setup: 48,000
    objects) out of every later pass of the garbage collector.

    A full pass walks every object the collector tracks; this VM took 12 ms for
    these alone, added to each pass over the connections (a pass over 10,000 held
    connections took 24-30 ms).  They live as long as the process anyway.  What is
    garbage now is collected first; a cycle among them that becomes garbage later
    stays (``gc.freeze``), which only a reload's replaced configuration could be.
    Only for a process the server owns (twistd, twist): an embedding
    application's objects are its own to manage."""
    gc.collect()
    gc.freeze()


class PassengerService(Service):
    log = Logger()

    def __init__(self, config: ServerConfig, reactor: Any = None,
                 load_config: Callable[[], ServerConfig] | None = None, handle_signals: bool = False) -> None:
        """``load_config`` reads the configuration again (for SIGHUP and reloads)."""
        self.config = config
        self._reactor = reactor
        self._load_config = load_config
        self._handle_signals = handle_signals
        self.pool: Pool | None = None
        self.front: FrontFactory | None = None
        self.listeners: list[IService] = []
        self.watchers: dict[str, RestartFiles] = {}
        self._previous_handlers: dict[int, Any] = {}
        self._log_file: BaseLogFile | None = None
        self._fast = False
        #: The kernel's refusal of io_uring was logged (it is not repeated at each reload).
        self._io_uring_refused = False
        #: The instance directory, the admin API, hooks.
        self.admin = AdminServer(self)
        #: Requests served outside the front end (embedding: AppPoolResource.drain): each callable returns a
        #: Deferred that fires once its requests are done.  A stop waits for them with the front end's, within
        #: the drain timeout, then cancels them (they cut off what is left) and stops the app processes.
        self.drains: list[Callable[[], Deferred[None]]] = []

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
        for app in config.apps:
            self.pool.add(app)
        self.front = FrontFactory(self._router(), reactor, config)
        self.listeners = [listening_service(with_backlog(d, config.socket_backlog), self.front, reactor)
                          for d in self.config.listen]
        self.admin.build()

    def _router(self) -> Router[Group]:
        assert self.pool is not None
        groups = self.pool.groups
        return Router((app.server_names, app.base_uri, groups[app.name]) for app in self.config.apps)

    def privilegedStartService(self) -> None:
        self._build()
        for listener in [*self.listeners, *self.admin.listeners]:
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
        self.admin.start()
        self._tune_reactor()
        self.pool.start()
        for group in self.pool.groups.values():
            self._watch(group)
        if self._handle_signals:  # the server owns the process (twistd/twist), not an embedding application
            self._install_signal_handlers()
            self._raise_open_files_limit()
            freeze_startup_objects()

    def _tune_reactor(self) -> None:
        """Hand ``busy_poll`` and ``io_uring`` to the reactor, which only PassengerEPollReactor understands."""
        wanted = self.config.busy_poll
        if hasattr(self.reactor, "busy_poll"):
            self.reactor.busy_poll = wanted / 1e6
        elif wanted:
            self.log.warn("busy_poll ({usec} us) is ignored: it needs passenger's epoll reactor, not {reactor} "
                          "(twistd passenger installs it; twist --reactor=passenger-epoll)",
                          usec=wanted, reactor=type(self.reactor).__name__)
        if hasattr(self.reactor, "use_io_uring"):
            refused = self.reactor.use_io_uring(self.config.io_uring)
            if refused and not self._io_uring_refused:
                self._io_uring_refused = True
                self.log.info("io_uring is unavailable ({why}): each socket's writes are sent by a call of their "
                              "own", why=refused)

    def _raise_open_files_limit(self) -> None:
        """Take the hard limit of open files, as nginx's ``worker_rlimit_nofile``: every client connection,
        app connection and spooled body is a descriptor, and the usual soft limit (1024) is far below
        ``max_connections``."""
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        wanted = hard if hard != resource.RLIM_INFINITY else max(soft, OPEN_FILES_IF_UNLIMITED)
        if soft < wanted:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
                soft = wanted
            except (OSError, ValueError) as e:
                self.log.warn("Could not raise the open files limit from {soft} to {wanted}: {error}",
                              soft=soft, wanted=wanted, error=e)
        needed = self.config.max_connections + OPEN_FILES_RESERVE
        if self.config.max_connections and soft < needed:
            self.log.warn("The open files limit is {soft}, below max_connections ({max}) plus {reserve} for apps "
                          "and files: connections past about {fit} will fail. Raise it (ulimit -n, LimitNOFILE=) "
                          "or lower max_connections.", soft=soft, max=self.config.max_connections,
                          reserve=OPEN_FILES_RESERVE, fit=max(soft - OPEN_FILES_RESERVE, 0))

    def _watch(self, group: Group) -> None:
        watcher = RestartFiles(group, self.reactor, self.reactor)
        self.watchers[group.app.name] = watcher
        watcher.start()

    # Operations (signals and the admin API).
    def restart_all(self, rolling: bool | None = None) -> Deferred[Any]:
        """Restart every app (rolling, blocking, or as each app is configured)."""
        assert self.pool is not None
        return DeferredList([group.restart(rolling=rolling, reason="asked for every app")
                             for group in self.pool.groups.values()], consumeErrors=True)

    def reload(self) -> None:
        """Read the configuration again and apply it: apps added, removed, or restarted if changed.

        A configuration with an error is refused as a whole (and logged); the
        server keeps running as it was.  Listen addresses change only with a
        server restart.
        """
        if self._load_config is None or self.pool is None or self.front is None:
            self.log.warn("Reload asked for, but there is no configuration file to read again")
            return
        try:
            new = self._load_config()
        except ConfigError as e:
            self.log.error("Reload refused, the running configuration stays: {error}", error=e)
            return
        pool = self.pool
        old_apps = {app.name: app for app in self.config.apps}
        new_apps = {app.name: app for app in new.apps}
        pool.max_pool_size, pool.drain_timeout = new.max_pool_size, new.drain_timeout
        for name in old_apps.keys() - new_apps.keys():
            self.log.info("Reload: {app} is gone from the configuration; stopping it", app=name)
            self.watchers.pop(name).stop()
            pool.remove(name)
        if new == self.config:
            self.log.info("Reload: the configuration is unchanged")
        for name, app in new_apps.items():
            if name not in old_apps:
                self.log.info("Reload: starting the new app {app}", app=name)
                group = pool.add(app)
                group.start()
                self._watch(group)
            else:
                self._reconfigure(pool.groups[name], app, old_apps[name])
        for group in pool.groups.values():
            group.limits_changed()
        if new.listen != self.config.listen or new.admin_listen != self.config.admin_listen:
            self.log.warn("Reload: the listen addresses changed; they take effect when the server restarts")
        self.config = attrs.evolve(new, listen=self.config.listen, admin_listen=self.config.admin_listen,
                                   instance_registry_dir=self.config.instance_registry_dir)
        self.admin.reconfigure()
        self._tune_reactor()
        self.front.router = self._router()
        self.front.configure(self.config)
        pool.rebalance()

    def _reconfigure(self, group: Group, app: AppConfig, old: AppConfig) -> None:
        if app == old:
            return
        self.log.info("Reload: the settings of {app} changed; restarting it", app=app.name)
        group.app = app
        if app.restart_dir != old.restart_dir or app.root != old.root:
            self.watchers.pop(app.name).stop()
            self._watch(group)
        group.restart(reason="its settings changed")

    def reopen_logs(self) -> None:
        """Reopen the server's log file and the access log (logrotate moved them).

        Each is opened anew only if the new file can be created: otherwise the
        old one stays in use (logging goes on, to the moved file) and the
        reason is logged, instead of every later line being lost.
        """
        access_log = self.front.access_log if self.front is not None else None
        if access_log is not None and self._can_open(access_log.path, "access log"):
            access_log.reopen()
            self.log.info("Reopened the access log {path}", path=access_log.path)
        if self._log_file is None:
            self.log.info("USR1: no log file to reopen (logging to a terminal or syslog)")
            return
        if self._can_open(self._log_file.path, "log file"):
            self._log_file.reopen()
            self.log.info("Reopened the log file {path}", path=self._log_file.path)

    def _can_open(self, path: str, what: str) -> bool:
        if path == "-":
            return True
        try:
            with open(path, "a"):
                pass
        except OSError as e:
            self.log.error("Cannot reopen the {what} {path} ({error}); still writing to the old one",
                           what=what, path=path, error=e.strerror)
            return False
        return True

    def fast_stop(self) -> None:
        """Stop without letting requests finish (SIGQUIT)."""
        self._fast = True
        self.reactor.stop()

    def _install_signal_handlers(self) -> None:
        self._log_file = twistd_log_file()
        actions: dict[int, Callable[[], object]] = {
            signal.SIGHUP: self.reload,
            signal.SIGUSR2: lambda: self.restart_all(rolling=True),
            signal.SIGQUIT: self.fast_stop,
            signal.SIGUSR1: self.reopen_logs,
        }
        for number, action in actions.items():
            def handler(signum: int, frame: object, action: Callable[[], object] = action) -> None:
                self.reactor.callFromThread(action)

            self._previous_handlers[number] = signal.signal(number, handler)

    def _restore_signal_handlers(self) -> None:
        for number, previous in self._previous_handlers.items():
            signal.signal(number, previous)
        self._previous_handlers.clear()

    # Stopping.
    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self._stop()

    def _drain_requests(self, front: FrontFactory) -> Deferred[Any]:
        """Fires when the front end's requests and those of every ``drains`` entry are done; fails if one fails
        (a cancel on the drain timeout)."""
        if not self.drains:
            return front.shut_down()
        return DeferredList([front.shut_down(), *(drain() for drain in self.drains)],
                            fireOnOneErrback=True, consumeErrors=True)

    @inlineCallbacks
    def _stop(self) -> Any:
        pool, front = self.pool, self.front
        if pool is not None:
            pool.draining = True  # the requests in flight finish on the processes there are
        for watcher in self.watchers.values():
            watcher.stop()
        self._restore_signal_handlers()
        yield DeferredList([d for d in (s.stopService() for s in self.listeners) if d is not None],
                           consumeErrors=True)
        if front is not None:
            if self._fast:
                front.abort_all()
            else:
                if front.connections:  # which phase a slow stop is in shows in the log
                    self.log.info("Waiting for {count} client connection(s) to finish (at most {seconds}s)",
                                  count=len(front.connections), seconds=self.config.drain_timeout)
                drained = self._drain_requests(front)
                timeout = self.reactor.callLater(self.config.drain_timeout, drained.cancel)
                try:
                    yield drained
                except Exception:
                    self.log.warn("In-flight requests did not finish within {seconds}s; closing them",
                                  seconds=self.config.drain_timeout)
                    front.abort_all()
                else:
                    timeout.cancel()
        if front is not None:
            front.stop_sweeping()
        if pool is not None:
            yield pool.stop()
        yield self.admin.stop()
        self.log.info("passenger stopped; every app process has exited")
        # twistd and twist re-raise the signal that stopped the reactor, so a
        # clean TERM would end with status -15.  The stop was graceful and
        # complete, so exit 0 as Passenger does (checked by test_smoke.py).
        if getattr(self.reactor, "_exitSignal", None) is not None:
            self.reactor._exitSignal = None

"""Spawning one generic app process: port, environment, ``/bin/sh -c "exec …"``, probe.

The spawner wires the pieces together and leaves every decision about the
process's life to its lifecycle machine and its group.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from twisted.logger import Logger
from twisted.python.failure import Failure

from passenger.config import AppConfig
from passenger.pool.process import AppProcess, ProcessObserver
from passenger.spawn.environment import app_argv, app_environment
from passenger.spawn.ports import PortAllocator
from passenger.spawn.probe import PortProbe
from passenger.spawn.protocol import AppProcessProtocol


class SpawnError(RuntimeError):
    """The OS refused to start the process at all."""


class Spawner:
    log = Logger()

    def __init__(self, reactor: Any, ports: PortAllocator | None = None) -> None:
        self._reactor = reactor
        self._ports = ports or PortAllocator()

    def spawn(self, app: AppConfig, number: int, observer: ProcessObserver, ports_in_use: Iterable[int] = ()) -> AppProcess:
        port = self._ports.allocate(set(ports_in_use))
        process = AppProcess(
            app=app.name,
            number=number,
            port=port,
            concurrency=app.concurrency,
            clock=self._reactor,
            observer=observer,
            shutdown_timeout=app.shutdown_timeout,
        )
        probe = PortProbe(self._reactor, self._reactor, port, process.listening)

        def ended(reason: Failure) -> None:
            probe.stop()
            process.exited(reason)

        protocol = AppProcessProtocol(app.name, ended)
        process.log_tail = lambda: list(protocol.tail)
        try:
            transport = self._reactor.spawnProcess(
                protocol,
                "/bin/sh",
                app_argv(app),
                env=app_environment(app, port),
                path=app.root,
                childFDs={0: "w", 1: "r", 2: "r"},
            )
        except OSError as e:
            raise SpawnError(f"could not start /bin/sh in {app.root}: {e.strerror}") from None
        process.attach(transport)
        self.log.info("Spawning process {pid} of {app} on port {port}", pid=process.pid, app=app.name, port=port)

        def timed_out() -> None:
            probe.stop()
            process.start_timed_out()

        process.arm(app.start_timeout, timed_out)
        probe.start()
        return process

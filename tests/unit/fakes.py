"""Test doubles for the spawning side of the pool.

* :class:`FakeSpawner` has the signature of :class:`passenger.spawn.spawner.Spawner`
  and returns real :class:`AppProcess` objects on a ``Clock``, each with a
  :class:`FakeProcessTransport`; a test drives the lifecycle with
  ``process.listening()`` and ``process.transport.end(code=..., signal=...)``.
* :class:`FakeProcessReactor` is a ``MemoryReactorClock`` with a recording
  ``spawnProcess``, so the *real* Spawner runs without real processes.  Its
  transports are the same :class:`FakeProcessTransport`, ended the same way.

``test_fakes_contract.py`` runs one set of assertions against both, so the
fake cannot drift from the real thing unnoticed.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.interfaces import IProcessProtocol, IProcessTransport, IReactorProcess, IReactorTime
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from zope.interface import implementer

from passenger.config import AppConfig
from passenger.pool.process import SPAWNING, AppProcess, ProcessObserver

_pids = itertools.count(41000)


def make_app(**overrides: Any) -> AppConfig:
    """An AppConfig for tests, rooted in the (per-test) temporary directory."""
    values: dict[str, Any] = dict(name="app", root=os.environ.get("TMPDIR", "/tmp"), start_command="serve --port $PORT")
    values.update(overrides)
    return AppConfig(**values)


def exit_failure(code: int | None = 0, signal: int | None = None) -> Failure:
    """The Failure a real reactor hands to ``processEnded`` for this exit."""
    if signal is None and code == 0:
        return Failure(ProcessDone(0))
    return Failure(ProcessTerminated(exitCode=None if signal is not None else code, signal=signal))


def assert_no_delayed_calls(clock: IReactorTime) -> None:
    pending = [repr(call) for call in clock.getDelayedCalls()]
    assert pending == [], f"unexpected DelayedCalls left: {pending}"


def delays(clock: Clock) -> list[float]:
    """Seconds from now of every pending DelayedCall, soonest first."""
    now = clock.seconds()
    return sorted(call.getTime() - now for call in clock.getDelayedCalls())


@implementer(IProcessTransport)
class FakeProcessTransport:
    """An OS process that never ran: records what is done to it.

    Like Twisted's real process transport, ``pid`` becomes None once the
    process is reaped (before ``processEnded`` is called) and signalling a
    reaped process raises ProcessExitedAlready.
    """

    def __init__(self, on_end: Callable[[Failure], None] | None = None) -> None:
        self.pid: int | None = next(_pids)
        #: The pid it had while alive (``pid`` is None after the exit).
        self.original_pid = self.pid
        self.on_end = on_end
        self.signals: list[str] = []
        self.closed_fds: list[int] = []
        self.written: list[tuple[int, bytes]] = []
        self.lost = False
        self.ended = False

    @property
    def stdin_closed(self) -> bool:
        return 0 in self.closed_fds

    # IProcessTransport
    def signalProcess(self, signalID: str | int) -> None:
        if self.ended:
            raise ProcessExitedAlready()
        self.signals.append(str(signalID))

    def closeStdin(self) -> None:
        self.closeChildFD(0)

    def closeStdout(self) -> None:
        self.closeChildFD(1)

    def closeStderr(self) -> None:
        self.closeChildFD(2)

    def closeChildFD(self, descriptor: int) -> None:
        self.closed_fds.append(descriptor)

    def writeToChild(self, childFD: int, data: bytes) -> None:
        self.written.append((childFD, data))

    def write(self, data: bytes) -> None:
        self.writeToChild(0, data)

    def writeSequence(self, data: Iterable[bytes]) -> None:
        for chunk in data:
            self.write(chunk)

    def loseConnection(self) -> None:
        self.lost = True
        self.closeStdin()
        self.closeStdout()
        self.closeStderr()

    def getPeer(self) -> Any:
        return None

    def getHost(self) -> Any:
        return None

    # Test control.
    def end(self, code: int | None = 0, signal: int | None = None) -> None:
        """The process exits with ``code`` (or dies of ``signal``) and is reaped."""
        assert not self.ended, "a process ends only once"
        assert self.on_end is not None, "nobody listens for this process's end"
        self.ended = True
        self.pid = None
        self.on_end(exit_failure(code, signal))


class FakePortAllocator:
    """Deterministic ports, counting up, skipping those in use; records each request."""

    def __init__(self, first: int = 20000) -> None:
        self._next = first
        self.requests: list[set[int]] = []

    def allocate(self, taken: Iterable[int] = ()) -> int:
        in_use = set(taken)
        self.requests.append(in_use)
        while self._next in in_use:
            self._next += 1
        port = self._next
        self._next += 1
        return port


class FakeSpawner:
    """Spawner stand-in: real AppProcess objects, fake OS processes, one Clock."""

    def __init__(self, clock: Clock, ports: FakePortAllocator | None = None) -> None:
        self.clock = clock
        self.ports = ports or FakePortAllocator()
        #: Every process returned, in spawn order.
        self.spawned: list[AppProcess] = []
        #: (number, ports_in_use) of every call, including the ones that raised.
        self.calls: list[tuple[int, list[int]]] = []
        self._failures: list[Exception] = []

    def fail_next(self, error: Exception) -> None:
        """The next call to spawn raises ``error`` (as the real one raises SpawnError)."""
        self._failures.append(error)

    def spawn(self, app: AppConfig, number: int, observer: ProcessObserver,
              ports_in_use: Iterable[int] = ()) -> AppProcess:
        in_use = list(ports_in_use)
        self.calls.append((number, in_use))
        if self._failures:
            raise self._failures.pop(0)
        process = AppProcess(
            app=app.name,
            number=number,
            port=self.ports.allocate(in_use),
            concurrency=app.concurrency,
            clock=self.clock,
            observer=observer,
            shutdown_timeout=app.shutdown_timeout,
            stop_signal=app.stop_signal,
        )
        process.attach(FakeProcessTransport(on_end=process.exited))
        process.arm(app.start_timeout, process.start_timed_out)
        self.spawned.append(process)
        return process

    @property
    def in_spawning(self) -> list[AppProcess]:
        return [p for p in self.spawned if p.state == SPAWNING]


def transport_of(process: AppProcess) -> FakeProcessTransport:
    transport = process.transport
    assert isinstance(transport, FakeProcessTransport)
    return transport


@dataclass
class SpawnedProcess:
    """One recorded call of FakeProcessReactor.spawnProcess."""

    protocol: Any  # the ProcessProtocol the spawner passed
    executable: str
    args: list[str]
    env: dict[str, str]
    path: str | None
    child_fds: dict[int, Any] | None
    transport: FakeProcessTransport


@implementer(IReactorProcess)
class FakeProcessReactor(MemoryReactorClock):
    """MemoryReactorClock that records spawnProcess instead of forking.

    Set ``spawn_error`` to make the next spawnProcess raise it (as a failed
    fork does).  Each spawned process's transport is connected to its
    protocol, as the real reactor does before spawnProcess returns;
    ``transport.end(...)`` delivers ``processEnded`` to the protocol.
    """

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[SpawnedProcess] = []
        self.spawn_error: Exception | None = None

    def spawnProcess(self, processProtocol: IProcessProtocol, executable: bytes | str,
                     args: Sequence[bytes | str] = (), env: Mapping[Any, Any] | None = None,
                     path: bytes | str | None = None, uid: int | None = None, gid: int | None = None,
                     usePTY: bool = False, childFDs: Mapping[int, int | str] | None = None) -> FakeProcessTransport:
        if self.spawn_error is not None:
            error, self.spawn_error = self.spawn_error, None
            raise error
        transport = FakeProcessTransport(on_end=processProtocol.processEnded)
        self.spawned.append(SpawnedProcess(processProtocol, str(executable), [str(a) for a in args],
                                           dict(env or {}), None if path is None else str(path),
                                           None if childFDs is None else dict(childFDs), transport))
        processProtocol.makeConnection(transport)
        return transport

    def connect_probe(self, port: int) -> None:
        """The app on ``port`` accepts the readiness probe's latest connection attempt."""
        for host, p, factory, _timeout, _bind in reversed(self.tcpClients):
            if p == port:
                factory.buildProtocol(IPv4Address("TCP", host, port))
                return
        raise AssertionError(f"nothing ever connected to port {port}")


@dataclass
class RecordingObserver:
    """A ProcessObserver that records (event, process, reason)."""

    events: list[tuple[str, AppProcess, str | None]] = field(default_factory=list)

    def process_ready(self, process: AppProcess) -> None:
        self.events.append(("ready", process, None))

    def process_failed(self, process: AppProcess, reason: str) -> None:
        self.events.append(("failed", process, reason))

    def process_exited(self, process: AppProcess, reason: str) -> None:
        self.events.append(("exited", process, reason))


class RecordingWaiter:
    """A request waiting for a process: records deliveries and rejections."""

    def __init__(self, name: str = "") -> None:
        self.name = name
        self.delivered: list[AppProcess] = []
        self.rejected: list[tuple[int, str, str]] = []
        self.reports: list[Any] = []

    def deliver(self, process: AppProcess) -> None:
        self.delivered.append(process)

    def reject(self, status: int, title: str, detail: str) -> None:
        self.rejected.append((status, title, detail))

    def spawn_failed(self, report: Any) -> None:
        """Recorded as a rejection with the report's status and summary, and the report kept."""
        self.reports.append(report)
        self.rejected.append((500, "spawn failed", report.summary))

    @property
    def waiting(self) -> bool:
        return not self.delivered and not self.rejected

    def __repr__(self) -> str:
        return f"<Waiter {self.name}>"


class FakeMemory:
    """MemoryReader stand-in: the RSS of each pid is whatever the test sets (None: unreadable, gone)."""

    def __init__(self) -> None:
        self.rss_by_pid: dict[int, int] = {}
        self.reads: list[int] = []

    def rss(self, pid: int) -> int | None:
        self.reads.append(pid)
        return self.rss_by_pid.get(pid)

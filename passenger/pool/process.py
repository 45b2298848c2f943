"""One app process and its lifecycle: spawning -> ready -> stopping -> dead.

The lifecycle is an Automat machine (as Twisted's ClientService); the process
object is its core and carries the counters routing reads on every request,
so the hot path never goes through the machine.
"""

from __future__ import annotations

import collections
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from automat import TypeMachineBuilder
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ProcessExitedAlready, ProcessTerminated
from twisted.internet.interfaces import IDelayedCall, IProcessTransport, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from passenger.http.eager import connect_tcp, connect_unix

if TYPE_CHECKING:
    from passenger.http.upstream import UpstreamConnection

#: Idle keep-alive connections kept per process (as nginx's upstream ``keepalive``).  A burst of
#: requests opens as many connections as it needs; past this many, they close once answered.
IDLE_CONNECTIONS = 64

#: Signal names IProcessTransport.signalProcess understands (others are sent by number).
TWISTED_SIGNAL_NAMES = frozenset({"HUP", "STOP", "INT", "KILL", "TERM"})

SPAWNING = "spawning"
READY = "ready"
STOPPING = "stopping"
DEAD = "dead"


class ProcessObserver(Protocol):
    """What a process tells its group."""

    def process_ready(self, process: AppProcess) -> None: ...

    def process_failed(self, process: AppProcess, reason: str) -> None:
        """The process ended before it was ready (exit, timeout)."""

    def process_exited(self, process: AppProcess, reason: str) -> None:
        """A process that had been ready is gone."""


def describe_exit(reason: Failure) -> str:
    value = reason.value
    if isinstance(value, ProcessTerminated):
        if value.signal is not None:
            return f"killed by signal {value.signal}"
        return f"exited with status {value.exitCode}"
    return "exited with status 0"


class _Lifecycle(Protocol):
    def listening(self) -> None:
        """The readiness check passed."""

    def start_timed_out(self) -> None:
        """The start timeout passed before the process was ready."""

    def exited(self, reason: Failure) -> None:
        """The OS process is gone and reaped."""

    def stop(self) -> Deferred[None]:
        """Stop the process (TERM, KILL later); fires once it is reaped."""

    def kill_timed_out(self) -> None:
        """TERM was not enough within the shutdown timeout."""

    def handshake_failed(self) -> None:
        """The app reported failure or broke the handshake (its report is in ``failure``)."""


@dataclass(eq=False)
class AppProcess:
    """A spawned process of an app, as the pool and the proxy see it."""

    app: str
    number: int
    port: int
    concurrency: int | None
    clock: IReactorTime
    observer: ProcessObserver
    shutdown_timeout: float
    log_tail: Callable[[], list[str]] = lambda: []
    transport: IProcessTransport | None = None
    pid: int | None = None
    state: str = SPAWNING
    #: Requests in flight on this process.
    sessions: int = 0
    processed: int = 0
    spawned_at: float = field(default_factory=time.time)
    started_monotonic: float = field(default_factory=time.monotonic)
    ready_at: float | None = None
    last_used: float = field(default_factory=time.time)
    exit_reason: str | None = None
    #: Set (a SpawnReport) when the process failed to start.
    failure: Any = None
    #: Where requests go: a Unix socket the app reported, else host:port.
    unix_path: str | None = None
    #: The periodic health check of a ready process, if the app has one.
    monitor: Any = None
    #: Keep-alive connections to this process, idle and ready for a request (at most IDLE_CONNECTIONS).
    idle: list[UpstreamConnection] = field(default_factory=list)
    #: Every open connection to this process.
    connections: set[UpstreamConnection] = field(default_factory=set)
    host: str = "127.0.0.1"
    #: Out of rotation, finishing its requests before it is stopped.
    draining: bool = False
    #: Which restart of its app it belongs to (new processes take requests first in a rolling restart).
    generation: int = 0
    #: The signal that asks it to stop (after its stdin is closed).
    stop_signal: str = "TERM"
    #: Sticky sessions: the cookie value that routes a client back here.
    sticky_id: int | None = None
    #: Requests waiting for this very process (sticky sessions), oldest first: (since, waiter).
    waiters: collections.deque[Any] = field(default_factory=collections.deque)
    _timer: IDelayedCall | None = None
    _stop_waiters: list[Deferred[None]] = field(default_factory=list)
    _machine: Any = None
    log = Logger()

    def __post_init__(self) -> None:
        self._machine = _LifecycleMachine(self)

    def attach(self, transport: IProcessTransport) -> None:
        """The OS process exists; remember its pid (Twisted forgets it at exit)."""
        self.transport = transport
        self.pid = transport.pid

    # Inputs, forwarded to the machine.
    def listening(self) -> None:
        self._machine.listening()

    def start_timed_out(self) -> None:
        self._machine.start_timed_out()

    def exited(self, reason: Failure) -> None:
        self._machine.exited(reason)

    def stop(self) -> Deferred[None]:
        result: Deferred[None] = self._machine.stop()
        return result

    def kill_timed_out(self) -> None:
        self._machine.kill_timed_out()

    def handshake_failed(self) -> None:
        self._machine.handshake_failed()

    def connect(self, reactor: Any, factory: Any) -> None:
        """Open a connection to where this process takes requests."""
        if self.unix_path is not None:
            connect_unix(reactor, self.unix_path, factory, timeout=10)
        else:
            connect_tcp(reactor, self.host, self.port, factory, timeout=10)

    # Helpers used by the machine's outputs.
    def arm(self, seconds: float, action: Callable[[], None]) -> None:
        self.disarm()
        self._timer = self.clock.callLater(seconds, action)

    def disarm(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def signal(self, name: str) -> None:
        if self.transport is None:
            return
        # Twisted knows a few names; any other signal goes by number.
        signal_id: str | int = name if name in TWISTED_SIGNAL_NAMES else int(getattr(signal, "SIG" + name))
        try:
            self.transport.signalProcess(signal_id)
        except (ProcessExitedAlready, OSError):
            pass

    def begin_stop(self, signal_name: str | None = None) -> Deferred[None]:
        """Close stdin (Passenger's shutdown signal), send the stop signal (TERM, or ``signal_name``), and KILL
        after the timeout."""
        self.state = STOPPING
        if self.transport is not None:
            try:
                self.transport.closeStdin()
            except Exception:
                pass
        self.signal(signal_name or self.stop_signal)
        self.arm(self.shutdown_timeout, self.kill_timed_out)
        return self.wait_stopped()

    def wait_stopped(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self._stop_waiters.append(d)
        return d

    def finish(self, reason: Failure) -> str:
        self.state = DEAD
        self.disarm()
        self.exit_reason = describe_exit(reason)
        for conn in list(self.connections):
            conn.process_gone()
        self.idle.clear()
        waiters, self._stop_waiters = self._stop_waiters, []
        for d in waiters:
            d.callback(None)
        return self.exit_reason


def _build() -> Callable[[AppProcess], _Lifecycle]:
    b = TypeMachineBuilder(_Lifecycle, AppProcess)
    Spawning = b.state("Spawning")
    Ready = b.state("Ready")
    Stopping = b.state("Stopping")
    Dead = b.state("Dead")

    @Spawning.upon(_Lifecycle.listening).to(Ready)
    def became_ready(i: _Lifecycle, p: AppProcess) -> None:
        p.disarm()
        p.state = READY
        p.ready_at = p.last_used = time.time()
        p.observer.process_ready(p)

    def abort_start(p: AppProcess, why: str) -> None:
        """A process that will never be ready: KILL it (as Passenger does) and tell the group."""
        p.state = STOPPING
        p.exit_reason = why
        p.signal("KILL")
        p.arm(p.shutdown_timeout, p.kill_timed_out)
        p.observer.process_failed(p, why)

    @Spawning.upon(_Lifecycle.start_timed_out).to(Stopping)
    def start_timeout(i: _Lifecycle, p: AppProcess) -> None:
        abort_start(p, "did not start listening within the start timeout; killed")

    @Spawning.upon(_Lifecycle.handshake_failed).to(Stopping)
    def handshake_failed(i: _Lifecycle, p: AppProcess) -> None:
        abort_start(p, "failed its startup handshake; killed")

    @Spawning.upon(_Lifecycle.exited).to(Dead)
    def exited_early(i: _Lifecycle, p: AppProcess, reason: Failure) -> None:
        p.observer.process_failed(p, "exited before it was ready: " + p.finish(reason))

    @Ready.upon(_Lifecycle.exited).to(Dead)
    def died(i: _Lifecycle, p: AppProcess, reason: Failure) -> None:
        p.observer.process_exited(p, p.finish(reason))

    @Stopping.upon(_Lifecycle.exited).to(Dead)
    def stopped(i: _Lifecycle, p: AppProcess, reason: Failure) -> None:
        p.finish(reason)

    @Spawning.upon(_Lifecycle.stop).to(Stopping)
    def stop_spawning(i: _Lifecycle, p: AppProcess) -> Deferred[None]:
        """A spawn given up (the server or its app stops, a restart): KILL, as Passenger's spawner does.

        It has served nothing, and the stop signal could be lost: a child between
        fork and exec still has the server's Python signal handlers (twistd's for
        TERM), which take the signal and do nothing there; it would then exec and
        run until the KILL after ``shutdown_timeout``.  KILL cannot be handled.
        """
        return p.begin_stop("KILL")

    @Ready.upon(_Lifecycle.stop).to(Stopping)
    def stop(i: _Lifecycle, p: AppProcess) -> Deferred[None]:
        return p.begin_stop()

    @Stopping.upon(_Lifecycle.stop).loop()
    def stop_again(i: _Lifecycle, p: AppProcess) -> Deferred[None]:
        return p.wait_stopped()

    @Dead.upon(_Lifecycle.stop).loop()
    def stop_dead(i: _Lifecycle, p: AppProcess) -> Deferred[None]:
        return succeed(None)

    @Stopping.upon(_Lifecycle.kill_timed_out).loop()
    def kill(i: _Lifecycle, p: AppProcess) -> None:
        p.log.warn("App {pid} ({app}) ignored {signal} for {seconds}s; sending KILL",
                   pid=p.pid, app=p.app, signal=p.stop_signal, seconds=p.shutdown_timeout)
        p.signal("KILL")

    # Late or repeated inputs that need no action.
    Ready.upon(_Lifecycle.listening).loop().returns(None)
    Stopping.upon(_Lifecycle.listening).loop().returns(None)
    Dead.upon(_Lifecycle.listening).loop().returns(None)
    Stopping.upon(_Lifecycle.start_timed_out).loop().returns(None)
    Dead.upon(_Lifecycle.start_timed_out).loop().returns(None)
    Dead.upon(_Lifecycle.kill_timed_out).loop().returns(None)
    for state in (Ready, Stopping, Dead):
        state.upon(_Lifecycle.handshake_failed).loop().returns(None)
    return b.build()


_LifecycleMachine = _build()


"""A process stopped at any stage of its spawn is gone at once, not after shutdown_timeout.

In-process, on the real reactor (pytest-twisted), with real processes.  The
hard stage is the first one: between fork and exec the child is a copy of the
server, with the server's Python signal handlers (twistd's reactor handles
TERM).  A TERM that arrives then runs that handler in the child (which does
nothing there) and is gone; the child execs and runs as if never asked to
stop, and the stop waits for the KILL after shutdown_timeout.  That is how a
graceful stop once hung (test_signals.py's connection accepted just before the
stop: the request made the group spawn, and the pool's stop came while that
process was still forking).  Here the window is held open for a moment by a
fork hook, so the signal lands in it every time.

The same window once made a slow fork look like an app on the wrong port: the
child, not exec'd yet, holds the server's listening sockets.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Generator, Iterator
from typing import Any

import pytest
import pytest_twisted  # type: ignore[import-untyped]
from twisted.internet.defer import Deferred, inlineCallbacks

from passenger.embed import PassengerService, load_config
from passenger.pool.process import AppProcess
from passenger.spawn.spawner import Spawner
from tests.integration.conftest import APP_PYTHON, APPS, pid_alive, world_dir
from tests.polling import until

#: The default: a stop that has to wait for the KILL takes this long.
SHUTDOWN_TIMEOUT = 30.0
#: A stop that worked is over well within this.
STOP_WITHIN = 5.0
#: How long a child is held between fork and exec, while the window is open.
HOLD = 0.5

_hold_child = 0.0


def _after_fork_in_child() -> None:
    """Runs in every forked child of this test process (Twisted forks, then execs): holds it before the exec."""
    if _hold_child:
        time.sleep(_hold_child)


os.register_at_fork(after_in_child=_after_fork_in_child)


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


@pytest.fixture
def twistd_handles_term() -> Iterator[None]:
    """TERM has a Python handler in this process, as under twistd.

    The running reactor has installed its own (``sigTerm``); if it has not started yet, one that does nothing.
    """
    previous = signal.getsignal(signal.SIGTERM)
    if callable(previous):
        yield
        return

    def ours(signum: int, frame: object) -> None:
        pass

    signal.signal(signal.SIGTERM, ours)
    try:
        yield
    finally:
        if signal.getsignal(signal.SIGTERM) is ours:  # not the reactor's, if it started meanwhile
            signal.signal(signal.SIGTERM, previous)


@pytest.fixture
def held_between_fork_and_exec() -> Iterator[None]:
    global _hold_child
    _hold_child = HOLD
    try:
        yield
    finally:
        _hold_child = 0.0


class Observer:
    def __init__(self) -> None:
        self.events: list[str] = []

    def process_ready(self, process: AppProcess) -> None:
        self.events.append("ready")

    def process_failed(self, process: AppProcess, reason: str) -> None:
        self.events.append("failed: " + reason)

    def process_exited(self, process: AppProcess, reason: str) -> None:
        self.events.append("exited: " + reason)


def settings(command: str, **more: Any) -> dict[str, Any]:
    return {"root": str(APPS), "start_command": command, "listen": [], "shutdown_timeout": SHUTDOWN_TIMEOUT,
            "instance_registry_dir": str(world_dir("registry", 0o755)),
            "spawn_dir": str(world_dir("spawn", 0o755)), **more}


@inlineCallbacks
def stopped_in_time(stop: Deferred[Any], pids: list[int]) -> Generator[Deferred[Any], Any, float]:
    """Wait for ``stop`` (at most STOP_WITHIN seconds; KILL ``pids`` and fail past it); the seconds it took."""
    reactor = _reactor()
    began = reactor.seconds()
    done: list[object] = []
    stop.addBoth(done.append)
    try:
        yield until(lambda: done, STOP_WITHIN, f"the stop to finish (pids {pids}, stop signal lost?)")
    finally:
        for pid in pids:
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
        yield until(lambda: done, 10, "the stop to finish once its processes were killed")
    return reactor.seconds() - began


# (command, extra settings, what marks the stage, in the process's output or its observer)
STAGES = {
    # Exec'd (its output shows), not listening yet.
    "starting": (f"{APP_PYTHON} -c \"print('booting', flush=True); import time; time.sleep(60)\"", {},
                 lambda process, observer: any("booting" in line for line in process.log_tail())),
    # Listening, but not ready: its health check does not pass yet.
    "listening": (f"{APP_PYTHON} health_app.py --healthy-after 100000", {"health_check_path": "/healthz"},
                  lambda process, observer: any("health check" in line for line in process.log_tail())),
    "ready": (f"{APP_PYTHON} echo_app.py", {}, lambda process, observer: observer.events == ["ready"]),
}


@pytest.mark.usefixtures("twistd_handles_term")
@pytest.mark.parametrize("stage", list(STAGES))
@pytest_twisted.inlineCallbacks
def test_a_process_stopped_at_each_stage_of_its_spawn_is_gone_at_once(stage: str) -> Any:
    command, more, reached = STAGES[stage]
    app = load_config(**settings(command, **more)).apps[0]
    observer = Observer()
    process = Spawner(_reactor()).spawn(app, 1, observer)
    assert process.pid is not None
    try:
        yield until(lambda: reached(process, observer), 20, f"the process to be {stage}")
    except BaseException:
        os.kill(process.pid, signal.SIGKILL)
        raise
    seconds = yield stopped_in_time(process.stop(), [process.pid])
    assert seconds < STOP_WITHIN
    assert process.state == "dead"


@pytest.mark.usefixtures("twistd_handles_term", "held_between_fork_and_exec")
@pytest_twisted.inlineCallbacks
def test_a_process_stopped_between_fork_and_exec_is_gone_at_once() -> Any:
    app = load_config(**settings(f"{APP_PYTHON} echo_app.py")).apps[0]
    observer = Observer()
    process = Spawner(_reactor()).spawn(app, 1, observer)
    assert process.pid is not None
    seconds = yield stopped_in_time(process.stop(), [process.pid])  # the child is still held before its exec
    assert seconds < STOP_WITHIN
    assert process.state == "dead"
    assert observer.events == [], "a stop the group asked for is not reported back"


@pytest.mark.usefixtures("twistd_handles_term", "held_between_fork_and_exec")
@pytest_twisted.inlineCallbacks
def test_a_graceful_stop_while_the_first_process_forks_ends_at_once() -> Any:
    """The whole service: stopService while its first spawn is between fork and exec."""
    service = PassengerService(load_config(**settings(f"{APP_PYTHON} echo_app.py")), _reactor())
    service.startService()
    assert service.pool is not None
    pids = [p.pid for p in service.pool.processes() if p.pid is not None]
    assert len(pids) == 1, "min_instances 1: one spawn under way"
    seconds = yield stopped_in_time(service.stopService(), pids)
    assert seconds < STOP_WITHIN
    assert not pid_alive(pids[0])


@pytest.mark.usefixtures("held_between_fork_and_exec")
@pytest_twisted.inlineCallbacks
def test_a_child_not_exec_yet_is_not_taken_for_an_app_on_the_wrong_port() -> Any:
    """Held past the first wrong-port check (0.2 s), the child still holds the server's listening sockets."""
    with socket.create_server(("127.0.0.1", 0)) as listening:  # as the server's own port
        app = load_config(**settings(f"{APP_PYTHON} echo_app.py")).apps[0]
        observer = Observer()
        process = Spawner(_reactor()).spawn(app, 1, observer)
        try:
            yield until(lambda: observer.events, 20, "the spawn to end")
        finally:
            stop = process.stop()
        assert observer.events == ["ready"], f"{observer.events} (the server listens on {listening.getsockname()})"
        yield stopped_in_time(stop, [process.pid] if process.pid else [])

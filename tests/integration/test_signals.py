"""Passenger's signals, through the real ``twistd -n passenger`` and real app processes.

1. HUP reloads the ``--config`` file: apps added, removed, restarted when their
   settings changed, untouched otherwise; a file with an error is refused.
2. USR2 restarts every app, rolling, without failing a request.
3. QUIT stops fast, even with a long request in flight.
4. TERM and INT stop gracefully: the request in flight finishes, exit status 0.
5. USR1 reopens twistd's ``--logfile`` (after logrotate renamed it).
6. PIPE never kills the server.
7. 100 spawn/stop cycles leak no file descriptor and leave no zombie.
8. systemd socket activation: the server is restarted on an inherited socket
   without refusing or failing a single request; and the unit pair shipped in
   ``conf/systemd/`` says what that needs.

Synchronisation never sleeps: tests wait (with a deadline) for a log line, for
a process to be gone, or for the load loop to have seen enough answers.
"""

from __future__ import annotations

import configparser
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import threading
import time
import tomllib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.config_files import q, spawned_by_app, write_toml
from tests.integration.conftest import (
    APPS,
    ECHO_APP,
    NOT_FOUND_DETAIL,
    TWISTD,
    RawRequest,
    Server,
    echo_app_args,
    fetch,
    in_thread,
    kill_server,
    life_app_args,
    pid_exists,
    world_dir,
)
from tests.polling import wait_for

Serve = Callable[..., Server]

ROOT = Path(__file__).resolve().parents[2]
SYSTEMD_DIR = ROOT / "conf" / "systemd"


# Small helpers.

def ready_pids(log: str, app: str) -> list[int]:
    return [int(pid) for pid in re.findall(rf"Process (\d+) of {re.escape(app)} is ready", log)]


def wait_gone(pids: list[int], timeout: float = 20.0, what: str = "processes") -> None:
    """Until none of ``pids`` has a process-table entry (exited and reaped)."""
    wait_for(lambda: not [p for p in pids if pid_exists(p)], timeout,
             what=f"{what} {[p for p in pids if pid_exists(p)]} to exit and be reaped")




@dataclass
class Outcome:
    started: float
    at: float
    target: str
    status: int | None
    error: str | None


class Load:
    """Client threads sending requests one after the other, each on a fresh connection, until stopped."""

    def __init__(self, port: int, targets: Sequence[tuple[str | None, str]], threads: int = 3,
                 timeout: float = 30.0) -> None:
        self.port = port
        self.targets = targets
        self.timeout = timeout
        self.outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout + 5)
        assert not any(t.is_alive() for t in self._threads), "a load thread is stuck"

    def _run(self, index: int) -> None:
        n = index
        while not self._stop.is_set():
            host, path = self.targets[n % len(self.targets)]
            n += 1
            status: int | None = None
            error: str | None = None
            started = time.monotonic()
            try:
                status = fetch(self.port, path, host, timeout=self.timeout).status
            except Exception as e:  # refused, reset, closed without an answer, timed out: all failures
                error = f"{type(e).__name__}: {e}"
            with self._lock:
                self.outcomes.append(Outcome(started, time.monotonic(), f"{host or ''}{path}", status, error))

    def ok_since(self, moment: float) -> int:
        with self._lock:
            return sum(1 for o in self.outcomes if o.at >= moment and o.status is not None and 200 <= o.status < 300)

    def wait_ok(self, count: int, since: float = 0.0, timeout: float = 20.0) -> None:
        wait_for(lambda: self.ok_since(since) >= count, timeout, what=f"{count} successful requests")

    def failures(self) -> list[Outcome]:
        with self._lock:
            return [o for o in self.outcomes if o.status is None or not 200 <= o.status < 300]


def children(pid: int) -> list[tuple[int, str]]:
    """The children of ``pid``: (pid, state letter), from /proc/*/stat (zombies included)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(") ", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append((int(entry), fields[0]))
    return found


def open_fds(pid: int) -> dict[int, str]:
    """The open file descriptors of ``pid``, with what each points at."""
    result = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            result[int(name)] = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:  # closed meanwhile
            continue
    return result


# 1. SIGHUP reloads the config file.

def test_sighup_reloads_config_adds_removes_and_restarts_changed_apps(serve: Serve, tmp_path: Path) -> None:
    config = tmp_path / "passenger.toml"
    common = f"""
        min_instances = 1
        max_instances = 1

        [[app]]
        name = "keep"
        root = {q(APPS)}
        start_command = {q(ECHO_APP)}
        server_names = ["keep.test"]
        envvars = {{ GREETING = "keep" }}
        """
    write_toml(config, common + f"""
        [[app]]
        name = "a"
        root = {q(APPS)}
        start_command = {q(ECHO_APP)}
        server_names = ["a.test"]
        envvars = {{ GREETING = "a-1" }}

        [[app]]
        name = "b"
        root = {q(APPS)}
        start_command = {q(ECHO_APP)}
        base_uri = "/b"
        envvars = {{ GREETING = "b" }}
        """)
    server = serve(["--config", str(config)], ready=3)
    before = spawned_by_app(server.log())
    assert sorted(before) == ["a", "b", "keep"] and all(len(p) == 1 for p in before.values()), before
    (a_old,), (b_old,), (keep_pid,) = before["a"], before["b"], before["keep"]
    assert fetch(server.port, "/echo", "a.test").env()["GREETING"] == "a-1"
    b_reply = fetch(server.port, "/b/echo", "other.test")
    assert b_reply.status == 200 and b_reply.pid == b_old and b_reply.env()["GREETING"] == "b", b_reply

    # b goes, c comes, a gets a new greeting, keep stays as it is.
    write_toml(config, common + f"""
        [[app]]
        name = "a"
        root = {q(APPS)}
        start_command = {q(ECHO_APP)}
        server_names = ["a.test"]
        envvars = {{ GREETING = "a-2" }}

        [[app]]
        name = "c"
        root = {q(APPS)}
        start_command = {q(ECHO_APP)}
        server_names = ["c.test"]
        envvars = {{ GREETING = "c" }}
        """)
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGHUP)
    server.wait_log(r"Reload: b is gone from the configuration; stopping it")
    server.wait_log(r"Reload: starting the new app c")
    server.wait_log(r"Reload: the settings of a changed; restarting it")
    wait_for(lambda: ready_pids(server.log(), "c") and len(ready_pids(server.log(), "a")) == 2, 20,
             what="c and the new process of a to be ready")

    c_reply = fetch(server.port, "/echo", "c.test")
    assert c_reply.status == 200 and c_reply.env()["GREETING"] == "c", c_reply
    assert c_reply.pid in spawned_by_app(server.log())["c"]

    gone = fetch(server.port, "/b/echo", "other.test")
    assert gone.status == 404 and NOT_FOUND_DETAIL in gone.body and gone.pid is None, gone
    wait_gone([b_old], what="the process of the removed app b")

    a_reply = fetch(server.port, "/echo", "a.test")
    assert a_reply.status == 200 and a_reply.env()["GREETING"] == "a-2", a_reply
    assert a_reply.pid is not None and a_reply.pid != a_old, f"a was not restarted: {a_reply.pid} == {a_old}"
    wait_gone([a_old], what="the old process of a")

    keep_reply = fetch(server.port, "/echo", "keep.test")
    assert keep_reply.status == 200 and keep_reply.pid == keep_pid, \
        f"the unchanged app was restarted: {keep_reply.pid} != {keep_pid}"
    assert spawned_by_app(server.log())["keep"] == [keep_pid]
    assert server.proc.poll() is None, "the server exited"


def test_sighup_with_a_broken_config_file_is_refused_and_everything_keeps_serving(serve: Serve,
                                                                                  tmp_path: Path) -> None:
    config = tmp_path / "passenger.toml"
    apps = f"""
        [[app]]
        name = "a"
        root = {q(APPS)}
        start_command = {q(ECHO_APP)}
        server_names = ["a.test"]
        envvars = {{ GREETING = "a" }}

        [[app]]
        name = "b"
        root = {q(APPS)}
        start_command = {q(ECHO_APP)}
        base_uri = "/b"
        envvars = {{ GREETING = "b" }}
        """
    write_toml(config, "min_instances = 1\nmax_instances = 1\n" + apps)  # no growth: every spawn is news
    server = serve(["--config", str(config)], ready=2)
    before = spawned_by_app(server.log())

    # A typo (and a change to b that must not be applied either: the file is refused as a whole).
    write_toml(config, "min_instance = 2\nmax_instances = 1\n" + apps.replace('GREETING = "b"', 'GREETING = "b-2"'))
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGHUP)
    server.wait_log(r"Reload refused")

    for host, path, app, greeting in [("a.test", "/echo", "a", "a"), ("other.test", "/b/echo", "b", "b")]:
        reply = fetch(server.port, path, host)
        assert reply.status == 200 and reply.pid == before[app][0], (app, reply)
        assert reply.env()["GREETING"] == greeting
    log = server.log()
    refused = re.findall(r".*Reload refused.*", log)
    assert len(refused) == 1, refused
    assert "unknown setting 'min_instance'" in refused[0] and "did you mean 'min_instances'?" in refused[0], refused
    assert spawned_by_app(log) == before, "a refused reload spawned or restarted something"
    assert "Restarting" not in log and "Reload:" not in log, log
    assert server.proc.poll() is None, "the server exited"


# 2. SIGUSR2: every app restarted, rolling, without a failed request.

def test_sigusr2_restarts_every_app_rolling_without_a_failed_request(serve: Serve, tmp_path: Path) -> None:
    config = write_toml(tmp_path / "passenger.toml", f"""
        min_instances = 2
        max_pool_size = 6

        [[app]]
        name = "one"
        root = {q(APPS)}
        start_command = {q(ECHO_APP)}
        server_names = ["one.test"]

        [[app]]
        name = "two"
        root = {q(APPS)}
        start_command = {q(ECHO_APP)}
        base_uri = "/two"
        """)
    server = serve(["--config", str(config)], ready=4)
    old = spawned_by_app(server.log())
    assert {app: len(p) for app, p in old.items()} == {"one": 2, "two": 2}, old

    targets = [("one.test", "/pid"), ("other.test", "/two/pid"), ("one.test", "/sleep?ms=50"),
               ("other.test", "/two/sleep?ms=50")]
    with Load(server.port, targets, threads=4) as load:
        load.wait_ok(20)
        assert server.proc is not None
        os.kill(server.proc.pid, signal.SIGUSR2)
        server.wait_log(r"Restarting one \(rolling\)")
        server.wait_log(r"Restarting two \(rolling\)")
        wait_gone([*old["one"], *old["two"]], timeout=30, what="the old processes")
        restarted = time.monotonic()
        load.wait_ok(20, since=restarted)
    assert not load.failures(), load.failures()[:10]
    assert len(load.outcomes) >= 40

    new = spawned_by_app(server.log())
    for app in ("one", "two"):
        fresh = new[app][len(old[app]):]
        assert len(fresh) >= 2 and not set(fresh) & set(old[app]), (app, old, new)
        assert all(pid_exists(pid) for pid in fresh[-2:]), (app, fresh)
    pids = {fetch(server.port, "/pid", "one.test").pid, fetch(server.port, "/two/pid", "other.test").pid}
    assert not pids & {*old["one"], *old["two"]}, "an old process still answers"
    assert server.proc.poll() is None


# 3. SIGQUIT: fast stop.

def test_sigquit_stops_at_once_despite_a_long_request_and_leaves_no_process(serve: Serve) -> None:
    server = serve(life_app_args("--min-instances", "2"), ready=2)
    pids = server.app_pids()
    request = RawRequest(server.port, "/sleep?ms=10000")
    server.wait_log(r"App \d+ stdout: request GET /sleep\?ms=10000\n")
    pending = in_thread(lambda: request.response(timeout=20))

    started = time.monotonic()
    status = server.stop(signal.SIGQUIT, timeout=15)
    took = time.monotonic() - started
    assert took < 5, f"QUIT took {took:.1f}s; the in-flight request should not have been waited for"
    assert status == 0, f"exit status {status}:\n{server.log()}"

    try:
        response = pending(15)
    except (OSError, AssertionError):  # reset, or closed without an answer: cut off
        pass
    else:
        assert response.status != 200, f"the long request was answered as if it had finished: {response}"
    leftovers = [p for p in pids if pid_exists(p)]
    assert leftovers == [], f"app processes left behind (alive or zombie): {leftovers}"
    assert "every app process has exited" in server.log()


# 4. SIGTERM and SIGINT: graceful stop.

@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_graceful_stop_finishes_the_request_in_flight_exits_0_and_leaves_no_process(serve: Serve,
                                                                                   sig: signal.Signals) -> None:
    server = serve(life_app_args("--min-instances", "2"), ready=2)
    pids = server.app_pids()
    request = RawRequest(server.port, "/sleep?ms=1500")
    server.wait_log(r"App \d+ stdout: request GET /sleep\?ms=1500\n")
    pending = in_thread(lambda: request.response(timeout=20))

    assert server.stop(sig, timeout=20) == 0, server.log()

    response = pending(20)
    assert response.status == 200 and response.body == b"slept", response
    assert int(response.headers["x-pid"]) in pids
    assert response.elapsed >= 1.4
    leftovers = [p for p in server.app_pids() if pid_exists(p)]
    assert leftovers == [], f"app processes left behind (alive or zombie): {leftovers}"
    assert "every app process has exited" in server.log()


def test_a_connection_accepted_just_before_a_graceful_stop_is_served(serve: Serve) -> None:
    """Its request is on its way (or waits in the client): it gets a moment to arrive, and an answer."""
    server = serve(echo_app_args())
    client = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    try:
        wait_for(lambda: server_busy_with_clients(server.proc.pid, server.port), 5, what="the server to accept")
        os.kill(server.proc.pid, signal.SIGTERM)
        server.wait_log(r"Received SIGTERM")
        client.sendall(b"GET /pid HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        while chunk := client.recv(65536):
            answer += chunk
    finally:
        client.close()
    assert answer.startswith(b"HTTP/1.1 200 "), answer
    assert b"\r\nConnection: close\r\n" in answer
    assert server.proc.wait(20) == 0


# 5. SIGUSR1 reopens the log file.

def test_sigusr1_reopens_the_log_file_after_logrotate_renamed_it(serve: Serve) -> None:
    server = serve(life_app_args("--max-instances", "1"), ready=1)
    (pid,) = server.app_pids()
    try:
        rotated = server.log_path.with_name(server.log_path.name + ".1")
        server.log_path.rename(rotated)  # what logrotate does (without copytruncate)
        assert server.proc is not None
        os.kill(server.proc.pid, signal.SIGUSR1)
        def new_file() -> str:  # server.log() would read the renamed file too, as rotated twistd logs
            return server.log_path.read_text() if server.log_path.exists() else ""

        wait_for(lambda: "Reopened the log file" in new_file(), 10, what="the reopen, in the new file")
        old_after_reopen = rotated.read_text()

        assert fetch(server.port, "/after-rotation").status == 200
        wait_for(lambda: f"App {pid} stdout: request GET /after-rotation\n" in new_file(), 10,
                 what="the request, in the new file")
        assert f"Process {pid} of apps is ready" not in new_file(), "the new file has lines from before"
        assert rotated.read_text() == old_after_reopen, "the server still writes to the renamed file"
        assert "/after-rotation" not in rotated.read_text()
        assert f"Process {pid} of apps is ready" in rotated.read_text()
        assert server.stop(signal.SIGTERM) == 0
        assert not pid_exists(pid)
    finally:  # the fixture finds the pids to clean up in the log, and this one is in the renamed file
        if pid_exists(pid):
            os.kill(pid, signal.SIGKILL)


# 6. SIGPIPE never kills the server.

def test_sigpipe_does_not_kill_the_server(serve: Serve) -> None:
    server = serve(echo_app_args(), ready=1)
    assert server.proc is not None
    for _ in range(3):
        os.kill(server.proc.pid, signal.SIGPIPE)
    reply = fetch(server.port, "/pid")
    assert reply.status == 200 and reply.pid in server.app_pids(), reply
    assert server.proc.poll() is None, "SIGPIPE killed the server"
    # The signal was delivered (not blocked and pending): the server's disposition for it is "ignore".
    with open(f"/proc/{server.proc.pid}/status") as f:
        status = dict(line.split(":\t", 1) for line in f.read().splitlines() if ":\t" in line)
    assert int(status["SigIgn"], 16) & (1 << (signal.SIGPIPE - 1)), status["SigIgn"]
    assert server.stop(signal.SIGTERM) == 0


# 7. 100 spawn/stop cycles: no fd leak, no zombie.

def test_100_spawn_stop_cycles_leak_no_fd_and_leave_no_zombie(serve: Serve) -> None:
    """``max_requests = 1``: each request recycles its process, so 100 requests are 100 spawns and 100 stops.

    The baseline is taken in the same state as the final count: one process
    ready that has served nothing, no client connection, every other process
    gone (exited and reaped).  So the counts must be equal, with no slack.
    """
    server = serve(echo_app_args("--min-instances", "1", "--max-requests", "1"), ready=1)
    assert server.proc is not None
    spid = server.proc.pid
    wait_for(lambda: not server_busy_with_clients(spid, server.port), 5, what="no client connection")
    baseline = open_fds(spid)
    cycles = 100
    started = time.monotonic()
    for n in range(cycles):
        reply = fetch(server.port, "/pid", timeout=15)
        assert reply.status == 200, (n, reply)
    server.wait_ready(cycles + 1, timeout=20)
    spawned = server.app_pids()
    assert len(spawned) == cycles + 1, len(spawned)
    wait_gone(spawned[:-1], timeout=20, what="the recycled processes")
    took = time.monotonic() - started
    wait_for(lambda: not server_busy_with_clients(spid, server.port), 5, what="no client connection")

    def settled() -> dict[int, str] | None:
        now = open_fds(spid)
        return now if len(now) == len(baseline) else None

    try:
        after = wait_for(settled, 5, what="the fd count to come back to its baseline")
    except AssertionError:
        after = open_fds(spid)
        extra = {fd: target for fd, target in after.items() if baseline.get(fd) != target}
        raise AssertionError(f"{len(baseline)} fds before {cycles} cycles, {len(after)} after; "
                             f"new or changed: {extra}") from None
    print(f"\nfds of the server: {len(baseline)} before, {len(after)} after {cycles} cycles ({took:.1f}s)")
    kids = children(spid)
    assert [k for k in kids if k[1] == "Z"] == [], f"zombie children: {kids}"
    assert [k[0] for k in kids] == [spawned[-1]], f"children of the server: {kids}, expected only {spawned[-1]}"


def server_busy_with_clients(pid: int, port: int) -> bool:
    """Does the server still hold a (non-listening) TCP socket with the local port ``port``?"""
    inodes = {target[len("socket:["):-1] for target in open_fds(pid).values() if target.startswith("socket:[")}
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] != "0A" and fields[9] in inodes:  # 0A: LISTEN
                return True
    return False


# 8. Restarting the server on a socket inherited from systemd, without refusing or failing a request.

#: As systemd starts a socket-activated service: the socket as fd 3, LISTEN_FDS=1, LISTEN_FDNAMES, and
#: LISTEN_PID = the service's pid (bash sets it to its own, which the command keeps when bash execs it).
SOCKET_ACTIVATED = ('exec 3<&"$LISTENER_FD"; [ "$LISTENER_FD" = 3 ] || eval "exec $LISTENER_FD<&-"; '
                    'LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES="$FD_NAME" exec "$@"')


class ActivatedServer:
    """``command`` started with ``listener`` as its systemd socket; its log is ``log_path``."""

    def __init__(self, listener: socket.socket, log_path: Path, command: list[str], fd_name: str = "http",
                 log_on_stdout: bool = False) -> None:
        self.log_path = log_path
        env = {**os.environ, "TMPDIR": str(world_dir("tmp", 0o755)), "LISTENER_FD": str(listener.fileno()),
               "FD_NAME": fd_name}
        with open(log_path if log_on_stdout else log_path.with_suffix(".out"), "wb") as out:
            self.proc = subprocess.Popen(["/bin/bash", "-c", SOCKET_ACTIVATED, "socket-activated", *command],
                                         pass_fds=(listener.fileno(),), env=env, stdout=out, stderr=subprocess.STDOUT)

    @classmethod
    def twistd(cls, listener: socket.socket, log_path: Path, args: list[str]) -> ActivatedServer:
        """``twistd -n passenger --listen systemd:domain=INET:index=0``."""
        return cls(listener, log_path, [TWISTD, "-n", "--pidfile", "", "--logfile", str(log_path), "passenger",
                                        *args, "--listen", "systemd:domain=INET:index=0"])

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_log(self, pattern: str, count: int = 1, timeout: float = 20.0) -> None:
        def found() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            return len(re.findall(pattern, self.log())) >= count
        wait_for(found, timeout, what=f"{pattern!r} x{count} in {self.log_path.name}")

    def app_pids(self) -> list[int]:
        return [int(m) for m in re.findall(r"Spawning process (\d+)", self.log())]

    def stopped(self, timeout: float = 30.0) -> int:
        """The exit status once the server stops; a stop that takes too long fails with its log, which says
        what the stop waits for (client connections or app processes)."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the server did not stop within {timeout:g}s; its log:\n{self.log()[-6000:]}") from None

    def kill(self) -> None:
        kill_server(self.proc, self.app_pids())


@pytest.fixture
def inherited_socket() -> Iterator[socket.socket]:
    """The listening socket systemd would hold (passenger.socket): it outlives every server started on it."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1024)  # systemd's default Backlog= is SOMAXCONN
    yield listener
    listener.close()


def test_socket_activated_server_restarts_without_refusing_or_failing_a_request(inherited_socket: socket.socket,
                                                                                 tmp_path: Path) -> None:
    port = inherited_socket.getsockname()[1]
    args = life_app_args("--min-instances", "2")
    servers: list[ActivatedServer] = []
    try:
        first = ActivatedServer.twistd(inherited_socket, tmp_path / "first.log", args)
        servers.append(first)
        first.wait_log(r"(?s)is ready.*is ready")
        targets = [(None, "/pid"), (None, "/sleep?ms=100"), (None, "/echo")]
        with Load(port, targets, threads=4) as load:
            load.wait_ok(30)
            first.proc.send_signal(signal.SIGTERM)
            assert first.stopped() == 0, first.log()
            assert "every app process has exited" in first.log()
            assert not [p for p in first.app_pids() if pid_exists(p)]
            gap_started = time.monotonic()
            second = ActivatedServer.twistd(inherited_socket, tmp_path / "second.log", args)
            servers.append(second)
            second.wait_log(r"is ready")
            second_ready = time.monotonic()
            load.wait_ok(30, since=second_ready)
        served_by_second = [o for o in load.outcomes if o.at > gap_started and o.status == 200]
        # Requests sent while no server was running waited in the backlog and were served by the second one.
        waited = [o for o in served_by_second if o.started < gap_started]
        failures = load.failures()
        assert not failures, (f"{len(failures)} of {len(load.outcomes)} requests failed across the restart: "
                              f"{failures[:10]}\nfirst server's log:\n{first.log()[-3000:]}")
        assert served_by_second, "no request was served by the second server"
        assert waited, "no request was sent while no server was running"
        print(f"\n{len(load.outcomes)} requests, {len(waited)} waited in the backlog for the second server "
              f"(longest {max(o.at - o.started for o in waited):.2f}s); restart gap {second_ready - gap_started:.2f}s")
        assert re.search(r"App \d+ stdout: request GET /", second.log())
        second.proc.send_signal(signal.SIGTERM)
        assert second.stopped() == 0, second.log()
    finally:
        for server in servers:
            server.kill()


# The systemd unit pair shipped in conf/systemd/.

def read_unit(name: str) -> configparser.ConfigParser:
    # strict=False: systemd allows a key more than once (ExecStartPre=, ListenStream=, ...).
    parser = configparser.ConfigParser(strict=False, interpolation=None, empty_lines_in_values=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    with open(SYSTEMD_DIR / name) as f:
        parser.read_file(f)
    return parser


def test_systemd_units_activate_the_socket_and_stop_gracefully() -> None:
    socket_unit = read_unit("passenger.socket")
    service = read_unit("passenger.service")

    listen_stream = socket_unit["Socket"]["ListenStream"].strip()
    address, _, port = listen_stream.rpartition(":")
    assert port == "3000", listen_stream
    fd_name = socket_unit["Socket"]["FileDescriptorName"].strip()
    assert fd_name
    assert socket_unit["Socket"].get("Accept", "no").strip() == "no"  # one server for every connection
    assert socket_unit["Install"]["WantedBy"].strip() == "sockets.target"

    assert "passenger.socket" in service["Unit"]["Requires"].split()
    assert "passenger.socket" in service["Unit"]["After"].split()
    command = shlex.split(service["Service"]["ExecStart"])
    assert command[:2] == ["/usr/bin/env", "twist"] and "passenger" in command, command
    listen = command[command.index("--listen") + 1]
    # The domain must be the socket's family: a bare ListenStream=PORT is an IPv6 (dual-stack) socket,
    # and adopted as INET every client address would be misread.
    domain = "INET" if re.fullmatch(r"\d+\.\d+\.\d+\.\d+", address) else "INET6"
    assert listen in (f"systemd:domain={domain}:index=0", f"systemd:domain={domain}:name={fd_name}"), \
        (listen, listen_stream)
    assert command[command.index("--config") + 1] == "/etc/passenger/passenger.toml"
    assert service["Service"]["ExecReload"].strip() == "/bin/kill -HUP $MAINPID"
    assert service["Service"]["KillSignal"].strip() == "SIGTERM"
    # Only the server gets TERM: with the default KillMode=control-group, systemd would TERM
    # every app process at once too, cutting off the requests the server is draining.
    assert service["Service"]["KillMode"].strip() == "mixed"

    # systemd must not KILL the server while it drains: drain_timeout, then the apps' shutdown_timeout.
    from passenger.options import BY_KEY

    example = tomllib.loads((ROOT / "conf" / "passenger.toml").read_text())
    drain = float(example.get("drain_timeout", BY_KEY["drain_timeout"].default))
    shutdown = float(example.get("shutdown_timeout", BY_KEY["shutdown_timeout"].default))
    stop_timeout = service["Service"]["TimeoutStopSec"].strip()
    assert re.fullmatch(r"\d+", stop_timeout), f"TimeoutStopSec={stop_timeout}: give plain seconds"
    assert int(stop_timeout) > drain + shutdown, (stop_timeout, drain, shutdown)

    analyze = shutil.which("systemd-analyze")
    if analyze is not None:  # systemd's own parser, where there is one
        result = subprocess.run([analyze, "verify", "passenger.socket", "passenger.service"], cwd=SYSTEMD_DIR,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0 and not result.stderr.strip(), result.stderr


def test_systemd_service_commands_serve_the_socket_reload_and_stop(inherited_socket: socket.socket,
                                                                    tmp_path: Path) -> None:
    """passenger.service's ExecStart, ExecReload and KillSignal, run as systemd would (twist from this venv)."""
    socket_unit = read_unit("passenger.socket")["Socket"]
    service = read_unit("passenger.service")["Service"]
    config = tmp_path / "passenger.toml"
    app = f"""
        max_instances = 1

        [[app]]
        name = "site"
        root = {q(APPS)}
        start_command = {q(ECHO_APP)}
        """
    write_toml(config, app + 'envvars = { GREETING = "before" }\n')
    command = shlex.split(service["ExecStart"])
    assert command[:2] == ["/usr/bin/env", "twist"]
    command[:2] = [str(Path(TWISTD).with_name("twist"))]
    command[command.index("--config") + 1] = str(config)
    port = inherited_socket.getsockname()[1]
    server = ActivatedServer(inherited_socket, tmp_path / "journal.log", command,
                             fd_name=socket_unit["FileDescriptorName"].strip(), log_on_stdout=True)
    try:
        server.wait_log(r"Process \d+ of site is ready")
        assert "passenger.service.PassengerService#info] passenger" in server.log(), "not a text log"
        assert fetch(port, "/echo").env()["GREETING"] == "before"

        write_toml(config, app + 'envvars = { GREETING = "after" }\n')
        reload = shlex.split(service["ExecReload"].replace("$MAINPID", str(server.proc.pid)))
        subprocess.run(reload, check=True, timeout=10)
        server.wait_log(r"Reload: the settings of site changed; restarting it")
        server.wait_log(r"Process \d+ of site is ready", count=2)
        assert fetch(port, "/echo").env()["GREETING"] == "after"

        server.proc.send_signal(signal.Signals[service["KillSignal"].strip()])
        assert server.proc.wait(int(service["TimeoutStopSec"])) == 0, server.log()
        assert "every app process has exited" in server.log()
        assert not [pid for pid in server.app_pids() if pid_exists(pid)]
    finally:
        server.kill()

"""Run the server the way operators do: ``twistd passenger`` as a daemon, and as root shedding its privileges.

1. ``twistd --pidfile P --logfile L passenger …`` returns 0 at once; the
   pidfile names the daemon (a live process detached from the caller, not the
   launcher), the server logs to L, serves, and SIGTERM stops it: pidfile
   removed, app processes gone, instance directory removed.
   A relative ``--config`` is still found on SIGHUP after ``--rundir /``.
2. Mistakes end the launch with a non-zero status and one line on the
   terminal, and leave no daemon: a bad value, an unknown option, a port that
   is already taken (refused before twistd daemonizes or even opens its log),
   a Unix socket path that cannot be bound.
3. As root, ``twistd --uid nobody --gid nogroup``: the privileged port is bound
   first, then the server runs as nobody; its apps run as nobody too (only a
   root server switches users), never as root; the instance directory is the
   server user's and passenger-status (as root) reads it.  A log reopen that
   nobody may not do keeps the server logging; a directory nobody may not
   write to is refused before daemonizing.

Every process is real; waiting polls with a deadline (tests/polling.py).
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.config_files import q, write_toml
from tests.integration.conftest import (
    APP_PYTHON,
    APPS,
    RUNNING_AS_ROOT,
    TWISTD,
    echo_app_args,
    free_port,
    kill_pids,
    kill_server,
    pid_alive,
    world_dir,
)
from tests.polling import wait_for

PASSENGER_STATUS = str(Path(sys.executable).parent / "passenger-status")
#: A launch that daemonizes or refuses must be back well within this (it takes well under a second).
LAUNCH_TIMEOUT = 20.0
#: The daemon's app group: echo_app_args names it after its root's basename.
APP = APPS.name


def processes_mentioning(text: str) -> list[int]:
    """Live (not zombie) processes with ``text`` as one of their command-line arguments."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if text.encode() in args and pid_alive(int(entry)):
            found.append(int(entry))
    return found


def proc_status(pid: int) -> dict[str, str]:
    """/proc/PID/status as a dict (``Uid``: "real effective saved fs")."""
    with open(f"/proc/{pid}/status") as f:
        return {key: value.strip() for key, _, value in (line.partition(":") for line in f)}


def get(port: int, path: str) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
        assert response.status == 200
        return bytes(response.read())


class Daemon:
    """One ``twistd --pidfile --logfile … passenger`` launch and what it leaves behind."""

    def __init__(self, tmp: Path, name: str = "passenger") -> None:
        self.pidfile = tmp / f"{name}.pid"
        self.logfile = tmp / f"{name}.log"
        #: Short: the admin socket's path in it must fit a Unix socket address.
        self.registry = world_dir("registry", 0o755)
        self.port = free_port()
        #: Spawn work directories go here (the apps' account must reach them).
        self.tmpdir = world_dir("tmp", 0o1777)  # also for a server that runs as nobody (--uid)
        self.launched: subprocess.CompletedProcess[str] | None = None
        self.elapsed = 0.0

    def launch(self, args: list[str], twistd_args: list[str] | None = None,
               port: bool = True, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        listen = ["--address", "127.0.0.1", "--port", str(self.port)] if port else []
        cmd = [TWISTD, "--pidfile", str(self.pidfile), "--logfile", str(self.logfile), *(twistd_args or []),
               "passenger", *listen, "--instance-registry-dir", str(self.registry), *args]
        started = time.monotonic()
        self.launched = subprocess.run(cmd, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT, cwd=cwd,
                                       env={**os.environ, "TMPDIR": str(self.tmpdir)})
        self.elapsed = time.monotonic() - started
        return self.launched

    @property
    def output(self) -> str:
        assert self.launched is not None
        return self.launched.stdout + self.launched.stderr

    def pid(self) -> int:
        return int(self.pidfile.read_text().strip())

    def log(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_log(self, pattern: str, count: int = 1, timeout: float = 20.0) -> list[str]:
        def found() -> list[str] | None:
            matches = re.findall(pattern, self.log())
            return matches if len(matches) >= count else None
        return wait_for(found, timeout, what=f"{pattern!r} x{count} in {self.logfile}:\n{self.log()}")

    def app_pids(self) -> list[int]:
        return [int(pid) for pid in re.findall(r"Spawning process (\d+)", self.log())]

    def instances(self) -> list[Path]:
        return sorted(self.registry.glob("passenger.*"))

    def leftovers(self) -> list[int]:
        """The daemon (found by its unique pidfile argument) and its apps, if any still run."""
        return [*processes_mentioning(str(self.pidfile)), *(p for p in self.app_pids() if pid_alive(p))]

    def kill(self) -> None:
        kill_pids(self.leftovers())


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    launched = Daemon(tmp_path)
    yield launched
    launched.kill()


def assert_no_daemon(daemon: Daemon) -> None:
    """No daemon is left (one that failed after forking gets a few seconds to exit) and nothing of it."""
    wait_for(lambda: daemon.leftovers() == [], 10, what=f"no process left running:\n{daemon.log()}")
    assert not daemon.pidfile.exists(), f"a pidfile was left: {daemon.pidfile.read_text()!r}"
    assert daemon.instances() == [], daemon.instances()


def one_line(output: str) -> str:
    lines = output.strip("\n").splitlines()
    assert len(lines) == 1, f"expected a one-line message on the terminal, got {len(lines)} lines:\n{output}"
    return lines[0]


# 1. Daemon mode.

def test_twistd_daemonizes_serves_and_stops_on_sigterm(daemon: Daemon) -> None:
    result = daemon.launch(echo_app_args())
    assert result.returncode == 0, daemon.output + daemon.log()
    assert daemon.output == "", "a successful launch prints nothing"
    assert daemon.elapsed < 10, f"the launch took {daemon.elapsed:.1f}s"

    pid = daemon.pid()
    assert pid_alive(pid), f"the pidfile names {pid}, which is not running"
    daemon.wait_log(rf"Process \d+ of {re.escape(APP)} is ready")
    twistds = [p for p in processes_mentioning(str(daemon.pidfile)) if p not in daemon.app_pids()]
    assert twistds == [pid], f"the pidfile must name the daemon, the only twistd left: {twistds}"
    assert os.getsid(pid) != os.getsid(0), "the daemon is still in the caller's session"
    assert int(proc_status(pid)["PPid"]) != os.getpid()

    log = daemon.log()
    assert "passenger 0." in log and f"tcp:{daemon.port}:interface=127.0.0.1" in log, log
    (instance,) = daemon.instances()
    assert json.loads((instance / "properties.json").read_text())["pid"] == pid

    app_pid = int(get(daemon.port, "/pid"))
    assert app_pid in daemon.app_pids()
    apps = daemon.app_pids()

    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not pid_alive(pid), 40, what=f"the daemon {pid} to exit after SIGTERM")
    daemon.wait_log(r"passenger stopped; every app process has exited")
    assert not [p for p in apps if pid_alive(p)], f"app processes left: {apps}"
    assert not instance.exists(), "the instance directory was not removed"
    assert_no_daemon(daemon)


@pytest.mark.parametrize(("args", "wanted"), [
    pytest.param(["--max-pool-size", "0"], "--max-pool-size", id="max-pool-size-0"),
    pytest.param(["--min-instances", "many"], "--min-instances", id="min-instances-many"),
    pytest.param(["--no-such-option"], "--no-such-option", id="unknown-option"),
])
def test_bad_config_exits_non_zero_with_one_line_and_no_daemon(daemon: Daemon, args: list[str], wanted: str) -> None:
    result = daemon.launch(echo_app_args(*args))
    assert result.returncode != 0, daemon.output
    message = one_line(daemon.output)
    assert wanted in message, message
    assert "Traceback" not in daemon.output
    assert_no_daemon(daemon)
    assert "Spawning process" not in daemon.log()


def test_port_in_use_is_refused_on_the_terminal_before_daemonizing(daemon: Daemon) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", daemon.port))
        taken.listen(1)
        result = daemon.launch(echo_app_args())
    assert result.returncode != 0, daemon.output + daemon.log()
    message = one_line(daemon.output)
    assert str(daemon.port) in message and "in use" in message, message
    # Refused by the launcher itself, not reported back by a daemon that failed to bind.
    assert "An error has occurred" not in message
    assert not daemon.logfile.exists(), f"twistd got as far as logging:\n{daemon.log()}"
    assert_no_daemon(daemon)


def test_a_relative_config_path_is_read_again_on_reload_after_twistd_changed_directory(daemon: Daemon,
                                                                                      tmp_path: Path) -> None:
    """``twistd --rundir / passenger --config passenger.toml`` (as an init script runs it): SIGHUP reads that file."""
    config = tmp_path / "passenger.toml"

    def write(name: str) -> None:
        write_toml(config, f"""\
            [[app]]
            name = {q(name)}
            root = {q(APPS)}
            start_command = {q(f"{APP_PYTHON} echo_app.py")}
            """)

    write("first")
    result = daemon.launch(["--config", "passenger.toml"], twistd_args=["--rundir", "/"], cwd=tmp_path)
    assert result.returncode == 0, daemon.output + daemon.log()
    daemon.wait_log(r"Process \d+ of first is ready")
    write("second")
    os.kill(daemon.pid(), signal.SIGHUP)
    daemon.wait_log(r"Reload: starting the new app second|Reload refused.*", timeout=10)
    assert "Reload refused" not in daemon.log(), daemon.log()
    daemon.wait_log(r"Process \d+ of second is ready")


def test_a_listen_path_that_cannot_be_bound_is_one_line_and_leaves_no_daemon(daemon: Daemon, tmp_path: Path) -> None:
    """A Unix socket in a missing directory: refused like any bad value, not by a daemon that failed to bind."""
    path = tmp_path / "missing" / "http.sock"
    result = daemon.launch(echo_app_args("--listen", f"unix:{path}"), port=False)
    assert result.returncode != 0, daemon.output + daemon.log()
    message = one_line(daemon.output)
    assert "--listen" in message and str(path) in message, message
    assert_no_daemon(daemon)


# 3. Shedding root.

needs_root = pytest.mark.skipif(not RUNNING_AS_ROOT, reason="binding a privileged port and --uid need root")


def privileged_port() -> int:
    """A port below 1024 that nothing listens on (81 if free)."""
    for port in (81, *range(1023, 900, -1)):
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.fail("every port from 901 to 1023 (and 81) is taken: cannot test binding a privileged port")


def owned_app_root(user: str) -> Path:
    """A copy of echo_app.py in a directory owned by ``user`` (whom a root server would run it as)."""
    root = world_dir("owned", 0o755)
    shutil.copy(APPS / "echo_app.py", root / "echo_app.py")
    account = pwd.getpwnam(user)
    os.chown(root, account.pw_uid, account.pw_gid)
    return root


class Foreground:
    """``twistd -n --uid nobody --gid nogroup … passenger`` as root."""

    def __init__(self, args: list[str]) -> None:
        self.port = privileged_port()
        # nobody makes the instance directory and spawn directories: the places must be writable to it.
        self.registry = world_dir("registry", 0o1777)
        self.tmpdir = world_dir("tmp", 0o1777)
        self.logdir = world_dir("logs", 0o755)
        self.logfile = self.logdir / "passenger.log"
        cmd = [TWISTD, "-n", "--pidfile", "", "--logfile", str(self.logfile), "--uid", "nobody", "--gid", "nogroup",
               "passenger", "--address", "127.0.0.1", "--port", str(self.port),
               "--instance-registry-dir", str(self.registry), *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     env={**os.environ, "TMPDIR": str(self.tmpdir)})

    def log(self, path: Path | None = None) -> str:
        try:
            return (path or self.logfile).read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_log(self, pattern: str, path: Path | None = None, timeout: float = 20.0) -> None:
        def found() -> bool:
            if self.proc.poll() is not None:
                out = self.proc.stdout.read().decode(errors="replace") if self.proc.stdout else ""
                raise AssertionError(f"the server exited with {self.proc.returncode}:\n{out}{self.log()}")
            return re.search(pattern, self.log(path)) is not None
        wait_for(found, timeout, what=f"{pattern!r} in {path or self.logfile}:\n{self.log(path)}")

    def app_pids(self) -> list[int]:
        return [int(pid) for pid in re.findall(r"Spawning process (\d+)", self.log())]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(40)

    def kill(self) -> None:
        kill_server(self.proc, self.app_pids())


@pytest.fixture
def as_nobody() -> Iterator[list[Foreground]]:
    servers: list[Foreground] = []
    yield servers
    for server in servers:
        server.kill()


NOBODY = pwd.getpwnam("nobody")


@needs_root
def test_binds_a_privileged_port_then_runs_as_nobody_and_never_runs_an_app_as_root(
        as_nobody: list[Foreground]) -> None:
    root = owned_app_root("daemon")  # a root server would run it as daemon; this one is nobody once running
    server = Foreground(["--app-root", str(root), "--app-start-command", f"{APP_PYTHON} echo_app.py"])
    as_nobody.append(server)
    server.wait_log(r"Process \d+ of \S+ is ready")
    log = server.log()
    assert log.index(f"starting on {server.port}") < log.index("set uid/gid 65534/65534"), log  # bound, then shed

    status = proc_status(server.proc.pid)
    assert status["Uid"].split() == [str(NOBODY.pw_uid)] * 4, status["Uid"]  # real, effective, saved, fs
    assert status["Gid"].split() == [str(NOBODY.pw_gid)] * 4, status["Gid"]
    assert "0" not in status["Groups"].split(), f"root's groups kept: {status['Groups']}"

    seen = json.loads(get(server.port, "/echo"))
    app_pid = int(get(server.port, "/pid"))
    # Only a root server switches users: this one runs its apps as itself (users.py, docs/configuration.md).
    assert (seen["uid"], seen["gid"]) == (NOBODY.pw_uid, NOBODY.pw_gid), seen
    for pid in server.app_pids():
        if pid_alive(pid):
            app_status = proc_status(pid)
            assert "0" not in app_status["Uid"].split() and "0" not in app_status["Gid"].split(), app_status
            assert "0" not in app_status["Groups"].split(), app_status

    # The instance directory is the server user's, private, and usable by root's tools.
    (instance,) = sorted(server.registry.glob("passenger.*"))
    info = instance.stat()
    assert (info.st_uid, info.st_mode & 0o777) == (NOBODY.pw_uid, 0o700)
    status_run = subprocess.run([PASSENGER_STATUS, "--instance-registry-dir", str(server.registry)],
                                capture_output=True, text=True, timeout=30)
    assert status_run.returncode == 0, status_run.stdout + status_run.stderr
    assert f"PID: {app_pid} " in status_run.stdout, status_run.stdout

    apps = server.app_pids()
    assert server.stop() == 0, server.log()
    assert not [p for p in apps if pid_alive(p)]
    assert not instance.exists(), "the instance directory was not removed"


@needs_root
def test_a_log_reopen_that_nobody_may_not_do_keeps_the_server_logging(as_nobody: list[Foreground]) -> None:
    """SIGUSR1 after the log was moved, in a directory only root may write to: the log must go on somewhere.

    The server cannot make a new file there, so it should keep the file it has
    (and say why); what it must not do is lose its log altogether.
    """
    server = Foreground(echo_app_args())
    as_nobody.append(server)
    server.wait_log(r"Process \d+ of \S+ is ready")
    rotated = server.logfile.with_name("passenger.log.1")
    server.logfile.rename(rotated)
    os.kill(server.proc.pid, signal.SIGUSR1)
    get(server.port, "/pid")
    # Whatever it did about the reopen, the stop must be logged: in the new file if it made one, else the old.
    assert server.stop() == 0
    logged = server.log() + server.log(rotated)
    assert "passenger stopped; every app process has exited" in logged, (
        f"the server stopped logging after SIGUSR1:\n--- {rotated}:\n{server.log(rotated)}\n"
        f"--- {server.logfile}:\n{server.log()}")


@needs_root
def test_a_directory_the_uid_may_not_write_to_is_refused_before_daemonizing(daemon: Daemon) -> None:
    """--instance-registry-dir that only root may write to, with --uid nobody: the server could never use it.

    The option checks run as root, before twistd sheds privileges, so they must
    check for the account the server will run as; else the launch fails after
    daemonizing, with twistd's truncated report of the exception.
    """
    only_root = world_dir("root-only", 0o755)
    result = daemon.launch(echo_app_args("--instance-registry-dir", str(only_root)),
                           twistd_args=["--uid", "nobody", "--gid", "nogroup"])
    assert result.returncode != 0, daemon.output + daemon.log()
    message = one_line(daemon.output)
    assert "--instance-registry-dir" in message and str(only_root) in message, message
    assert_no_daemon(daemon)

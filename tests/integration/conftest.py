"""Run the real server the way a user does: ``twistd -n passenger …`` in a subprocess."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

APPS = Path(__file__).resolve().parent.parent / "apps"
TWISTD = str(Path(sys.executable).parent / "twistd")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.02, what: str = "") -> object:
    """Poll ``predicate`` until it returns something truthy, or fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


class Server:
    """A ``twistd -n passenger`` process and its log."""

    def __init__(self, tmp: Path, args: list[str], twistd_args: list[str] | None = None) -> None:
        self.port = free_port()
        self.log_path = tmp / f"passenger-{self.port}.log"
        self.args = args
        self.twistd_args = twistd_args or []
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, ready: int = 1, timeout: float = 20.0) -> "Server":
        cmd = [TWISTD, "-n", "--logfile", str(self.log_path), *self.twistd_args, "passenger",
               "--address", "127.0.0.1", "--port", str(self.port), *self.args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if ready:
            self.wait_ready(ready, timeout)
        return self

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_log(self, pattern: str, count: int = 1, timeout: float = 20.0) -> list[re.Match[str]]:
        def found() -> list[re.Match[str]] | None:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.output()}{self.log()}")
            matches = list(re.finditer(pattern, self.log()))
            return matches if len(matches) >= count else None
        return wait_for(found, timeout, what=f"{pattern!r} x{count} in the log")  # type: ignore[return-value]

    def wait_ready(self, count: int = 1, timeout: float = 20.0) -> None:
        self.wait_log(r"Process \d+ of \S+ is ready", count, timeout)

    def app_pids(self) -> list[int]:
        """Every app pid the server ever spawned."""
        return [int(m) for m in re.findall(r"Spawning process (\d+)", self.log())]

    def output(self) -> str:
        return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for pid in self.app_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """``serve(args, ready=N)`` starts a server; it is stopped and its apps killed after the test."""
    servers: list[Server] = []

    def start(args: list[str], ready: int = 1, twistd_args: list[str] | None = None, timeout: float = 20.0) -> Server:
        server = Server(tmp_path, args, twistd_args)
        servers.append(server)
        return server.start(ready, timeout)

    yield start
    for server in servers:
        server.kill()


def echo_app_args(*extra: str) -> list[str]:
    """Options that run tests/apps/echo_app.py."""
    return ["--app-root", str(APPS), "--app-start-command", f"{sys.executable} echo_app.py", *extra]

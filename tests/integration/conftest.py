"""Run the real server the way a user does: ``twistd -n passenger …`` in a subprocess."""

from __future__ import annotations

import atexit
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.polling import wait_for

TWISTD = str(Path(sys.executable).parent / "twistd")
SOURCE_APPS = Path(__file__).resolve().parent.parent / "apps"

#: A server running as root runs its apps as the owner of the app root, never as
#: root (nobody for root-owned roots).  That account cannot reach /root (where
#: this Python may live), pytest's private temporary directories, or a checkout
#: in a private directory, so as root the apps, their interpreter and the
#: server's TMPDIR live in a world-readable directory instead.
RUNNING_AS_ROOT = os.geteuid() == 0
WORLD = Path(tempfile.mkdtemp(prefix="passenger-tests-", dir="/tmp"))
os.chmod(WORLD, 0o755)
atexit.register(shutil.rmtree, WORLD, True)
if RUNNING_AS_ROOT:
    APPS = WORLD / "apps"
    shutil.copytree(SOURCE_APPS, APPS)
    for folder, _dirs, files in os.walk(APPS):
        os.chmod(folder, 0o755)
        for name in files:
            os.chmod(os.path.join(folder, name), 0o755)
else:
    APPS = SOURCE_APPS
APP_PYTHON = "/usr/bin/python3" if RUNNING_AS_ROOT and os.access("/usr/bin/python3", os.X_OK) else sys.executable


def world_dir(prefix: str = "dir", mode: int = 0o777) -> Path:
    """A fresh directory that the apps' account can use (under WORLD)."""
    path = Path(tempfile.mkdtemp(prefix=prefix + "-", dir=WORLD))
    os.chmod(path, mode)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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

    def start(self, ready: int = 1, timeout: float = 20.0) -> Server:
        cmd = [TWISTD, "-n", "--logfile", str(self.log_path), "--pidfile", str(self.log_path.with_suffix(".pid")),
               *self.twistd_args, "passenger",
               "--address", "127.0.0.1", "--port", str(self.port), *self.args]
        # Spawn work directories and error reports go to a directory of the test's own.
        env = {**os.environ, "TMPDIR": str(world_dir("tmp", 0o755))}
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        if ready:
            self.wait_ready(ready, timeout)
        return self

    def log(self) -> str:
        """The whole log: twistd rotates it every megabyte (to .1, .2, ...; the highest is the oldest)."""
        rotated = [p for p in self.log_path.parent.glob(self.log_path.name + ".*") if p.suffix[1:].isdigit()]
        text = []
        for path in [*sorted(rotated, key=lambda p: -int(p.suffix[1:])), self.log_path]:
            try:
                text.append(path.read_text(errors="replace"))
            except FileNotFoundError:  # not written yet, or rotated meanwhile
                pass
        return "".join(text)

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
        """What twistd printed itself (usage errors, tracebacks before logging starts)."""
        if self.proc is None or self.proc.poll() is None or self.proc.stdout is None:
            return ""
        return self.proc.stdout.read().decode(errors="replace")

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
        kill_server(self.proc, self.app_pids())


def kill_pids(pids: Iterable[int]) -> None:
    """SIGKILL whichever of ``pids`` still run (a test's cleanup; gone or not ours is fine)."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def kill_server(proc: subprocess.Popen[bytes] | None, app_pids: Iterable[int]) -> None:
    """Kill a server process (and reap it), then every app process it spawned."""
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait(10)
    kill_pids(app_pids)


def start_server(tmp: Path, args: list[str], ready: int = 1) -> Server:
    """A server for a whole module (a module-scoped fixture); killed here if it fails to start."""
    server = Server(tmp, args)
    try:
        server.start(ready)
    except BaseException:
        server.kill()
        raise
    return server


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


#: The app group of echo_app_args: named after its root's basename.
ECHO_GROUP = APPS.name


def echo_app_args(*extra: str) -> list[str]:
    """Options that run tests/apps/echo_app.py."""
    return ["--app-root", str(APPS), "--app-start-command", f"{APP_PYTHON} echo_app.py", *extra]


# Helpers for the lifecycle and CLI tests (additions; nothing above depends on them).

def life_app_args(*extra: str, flags: str = "") -> list[str]:
    """Options that run tests/apps/life_app.py (echo_app that logs each request on stdout)."""
    command = f"{APP_PYTHON} life_app.py {flags}".strip()
    return ["--app-root", str(APPS), "--app-start-command", command, *extra]


def pid_exists(pid: int) -> bool:
    """True while ``pid`` has any process-table entry, zombies included (not reaped yet)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RawResponse:
    def __init__(self, status: int, headers: dict[str, str], body: bytes, elapsed: float) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.elapsed = elapsed

    def __repr__(self) -> str:
        return f"<RawResponse {self.status} {self.headers} {self.body[:200]!r} after {self.elapsed:.3f}s>"


class RawRequest:
    """One ``Connection: close`` HTTP/1.1 request on its own socket, sent at once, read later.

    The socket is left open so the test can see, in /proc/net/tcp, whether the
    server has read the request (``server_has_read``) or close it early.
    """

    def __init__(self, port: int, path: str, host: str = "127.0.0.1", method: str = "GET") -> None:
        self.server_port = port
        self.sock = socket.create_connection((host, port), timeout=10)
        #: Kept: the socket cannot tell its port once closed.
        self.client_port = int(self.sock.getsockname()[1])
        self.started = time.monotonic()
        length = "Content-Length: 0\r\n" if method not in ("GET", "HEAD") else ""
        self.sock.sendall(
            f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{length}Connection: close\r\n\r\n"
            .encode("ascii"))

    def response(self, timeout: float = 10.0) -> RawResponse:
        """Read until the server closes; fail (socket.timeout) if that takes longer than ``timeout``."""
        self.sock.settimeout(timeout)
        data = b""
        try:
            while True:
                piece = self.sock.recv(65536)
                if not piece:
                    break
                data += piece
        finally:
            elapsed = time.monotonic() - self.started
            self.sock.close()
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        if not lines[0].startswith("HTTP/1."):
            raise AssertionError(f"not an HTTP response: {data[:300]!r}")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return RawResponse(status, headers, body, elapsed)

    def close(self) -> None:
        self.sock.close()

    def server_has_read(self) -> bool:
        return server_has_read(self.server_port, self.client_port)

    def server_let_go(self) -> bool:
        return server_let_go(self.server_port, self.client_port)


#: /proc/net/tcp states.
TCP_ESTABLISHED = 0x01
TCP_CLOSE_WAIT = 0x08


def tcp_sockets() -> list[tuple[int, int, int, int, int]]:
    """IPv4 TCP sockets of this network namespace: (local port, remote port, state, tx queue, rx queue)."""
    entries = []
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            tx, rx = (int(x, 16) for x in fields[4].split(":"))
            entries.append((local_port, remote_port, int(fields[3], 16), tx, rx))
    return entries


def server_has_read(server_port: int, client_port: int) -> bool:
    """Everything the client sent was delivered (acked) and the server has read it from its socket."""
    entries = tcp_sockets()
    client = [e for e in entries if e[0] == client_port and e[1] == server_port]
    served = [e for e in entries if e[0] == server_port and e[1] == client_port]
    return bool(client) and client[0][3] == 0 and all(e[4] == 0 for e in served)


def server_let_go(server_port: int, client_port: int) -> bool:
    """The server has closed its side of the connection from ``client_port`` (after the client closed)."""
    return not any(e[0] == server_port and e[1] == client_port and e[2] in (TCP_ESTABLISHED, TCP_CLOSE_WAIT)
                   for e in tcp_sockets())


def in_thread(function: Callable[[], RawResponse]) -> Callable[[float], RawResponse]:
    """Run ``function`` in a thread now; the returned callable joins it and returns its result."""
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["result"] = function()
        except BaseException as e:  # handed to the test thread
            box["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def result(timeout: float = 20.0) -> RawResponse:
        thread.join(timeout)
        assert not thread.is_alive(), "the request thread did not finish"
        if "error" in box:
            raise box["error"]  # type: ignore[misc]
        return box["result"]  # type: ignore[return-value]

    return result


# Requests the way a plain HTTP client makes them.

ECHO_APP = f"{APP_PYTHON} echo_app.py"
LIFE_APP = f"{APP_PYTHON} life_app.py"
#: The detail of the server's 404 page for a host and path no app answers.
NOT_FOUND_DETAIL = b"No application is configured for this host and path."


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    cookies: list[str]
    body: bytes
    elapsed: float

    @property
    def pid(self) -> int | None:
        """The app process that answered (echo_app and life_app send X-Pid)."""
        value = self.headers.get("x-pid")
        return int(value) if value is not None else None

    def json(self) -> dict[str, object]:
        result = json.loads(self.body)
        assert isinstance(result, dict)
        return result

    def env(self) -> dict[str, str]:
        """The app's environment, as life_app's /env reports it."""
        env = self.json()["env"]
        assert isinstance(env, dict)
        return env


def fetch(port: int, path: str, host: str | None = None, headers: dict[str, str] | None = None,
          timeout: float = 10.0) -> Reply:
    """One GET on a fresh connection (``Connection: close``), with this Host header (default: the address)."""
    sent = {"Connection": "close", **(headers or {})}
    if host is not None:
        sent["Host"] = host
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    started = time.monotonic()
    try:
        connection.request("GET", path, headers=sent)
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    return Reply(response.status, {k.lower(): v for k, v in response.getheaders()},
                 response.msg.get_all("Set-Cookie") or [], body, time.monotonic() - started)

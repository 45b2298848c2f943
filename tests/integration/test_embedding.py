"""Embedding: the two examples in docs/examples/ run for real, and the public API in-process.

The examples run as a user runs them (``twistd -ny docs/examples/passenger.tac``,
``python docs/examples/embed_site.py --port N``), pointed at tests/apps/echo_app.py
through their APP_ROOT and APP_COMMAND variables.  The in-process tests drive
PassengerService and AppPoolResource on the real reactor (pytest-twisted).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted  # type: ignore[import-untyped]
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import Agent, ResponseDone, ResponseNeverReceived
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import Site

from passenger.config import ConfigError
from passenger.embed import AppPoolResource, PassengerService, load_config
from passenger.http.congestion import TCP_CONGESTION
from tests.integration.conftest import APP_PYTHON, APPS, TWISTD, free_port, kill_server, pid_alive, world_dir
from tests.integration.test_response_buffering import lines
from tests.polling import until, wait_for

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "docs" / "examples"
ECHO = f"{APP_PYTHON} echo_app.py"
#: echo_app that prints "request <METHOD> <path>" as a request arrives (the examples log the app's output).
LIFE = f"{APP_PYTHON} life_app.py"
MiB = 1024 * 1024


# --------------------------------------------------------------------------------------
# The examples, as subprocesses.
# --------------------------------------------------------------------------------------


class Program:
    """One example program and its log; the app processes it spawned are found in that log."""

    def __init__(self, tmp: Path, command: list[str], env: dict[str, str], log_path: Path, port: int) -> None:
        self.command, self.env, self.log_path, self.port = command, env, log_path, port
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, ready: int) -> Program:
        out = open(self.log_path.with_suffix(".out"), "wb")
        self.proc = subprocess.Popen(self.command, stdout=out, stderr=subprocess.STDOUT, env=self.env, cwd=ROOT)
        out.close()
        self.wait_log(r"Process \d+ of \S+ is ready", ready)
        return self

    def log(self) -> str:
        text = ""
        for path in (self.log_path, self.log_path.with_suffix(".out")):
            try:
                text += path.read_text(errors="replace")
            except FileNotFoundError:
                pass
        return text

    def wait_log(self, pattern: str, count: int = 1, timeout: float = 20.0) -> None:
        def found() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"exited with {self.proc.returncode}:\n{self.log()}")
            return len(re.findall(pattern, self.log())) >= count
        wait_for(found, timeout, what=f"{pattern!r} x{count} in the log")

    def app_pids(self) -> list[int]:
        return [int(pid) for pid in re.findall(r"Spawning process (\d+)", self.log())]

    def get(self, path: str, **kwargs: Any) -> tuple[int, dict[str, str], bytes]:
        return request(self.port, "GET", path, **kwargs)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        kill_server(self.proc, self.app_pids())


def request(port: int, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
            chunked: bool = False) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        if chunked:
            connection.request(method, path, body=iter([body or b""]), headers=headers or {}, encode_chunked=True)
        else:
            connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def example_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "APP_ROOT": str(APPS), "APP_COMMAND": LIFE, "APP_INSTANCES": "2",
            "TMPDIR": str(world_dir("tmp", 0o755)), **extra}


@pytest.fixture
def programs() -> Iterator[list[Program]]:
    started: list[Program] = []
    yield started
    for program in started:
        program.kill()


@pytest.fixture
def site(tmp_path: Path, programs: list[Program]) -> Program:
    """``python docs/examples/embed_site.py --port N`` serving the echo app at /app (2 processes)."""
    port = free_port()
    program = Program(tmp_path, [sys.executable, str(EXAMPLES / "embed_site.py"), "--port", str(port)],
                      example_env(), tmp_path / "site.log", port)
    programs.append(program)
    return program.start(ready=2)


@pytest.fixture
def tac(tmp_path: Path, programs: list[Program]) -> Program:
    """``twistd -ny docs/examples/passenger.tac`` serving the echo app on its own listener."""
    port = free_port()
    log = tmp_path / "tac.log"
    program = Program(tmp_path, [TWISTD, "--logfile", str(log), "--pidfile", str(tmp_path / "tac.pid"),
                                 "-ny", str(EXAMPLES / "passenger.tac")],
                      example_env(PORT=str(port)), log, port)
    programs.append(program)
    return program.start(ready=2)


def echo(status: int, body: bytes) -> dict[str, Any]:
    assert status == 200, body[:500]
    return json.loads(body)


def header(info: dict[str, Any], name: str) -> list[str]:
    return [value for key, value in info["headers"] if key.lower() == name.lower()]


def test_site_serves_its_own_page_and_the_app_below_its_mount_point(site: Program) -> None:
    status, _, body = site.get("/")
    assert (status, body) == (200, b"hello from the site\n")
    status, headers, body = site.get("/app/echo?x=1&y=%2F", headers={
        "X-Forwarded-For": "6.6.6.6", "X-Forwarded-Prefix": "/spoofed", "X-Forwarded-Host": "evil.example",
        "Connection": "X-Hop", "X-Hop": "1", "Keep-Alive": "timeout=5", "X-Custom": "kept"})
    info = echo(status, body)
    assert info["method"] == "GET"
    assert info["path"] == "/echo?x=1&y=%2F", "the path below /app, still encoded, with its query"
    assert header(info, "X-Forwarded-Prefix") == ["/app"]
    assert header(info, "X-Forwarded-For") == ["127.0.0.1"], "the client's own is replaced"
    assert header(info, "X-Forwarded-Proto") == ["http"]
    assert header(info, "X-Forwarded-Host") == [f"127.0.0.1:{site.port}"]
    assert header(info, "X-Forwarded-Port") == [str(site.port)]
    assert header(info, "Host") == [f"127.0.0.1:{site.port}"]
    assert header(info, "X-Custom") == ["kept"]
    assert not header(info, "X-Hop") and not header(info, "Keep-Alive"), "hop-by-hop headers are dropped"
    assert int(headers["x-pid"]) in site.app_pids()
    assert headers["x-request-id"] == header(info, "X-Request-Id")[0]
    # The mount point itself, with and without its slash.
    for path in ("/app", "/app/"):
        status, _, body = site.get(path)
        assert status == 200 and body.startswith(b"Hello from "), body


def test_request_bodies_reach_the_app_intact(site: Program) -> None:
    payload = os.urandom(3 * 1024 * 1024 + 17)  # past twisted.web's in-memory limit: spooled to a file
    for chunked in (False, True):
        status, _, body = request(site.port, "POST", "/app/echo", payload, chunked=chunked)
        info = echo(status, body)
        assert info["method"] == "POST"
        assert info["body_length"] == len(payload)
        assert info["body_sha256"] == hashlib.sha256(payload).hexdigest()
    status, _, body = request(site.port, "PUT", "/app/echo", b"")
    info = echo(status, body)
    assert (info["method"], info["body_length"]) == ("PUT", 0)


def test_responses_stream_back_in_every_framing(site: Program) -> None:
    size = 16 * 1024 * 1024
    status, headers, body = site.get(f"/app/bytes?n={size}")
    assert status == 200 and len(body) == size and headers["content-length"] == str(size)
    status, headers, body = site.get("/app/chunked?n=4")
    assert status == 200 and body == b"".join(b"chunk-%d\n" % i for i in range(4))
    status, _, body = site.get("/app/close")
    assert status == 200 and body == b"until the end", "a body framed by the app closing its connection"
    status, _, body = site.get("/app/status?code=204")
    assert (status, body) == (204, b"")
    status, headers, body = request(site.port, "HEAD", "/app/echo")
    assert status == 200 and body == b""


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def test_a_slow_client_pauses_the_app_instead_of_filling_memory(site: Program) -> None:
    assert site.proc is not None
    size, limit = 200 * MiB, 30 * MiB
    baseline = rss(site.proc.pid)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)  # keep the kernel from soaking it up
    sock.settimeout(30)
    sock.connect(("127.0.0.1", site.port))
    try:
        sock.sendall(f"GET /app/bytes?n={size} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        site.wait_log(r"request GET /bytes\?n=")
        deadline = time.monotonic() + 1.5

        def window_passed() -> bool:  # the client reads nothing meanwhile
            grown = rss(site.proc.pid) - baseline  # type: ignore[union-attr]
            assert grown < limit, f"the site grew by {grown / MiB:.0f} MiB while its client was not reading"
            return time.monotonic() >= deadline

        wait_for(window_passed, 10, interval=0.01, what="the slow-reader window")
        received, buffer = 0, bytearray(MiB)
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(4096)
        head, _, rest = head.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and f"Content-Length: {size}".encode() in head, head
        received = len(rest)
        while (n := sock.recv_into(buffer)) > 0:
            received += n
    finally:
        sock.close()
    assert received == size


def test_twenty_concurrent_requests_all_succeed(site: Program) -> None:
    results: list[tuple[int, bytes]] = []
    lock = threading.Lock()

    def one(n: int) -> None:
        status, _, body = site.get(f"/app/sleep?ms=100&n={n}")
        with lock:
            results.append((status, body))

    threads = [threading.Thread(target=one, args=(n,)) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(results) == 20
    assert all(result == (200, b"slept") for result in results), results


def test_sigterm_lets_the_request_in_flight_finish_then_stops_every_app_process(site: Program) -> None:
    pids = site.app_pids()
    assert len(pids) == 2 and all(pid_alive(pid) for pid in pids)
    answer: dict[str, Any] = {}

    def slow() -> None:
        answer["response"] = site.get("/app/sleep?ms=1500")

    thread = threading.Thread(target=slow)
    thread.start()
    site.wait_log(r"request GET /sleep\?ms=1500")  # the app has it
    assert site.stop(signal.SIGTERM) == 0, site.log()
    thread.join(10)
    status, _, body = answer["response"]
    assert (status, body) == (200, b"slept"), "the request in flight finished before the app stopped"
    assert not any(pid_alive(pid) for pid in site.app_pids()), site.log()
    assert "every app process has exited" in site.log()


def test_sigint_stops_the_site_too(site: Program) -> None:
    assert site.get("/app/")[0] == 200
    assert site.stop(signal.SIGINT) == 0, site.log()
    assert not any(pid_alive(pid) for pid in site.app_pids())


def test_the_tac_file_serves_the_app_and_stops_on_sigterm(tac: Program) -> None:
    status, _, body = tac.get("/echo?from=tac")
    info = echo(status, body)
    assert info["path"] == "/echo?from=tac" and not header(info, "X-Forwarded-Prefix")
    pids = tac.app_pids()
    assert len(pids) == 2
    seen = {int(tac.get("/pid")[2]) for _ in range(6)} | {int(request(tac.port, "GET", "/pid")[2])}
    assert seen <= set(pids)
    assert tac.stop(signal.SIGTERM) == 0, tac.log()
    assert not any(pid_alive(pid) for pid in pids), tac.log()


# --------------------------------------------------------------------------------------
# load_config.
# --------------------------------------------------------------------------------------


def test_load_config_from_keywords() -> None:
    config = load_config(root=str(APPS), start_command=ECHO, min_instances=2, listen=["tcp:0"], envvars={"A": "1"})
    [app] = config.apps
    assert (app.root, app.start_command, app.min_instances) == (str(APPS), ECHO, 2)
    assert dict(app.envvars) == {"A": "1"}
    assert config.listen == ("tcp:0",)
    assert load_config(root=str(APPS), start_command=ECHO, listen=[]).listen == ()
    assert load_config(root=str(APPS), start_command=ECHO).listen == ("tcp:3000:interface=0.0.0.0",), "the CLI's default"


def test_load_config_from_a_file_with_keyword_overrides(tmp_path: Path) -> None:
    path = tmp_path / "passenger.toml"
    path.write_text(f'max_pool_size = 4\n[[app]]\nname = "one"\nroot = "{APPS}"\nstart_command = "{ECHO}"\n'
                    f'[[app]]\nname = "two"\nroot = "{APPS}"\nstart_command = "{ECHO}"\nbase_uri = "/two"\n')
    config = load_config(str(path), min_instances=2, listen=[])
    assert [app.name for app in config.apps] == ["one", "two"]
    assert all(app.min_instances == 2 for app in config.apps), "keywords apply to every app, as options do"
    assert config.max_pool_size == 4 and config.listen == ()


def test_load_config_ignores_passenger_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PASSENGER_MIN_INSTANCES", "3")
    assert load_config(root=str(APPS), start_command=ECHO).apps[0].min_instances == 1


@pytest.mark.parametrize(("settings", "message"), [
    ({"min_instance": 2}, "load_config: unknown setting 'min_instance' (did you mean 'min_instances'?)"),
    ({"colour": "blue"}, "load_config: unknown setting 'colour'"),
    ({"min_instances": -1}, "min_instances -1: must not be negative"),
    ({"min_instances": 3, "max_instances": 2}, "min_instances 3 is greater than max_instances 2"),
    ({"max_request_queue_time": "soon"}, "max_request_queue_time 'soon': expected a number of seconds"),
    ({"start_command": None}, "start_command is required"),
    ({"listen": ["tcp:notaport"]}, "listen 'tcp:notaport'"),
    ({"root": "/no/such/dir"}, "root '/no/such/dir': no such directory"),
])
def test_load_config_errors_name_the_keyword(settings: dict[str, Any], message: str) -> None:
    given = {"root": str(APPS), "start_command": ECHO, **settings}
    with pytest.raises(ConfigError) as raised:
        load_config(**given)
    assert message in str(raised.value)
    assert "--" not in str(raised.value), "keywords are not named as command-line options"


def test_load_config_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="No such file"):
        load_config(str(tmp_path / "missing.toml"))
    path = tmp_path / "bad.toml"
    path.write_text(f'[[app]]\nroot = "{APPS}"\nstart_command = "x"\nmin_instancs = 1\n')
    with pytest.raises(ConfigError, match=r"bad.toml: app #1: unknown setting 'min_instancs' \(did you mean"):
        load_config(str(path))


def test_app_pool_resource_needs_a_known_app(tmp_path: Path) -> None:
    path = tmp_path / "two.toml"
    path.write_text(f'[[app]]\nname = "one"\nroot = "{APPS}"\nstart_command = "{ECHO}"\n'
                    f'[[app]]\nname = "two"\nroot = "{APPS}"\nstart_command = "{ECHO}"\nbase_uri = "/two"\n')
    service = PassengerService(load_config(str(path), listen=[]))
    with pytest.raises(ValueError, match=r"runs 2 apps \(one, two\); say which with app_name"):
        AppPoolResource(service)
    with pytest.raises(ValueError, match=r"no app named 'three'"):
        AppPoolResource(service, "three")
    assert AppPoolResource(service, "two").app_name == "two"


# --------------------------------------------------------------------------------------
# In-process: PassengerService in a MultiService, AppPoolResource in a Site (pytest-twisted).
# --------------------------------------------------------------------------------------


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


class Collect(Protocol):
    """A response body, whole (readBody warns about Agent transports without abortConnection)."""

    def __init__(self, done: Deferred[bytes]) -> None:
        self.done = done
        self.pieces: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        self.pieces.append(data)

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self.pieces))
        else:
            self.done.errback(reason)


def read_body(response: Any) -> Deferred[bytes]:
    done: Deferred[bytes] = Deferred()
    response.deliverBody(Collect(done))
    return done


class Embedded:
    """A PassengerService with no listener, in a MultiService, and a Site mounting the app at /app."""

    def __init__(self, **settings: Any) -> None:
        settings = {"root": str(APPS), "start_command": ECHO, "listen": [],
                    "instance_registry_dir": str(world_dir("registry", 0o755)),
                    "spawn_dir": str(world_dir("spawn", 0o755)), **settings}
        self.reactor = _reactor()
        self.service = PassengerService(load_config(**settings), self.reactor)
        self.resource = AppPoolResource(self.service)
        root = Resource()
        root.putChild(b"app", self.resource)
        self.top = MultiService()
        self.service.setServiceParent(self.top)
        self.port = self.reactor.listenTCP(0, Site(root), interface="127.0.0.1")
        self.url = f"http://127.0.0.1:{self.port.getHost().port}"
        self.agent = Agent(self.reactor)

    @property
    def group(self) -> Any:
        assert self.service.pool is not None
        return self.service.pool.groups[self.resource.app_name]

    def get(self, path: str, headers: dict[bytes, list[bytes]] | None = None, method: bytes = b"GET",
            url: str | None = None) -> Deferred[Any]:
        @inlineCallbacks
        def go() -> Generator[Deferred[Any], Any, tuple[int, Headers, bytes]]:
            target = ((url or self.url) + path).encode()
            response = yield self.agent.request(method, target, Headers(headers or {}))
            body = yield read_body(response)
            return response.code, response.headers, body

        return go()

    @inlineCallbacks
    def stop(self) -> Generator[Deferred[Any], Any, None]:
        yield self.port.stopListening()
        if self.top.running:
            yield self.top.stopService()


@pytest.fixture
def embedded() -> Generator[Callable[..., Embedded], None, None]:
    made: list[Embedded] = []

    def make(**settings: Any) -> Embedded:
        made.append(Embedded(**settings))
        return made[-1]

    yield make
    for each in made:
        pytest_twisted.blockon(each.stop())


@pytest_twisted.inlineCallbacks
def test_service_in_a_multiservice_spawns_and_stops_its_processes(embedded: Callable[..., Embedded]) -> Any:
    server = embedded(min_instances=2)
    server.top.startService()
    assert server.service.listeners == [], "listen=[]: no listener of its own"
    yield until(lambda: len(server.group.ready) == 2, what="two ready processes")
    pids = [p.pid for p in server.group.ready]
    assert all(pid_alive(pid) for pid in pids)
    status, _, body = yield server.get("/app/pid")
    assert status == 200 and int(body) in pids
    process = next(p for p in server.group.ready if p.pid == int(body))
    assert process.processed == 1 and process.sessions == 0, "the request was counted and released"
    yield server.top.stopService()
    assert not any(pid_alive(pid) for pid in pids)
    assert not server.group.processes and not server.group.leaving


@pytest_twisted.inlineCallbacks
def test_forwarding_headers_of_a_trusted_proxy_are_extended(embedded: Callable[..., Embedded]) -> Any:
    server = embedded(trusted_proxies=["127.0.0.1"], show_version_in_header=True)
    server.top.startService()
    yield until(lambda: server.group.ready)
    status, headers, body = yield server.get("/app/echo", headers={
        b"X-Forwarded-For": [b"10.0.0.1"], b"X-Forwarded-Proto": [b"https"], b"X-Forwarded-Prefix": [b"/outer/"],
        b"X_Under": [b"smuggled"], b"Host": [b"example.com"]})
    info = echo(status, body)
    assert header(info, "X-Forwarded-For") == ["10.0.0.1, 127.0.0.1"]
    assert header(info, "X-Forwarded-Proto") == ["https"]
    assert header(info, "X-Forwarded-Prefix") == ["/outer/app"], "the proxy's prefix, then the mount point"
    assert header(info, "X-Forwarded-Host") == ["example.com"]
    assert not header(info, "X_Under"), "names with '_' are dropped (allow_underscore_headers)"
    assert headers.getRawHeaders(b"x-powered-by")[0].startswith(b"passenger/")


@pytest_twisted.inlineCallbacks
def test_mounted_as_the_whole_site(embedded: Callable[..., Embedded]) -> Any:
    server = embedded()
    port = server.reactor.listenTCP(0, Site(server.resource), interface="127.0.0.1")
    try:
        server.top.startService()
        yield until(lambda: server.group.ready)
        status, _, body = yield server.get("/echo?q=1", url=f"http://127.0.0.1:{port.getHost().port}")
        info = echo(status, body)
        assert info["path"] == "/echo?q=1" and not header(info, "X-Forwarded-Prefix")
    finally:
        yield port.stopListening()


@pytest_twisted.inlineCallbacks
def test_requests_before_the_service_starts_get_503(embedded: Callable[..., Embedded]) -> Any:
    server = embedded()
    status, _, body = yield server.get("/app/")
    assert status == 503 and b"not running" in body


@pytest_twisted.inlineCallbacks
def test_an_app_that_dies_mid_request_gives_502(embedded: Callable[..., Embedded]) -> Any:
    server = embedded()
    server.top.startService()
    yield until(lambda: server.group.ready)
    status, _, body = yield server.get("/app/exit", method=b"POST")
    assert status == 502 and b"Bad Gateway" in body
    assert server.group.stats.upstream_errors == 1
    yield until(lambda: server.group.ready, what="a replacement process")
    status, _, _ = yield server.get("/app/")
    assert status == 200
    assert all(p.sessions == 0 for p in server.group.ready)


@pytest_twisted.inlineCallbacks
def test_a_refused_connection_is_tried_on_another_process(embedded: Callable[..., Embedded]) -> Any:
    server = embedded(min_instances=2)
    server.top.startService()
    yield until(lambda: len(server.group.ready) == 2)
    broken, good = server.group.ready
    broken.port = free_port()  # nothing listens there: the oldest (first chosen) process refuses
    status, _, body = yield server.get("/app/pid")
    assert status == 200 and int(body) == good.pid
    assert broken not in server.group.ready, "the refusing process is replaced"
    yield until(lambda: not pid_alive(broken.pid), what="the refusing process stopped")
    assert good.sessions == 0 and broken.sessions == 0


@pytest_twisted.inlineCallbacks
def test_queue_overflow_gets_the_groups_status(embedded: Callable[..., Embedded]) -> Any:
    server = embedded(max_instances=1, concurrency=1, max_request_queue_size=1, request_queue_overflow_status_code=529)
    server.top.startService()
    yield until(lambda: server.group.ready)
    busy = server.get("/app/sleep?ms=800")  # takes the only process (concurrency 1)
    yield until(lambda: server.group.ready[0].sessions == 1)
    queued = server.get("/app/echo")
    yield until(lambda: server.group.waiting == 1)
    status, _, body = yield server.get("/app/echo")
    assert status == 529 and b"queue full" in body
    assert [(yield busy)[0], (yield queued)[0]] == [200, 200]


@pytest_twisted.inlineCallbacks
def test_a_client_that_leaves_while_queued_leaves_the_queue(embedded: Callable[..., Embedded]) -> Any:
    server = embedded(max_instances=1, concurrency=1)
    server.top.startService()
    yield until(lambda: server.group.ready)
    busy = server.get("/app/sleep?ms=600")
    yield until(lambda: server.group.ready[0].sessions == 1)
    leaving = server.get("/app/echo")
    yield until(lambda: server.group.waiting == 1)
    leaving.cancel()
    with pytest.raises(ResponseNeverReceived):
        yield leaving
    yield until(lambda: server.group.waiting == 0, what="the waiter cancelled")
    assert (yield busy)[0] == 200
    yield until(lambda: not server.resource.in_flight)
    assert server.group.ready[0].sessions == 0 and server.group.ready[0].processed == 1


@pytest_twisted.inlineCallbacks
def test_a_client_that_leaves_mid_response_frees_the_process(embedded: Callable[..., Embedded]) -> Any:
    server = embedded()
    server.top.startService()
    yield until(lambda: server.group.ready)
    response = yield server.agent.request(b"GET", (server.url + "/app/bytes?n=200000000").encode())
    assert response.code == 200
    response._transport.stopProducing()  # the client hangs up after the head
    yield until(lambda: not server.resource.in_flight, what="the exchange ended")
    assert server.group.ready[0].sessions == 0
    status, _, _ = yield server.get("/app/")
    assert status == 200


@pytest_twisted.inlineCallbacks
def test_max_request_time_gives_504_and_replaces_the_process(embedded: Callable[..., Embedded]) -> Any:
    server = embedded(max_request_time=0.5)
    server.top.startService()
    yield until(lambda: server.group.ready)
    first = server.group.ready[0].pid
    status, _, body = yield server.get("/app/sleep?ms=5000")
    assert status == 504 and b"max_request_time" in body
    yield until(lambda: server.group.ready and server.group.ready[0].pid != first, what="a new process")
    yield until(lambda: not pid_alive(first), what="the stuck process stopped")


class UntilClosed(Protocol):
    """Sends one request, keeps what comes back, and tells how the server ended the connection."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.data = b""
        self.ended: Deferred[str] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:
        self.ended.callback("closed" if reason.check(ConnectionDone) else f"reset ({reason.getErrorMessage()})")


def until_closed(server: Embedded, request: bytes) -> Deferred[tuple[bytes, bytes, str]]:
    """``request`` on a new connection to the embedding Site: (head, body, "closed" or "reset (...)")."""
    client = UntilClosed(request)

    @inlineCallbacks
    def go() -> Generator[Deferred[Any], Any, tuple[bytes, bytes, str]]:
        yield connectProtocol(TCP4ClientEndpoint(server.reactor, "127.0.0.1", server.port.getHost().port), client)
        how = yield client.ended
        head, _, body = client.data.partition(b"\r\n\r\n")
        return head, body, how

    return go()


@pytest_twisted.inlineCallbacks
def test_a_response_the_app_cuts_arrives_as_sent_then_the_connection_closes(embedded: Callable[..., Embedded]) -> Any:
    server = embedded()
    server.top.startService()
    yield until(lambda: server.group.ready)
    head, body, how = yield until_closed(server, b"GET /app/lines?n=20000&cut=3000 HTTP/1.1\r\nHost: t\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and b"content-length: 320000" in head.lower(), head
    assert body == lines(3000), len(body)
    assert how == "closed", "the length shows the response is short: a plain close"
    # HTTP/1.0 without a length (the app's chunks, which the Site cannot pass on): the close would end the
    # body, so the connection is cut instead.
    # What the reset overtakes is lost; what did arrive is the start of the response.
    head, body, how = yield until_closed(server, b"GET /app/chunked?n=5&then=cut HTTP/1.0\r\n\r\n")
    assert how.startswith("reset"), how
    assert b"HTTP/1.0 200 ".startswith(head[:13]) and b"content-length" not in head.lower(), head
    assert b"".join(b"chunk-%d\n" % i for i in range(5)).startswith(body), body


@pytest_twisted.inlineCallbacks
def test_spawn_failures_show_the_report(embedded: Callable[..., Embedded]) -> Any:
    server = embedded(start_command=f"{APP_PYTHON} -c 'import sys; sys.exit(1)'", min_instances=0)
    server.top.startService()
    status, headers, body = yield server.get("/app/")
    assert status == 500 and b"Error ID" in body, body[:300]
    status, headers, body = yield server.get("/app/", headers={b"Accept": [b"application/json"]})
    assert status == 500 and headers.getRawHeaders(b"content-type") == [b"application/json"]
    assert "error_id" in json.loads(body)


@pytest_twisted.inlineCallbacks
def test_stopping_waits_for_requests_in_flight(embedded: Callable[..., Embedded]) -> Any:
    server = embedded(min_instances=1)
    server.top.startService()
    yield until(lambda: server.group.ready)
    pid = server.group.ready[0].pid
    slow = server.get("/app/sleep?ms=700")
    yield until(lambda: server.group.ready[0].sessions == 1)
    stopped = server.top.stopService()
    assert pid_alive(pid), "the process serves its request before it stops"
    status, _, body = yield slow
    assert (status, body) == (200, b"slept")
    yield stopped
    assert not pid_alive(pid)


@pytest_twisted.inlineCallbacks
def test_the_drain_timeout_cuts_off_what_is_left(embedded: Callable[..., Embedded]) -> Any:
    server = embedded(drain_timeout=0.3, max_instances=1, concurrency=1)
    server.top.startService()
    yield until(lambda: server.group.ready)
    pid = server.group.ready[0].pid
    slow = server.get("/app/sleep?ms=10000")
    yield until(lambda: server.group.ready[0].sessions == 1)  # it holds the only process before the next comes
    queued = server.get("/app/echo")
    yield until(lambda: server.group.waiting == 1)
    yield server.top.stopService()
    assert not pid_alive(pid)
    status, _, body = yield queued
    assert status == 503 and b"shutting down" in body
    status, _, body = yield slow
    assert status == 503 and b"shutting down" in body


@pytest_twisted.inlineCallbacks
def test_a_kuria_app_on_a_unix_socket(embedded: Callable[..., Embedded]) -> Any:
    keep = world_dir("kuria")
    server = embedded(start_command=f"{APP_PYTHON} kuria_app.py", app_supports_kuria_protocol=True,
                      envvars={"KURIA_TEST_DIR": str(keep)})
    server.top.startService()
    yield until(lambda: server.group.ready)
    assert server.group.ready[0].unix_path is not None
    for _ in range(3):  # the connection is kept and reused
        status, _, body = yield server.get("/app/")
        assert status == 200 and json.loads(body)["port_env"] is None


def app_connections_congestion(server: Embedded) -> list[bytes]:
    """The congestion control of each idle connection the resource keeps to the app processes."""
    pool = server.resource._connections
    if pool is None:
        return []
    return [protocol.transport.socket.getsockopt(socket.IPPROTO_TCP, TCP_CONGESTION, 16).rstrip(b"\0")
            for protocols in pool._connections.values() for protocol in protocols]


@pytest.mark.parametrize("reno", [True, False])
@pytest_twisted.inlineCallbacks
def test_connections_to_the_apps_use_reno_unless_turned_off(embedded: Callable[..., Embedded], reno: bool) -> Any:
    with open("/proc/sys/net/ipv4/tcp_congestion_control", "rb") as f:
        system = f.read().strip()
    server = embedded(loopback_reno=reno)
    server.top.startService()
    yield until(lambda: server.group.ready)
    status, _, _ = yield server.get("/app/echo", method=b"POST")
    assert status == 200
    yield until(lambda: app_connections_congestion(server), what="the connection back in the resource's pool")
    assert set(app_connections_congestion(server)) == {b"reno" if reno else system}

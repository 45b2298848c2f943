"""The relay end to end: real apps behind ``twistd -n passenger``, checked on the wire.

Most tests share one echo-app server (module scope); tests that need another app,
or that kill a process, start their own.  Requests are written with raw sockets
(or http.client) so framing, header sets and connection reuse can be checked exactly.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.integration.conftest import (
    APP_PYTHON,
    APPS,
    Server,
    echo_app_args,
    fetch,
    pid_alive,
    start_server,
    wait_for,
)
from tests.integration.test_response_buffering import lines

MiB = 1024 * 1024
#: How much the server's resident memory may grow while a large body passes through.
RSS_GROWTH_LIMIT = 20 * MiB

# --------------------------------------------------------------------------------------
# A small, strict HTTP/1.x client over one socket.
# --------------------------------------------------------------------------------------


@dataclass
class Response:
    version: str
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    #: How the body was framed on the wire: "none", "length", "chunked" or "close".
    framing: str = "none"

    def all(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self.headers if k.lower() == name]

    def get(self, name: str) -> str | None:
        values = self.all(name)
        assert len(values) <= 1, f"{name} appears {len(values)} times: {self.headers}"
        return values[0] if values else None

    def names(self) -> set[str]:
        return {k.lower() for k, _ in self.headers}

    def connection_tokens(self) -> set[str]:
        return {t.strip().lower() for v in self.all("connection") for t in v.split(",") if t.strip()}

    def json(self) -> Any:
        return json.loads(self.body)


class Client:
    """One client connection; reads responses strictly, so stray bytes break the next parse."""

    def __init__(self, port: int, timeout: float = 10.0, rcvbuf: int | None = None) -> None:
        self.sock = socket.socket()
        if rcvbuf is not None:  # before connecting, so the window is small from the start
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        self.buf = bytearray()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        data = self.sock.recv(256 * 1024)
        if not data:
            return False
        self.buf += data
        return True

    def _read_until(self, sep: bytes) -> bytes:
        while True:
            i = self.buf.find(sep)
            if i >= 0:
                out = bytes(self.buf[:i])
                del self.buf[: i + len(sep)]
                return out
            if not self._fill():
                raise EOFError(f"connection closed while waiting for {sep!r}; have {bytes(self.buf[:200])!r}")

    def _read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill():
                raise EOFError(f"connection closed after {len(self.buf)} of {n} bytes")
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def _read_to_eof(self) -> bytes:
        while self._fill():
            pass
        out = bytes(self.buf)
        self.buf.clear()
        return out

    def read_head(self) -> Response:
        head = self._read_until(b"\r\n\r\n").decode("latin-1")
        status_line, *lines = head.split("\r\n")
        version, status, *reason = status_line.split(" ", 2)
        assert version in ("HTTP/1.1", "HTTP/1.0"), f"bad status line {status_line!r}"
        headers = []
        for line in lines:
            name, sep, value = line.partition(":")
            assert sep and name and name == name.strip(), f"bad header line {line!r}"
            headers.append((name, value.strip()))
        return Response(version, int(status), reason[0] if reason else "", headers)

    def read_response(self, method: str = "GET", interim: list[Response] | None = None) -> Response:
        """The next final response; 1xx responses go to ``interim`` (or fail if not expected)."""
        while True:
            response = self.read_head()
            if 100 <= response.status < 200:
                assert interim is not None, f"unexpected interim response {response}"
                interim.append(response)
                continue
            break
        te = response.all("transfer-encoding")
        length = response.all("content-length")
        if method == "HEAD" or response.status in (204, 304):
            response.framing = "none"
        elif te:
            assert [v.lower() for v in te] == ["chunked"], f"unexpected Transfer-Encoding {te}"
            assert not length, f"both Transfer-Encoding and Content-Length: {response.headers}"
            response.framing = "chunked"
            response.body = self._read_chunked()
        elif length:
            assert len(set(length)) == 1, f"conflicting Content-Length {length}"
            response.framing = "length"
            response.body = self._read_exact(int(length[0]))
        else:
            response.framing = "close"
            response.body = self._read_to_eof()
        return response

    def _read_chunked(self) -> bytes:
        parts: list[bytes] = []
        while True:
            size_line = self._read_until(b"\r\n")
            size = int(size_line.split(b";")[0].strip(), 16)
            if size == 0:
                while self._read_until(b"\r\n"):  # trailers up to the empty line
                    pass
                return b"".join(parts)
            parts.append(self._read_exact(size))
            assert self._read_exact(2) == b"\r\n", "chunk not followed by CRLF"

    def request(self, method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b"",
                version: str = "HTTP/1.1") -> Response:
        self.send(build_request(method, path, headers, body, version))
        return self.read_response(method)

    def closed_by_peer(self) -> bool:
        """True if the server has closed the connection (reads EOF with nothing pending)."""
        if self.buf:
            return False
        try:
            return self.sock.recv(1) == b""
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False


def build_request(method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b"",
                  version: str = "HTTP/1.1") -> bytes:
    headers = {"Host": "proxy.test", **(headers or {})}
    if body and not any(k.lower() in ("content-length", "transfer-encoding") for k in headers):
        headers["Content-Length"] = str(len(body))
    head = f"{method} {path} {version}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    return head.encode("latin-1") + body


def echo_headers(response: Response) -> list[tuple[str, str]]:
    assert response.status == 200, response
    return [(k, v) for k, v in response.json()["headers"]]


def values(headers: list[tuple[str, str]], name: str) -> list[str]:
    return [v for k, v in headers if k.lower() == name.lower()]


# --------------------------------------------------------------------------------------
# Server memory.
# --------------------------------------------------------------------------------------


def rss_bytes(pid: int, field_name: str = "VmRSS") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field_name} in /proc/{pid}/status")


class RssWatch:
    """The peak resident memory of ``pid`` while a block runs, from samples and VmHWM."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.before = 0
        self.after = 0
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._hwm_reset = False

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss_bytes(self.pid))

    def __enter__(self) -> RssWatch:
        try:  # reset the kernel's peak-RSS counter so VmHWM covers just this block
            with open(f"/proc/{self.pid}/clear_refs", "w") as f:
                f.write("5")
            self._hwm_reset = True
        except OSError:
            pass
        self.before = self.peak = rss_bytes(self.pid)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.after = rss_bytes(self.pid)
        self.peak = max(self.peak, self.after)
        if self._hwm_reset:
            self.peak = max(self.peak, rss_bytes(self.pid, "VmHWM"))

    @property
    def growth(self) -> int:
        return self.peak - self.before

    def __str__(self) -> str:
        return f"VmRSS before {self.before / MiB:.1f} MiB, after {self.after / MiB:.1f} MiB, peak {self.peak / MiB:.1f} MiB"


def watch_rss_for(pid: int, seconds: float, limit: int, baseline: int) -> None:
    """Watch the server's RSS for a while (a client that does not read yet); fail early on growth."""
    deadline = time.monotonic() + seconds

    def done() -> bool:
        grown = rss_bytes(pid) - baseline
        assert grown < limit, f"server RSS grew by {grown / MiB:.1f} MiB while the client was not reading"
        return time.monotonic() >= deadline

    wait_for(done, seconds + 5, interval=0.01, what="the slow-reader window to pass")


# --------------------------------------------------------------------------------------
# Servers.
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def echo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One echo-app server (one process) for the tests that do not disturb it.

    A first GET leaves a kept-alive app connection in the pool, so the tests here do
    not depend on which of them happens to run first: bodies sent before a *new* app
    connection is up are covered on their own, by
    test_body_sent_before_the_app_connection_is_up_arrives_intact.
    """
    server = start_server(tmp_path_factory.mktemp("echo"),
                          echo_app_args("--min-instances", "1", "--max-pool-size", "1"))
    try:
        with Client(server.port) as client:
            assert client.request("GET", "/").status == 200
    except BaseException:
        server.kill()
        raise
    yield server
    server.kill()


# --------------------------------------------------------------------------------------
# 1. Basic GET through apps in several languages.
# --------------------------------------------------------------------------------------


def test_get_through_python_app(echo: Server) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", echo.port, timeout=10)
    try:
        conn.request("GET", "/")
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    assert response.status == 200
    assert body.startswith(b"Hello from ")
    assert int(body.split()[-1]) in echo.app_pids()


def test_get_through_node_app(serve: Callable[..., Server]) -> None:
    node = shutil.which("node")
    if node is None:
        if os.environ.get("PASSENGER_REQUIRE_NODE"):  # set by .ci/run, which installs Node.js
            pytest.fail("node is not on PATH, and .ci/run requires the Node.js tests to run")
        pytest.skip("node is not on PATH: cannot run the Node.js app")
    server = serve(["--app-root", str(APPS), "--app-start-command", f"{node} node_app.js"])
    with Client(server.port) as client:
        hello = client.request("GET", "/")
        stream = client.request("GET", "/stream?n=5")
    assert hello.status == 200
    assert hello.body.startswith(b"Hello from node ")
    assert int(hello.body.split()[-1]) in server.app_pids()
    assert stream.status == 200
    assert stream.body == b"".join(b"piece-%d\n" % i for i in range(5))


def test_get_through_shell_started_app(serve: Callable[..., Server]) -> None:
    server = serve(["--app-root", str(APPS), "--app-start-command", "./start.sh",
                         "--envvar", f"PYTHON={APP_PYTHON}"])
    expected = (APPS / "static" / "hello.txt").read_bytes()
    with Client(server.port) as client:
        response = client.request("GET", "/hello.txt")
    assert response.status == 200
    assert response.body == expected
    assert response.get("content-length") == str(len(expected))
    # A second request on a new connection (http.server is HTTP/1.0 and closes each time).
    with Client(server.port) as client:
        missing = client.request("GET", "/no-such-file")
    assert missing.status == 404


# --------------------------------------------------------------------------------------
# 2. Header rules.
# --------------------------------------------------------------------------------------


def test_x_forwarded_for_is_the_peer_and_client_value_dropped(echo: Server) -> None:
    with Client(echo.port) as client:
        headers = echo_headers(client.request("GET", "/echo", {"X-Forwarded-For": "6.6.6.6"}))
    assert values(headers, "X-Forwarded-For") == ["127.0.0.1"], headers


def test_x_forwarded_proto_and_host(echo: Server) -> None:
    with Client(echo.port) as client:
        headers = echo_headers(client.request("GET", "/echo", {
            "Host": "example.test:8080", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil.test"}))
    assert values(headers, "X-Forwarded-Proto") == ["http"], headers
    assert values(headers, "X-Forwarded-Host") == ["example.test:8080"], headers


def test_x_forwarded_port_is_the_listening_port_on_every_connection(echo: Server) -> None:
    for _ in range(2):  # the second connection is told the port the first found
        with Client(echo.port) as client:
            headers = echo_headers(client.request("GET", "/echo"))
        assert values(headers, "X-Forwarded-Port") == [str(echo.port)], headers


def test_an_http10_request_without_host_gets_the_address_it_came_to(echo: Server) -> None:
    with Client(echo.port) as client:
        client.send(b"GET /echo HTTP/1.0\r\n\r\n")
        headers = echo_headers(client.read_response("GET"))
    assert values(headers, "Host") == [f"127.0.0.1:{echo.port}"], headers


def test_host_is_preserved(echo: Server) -> None:
    with Client(echo.port) as client:
        headers = echo_headers(client.request("GET", "/echo", {"Host": "Some.Example.test:1234"}))
    assert values(headers, "Host") == ["Some.Example.test:1234"], headers


def test_request_hop_by_hop_headers_do_not_reach_the_app(echo: Server) -> None:
    with Client(echo.port) as client:
        response = client.request("GET", "/echo", {
            "Keep-Alive": "timeout=5",
            "TE": "trailers",
            "Trailer": "X-Checksum",
            "Proxy-Connection": "keep-alive",
            "Upgrade": "websocket",
            "X-Custom": "kept",
        })
    headers = echo_headers(response)
    names = {k.lower() for k, _ in headers}
    for hop in ("keep-alive", "te", "trailer", "proxy-connection", "upgrade"):
        assert hop not in names, f"{hop} reached the app: {headers}"
    assert values(headers, "X-Custom") == ["kept"], headers


def test_headers_named_in_connection_do_not_reach_the_app(echo: Server) -> None:
    with Client(echo.port) as client:
        response = client.request("GET", "/echo", {
            "Connection": "keep-alive, X-Secret", "X-Secret": "1", "X-Custom": "kept"})
        # The connection is still usable: keep-alive was honoured despite the extra token.
        again = client.request("GET", "/pid")
    headers = echo_headers(response)
    assert values(headers, "X-Secret") == [], headers
    for value in values(headers, "Connection"):
        assert "x-secret" not in value.lower(), headers
    assert values(headers, "X-Custom") == ["kept"], headers
    assert again.status == 200


def test_response_hop_by_hop_headers_do_not_reach_the_client(serve: Callable[..., Server]) -> None:
    server = serve(["--app-root", str(APPS), "--app-start-command", f"{APP_PYTHON} hop_app.py"])
    with Client(server.port) as client:
        response = client.request("GET", "/hop")
    assert response.status == 200
    assert response.body == b"ok"
    names = response.names()
    for hop in ("keep-alive", "proxy-connection", "trailer", "upgrade", "x-hop-secret"):
        assert hop not in names, f"{hop} reached the client: {response.headers}"
    assert "x-hop-secret" not in response.connection_tokens(), response.headers
    assert response.get("X-Kept") == "yes"


def test_a_body_longer_than_its_content_length_is_cut_at_the_length(serve: Callable[..., Server]) -> None:
    server = serve(["--app-root", str(APPS), "--app-start-command", f"{APP_PYTHON} hop_app.py"])
    with Client(server.port) as client:
        response = client.request("GET", "/overlong")
        assert (response.status, response.body) == (200, b"x" * 100000)
        again = client.request("GET", "/hop")  # the client's connection goes on, framed right
    assert (again.status, again.body) == (200, b"ok")


def test_a_large_body_the_app_ends_with_close_arrives_whole(serve: Callable[..., Server]) -> None:
    server = serve(["--app-root", str(APPS), "--app-start-command", f"{APP_PYTHON} hop_app.py"])
    with Client(server.port) as client:
        for _ in range(3):  # each time on a new app connection: the app closed the last one
            response = client.request("GET", "/bigclose")
            assert (response.status, response.body) == (200, b"z" * (1 << 20))
            assert response.get("Connection") is None, "the client's connection stays open"


# --------------------------------------------------------------------------------------
# 3. Request bodies.
# --------------------------------------------------------------------------------------


def test_content_length_body_arrives_intact(echo: Server) -> None:
    body = os.urandom(3 * MiB + 17)
    conn = http.client.HTTPConnection("127.0.0.1", echo.port, timeout=20)
    try:
        conn.request("POST", "/echo", body=body, headers={"Content-Type": "application/octet-stream"})
        response = conn.getresponse()
        info = json.loads(response.read())
    finally:
        conn.close()
    assert response.status == 200
    assert info["method"] == "POST"
    assert info["body_length"] == len(body)
    assert info["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert values([tuple(h) for h in info["headers"]], "Content-Length") == [str(len(body))]


def test_chunked_request_body_arrives_intact(echo: Server) -> None:
    pieces = [b"hello ", os.urandom(70000), b"", b"x", os.urandom(1234)]
    pieces = [p for p in pieces if p]
    wire = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces[:-1])
    wire += b"%x;name=value\r\n%s\r\n" % (len(pieces[-1]), pieces[-1])  # a chunk extension too
    wire += b"0\r\n\r\n"
    body = b"".join(pieces)
    with Client(echo.port) as client:
        client.send(build_request("POST", "/echo", {"Transfer-Encoding": "chunked"}) + wire)
        response = client.read_response()
        # The connection goes on after a chunked request.
        after = client.request("GET", "/pid")
    info = response.json()
    assert response.status == 200
    assert info["body_length"] == len(body)
    assert info["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert after.status == 200


def test_large_upload_streams_without_buffering(echo: Server) -> None:
    assert echo.proc is not None
    size = 50 * MiB
    block = os.urandom(MiB)
    digest = hashlib.sha256()
    for _ in range(size // MiB):
        digest.update(block)
    with Client(echo.port, timeout=30) as client, RssWatch(echo.proc.pid) as rss:
        client.send(build_request("POST", "/echo", {"Content-Length": str(size)}))
        for _ in range(size // MiB):
            client.send(block)
        response = client.read_response()
    info = response.json()
    assert response.status == 200
    assert info["body_length"] == size
    assert info["body_sha256"] == digest.hexdigest()
    assert rss.growth < RSS_GROWTH_LIMIT, f"server RSS grew by {rss.growth / MiB:.1f} MiB for a 50 MiB upload ({rss})"


# --------------------------------------------------------------------------------------
# 4. Response bodies.
# --------------------------------------------------------------------------------------


def test_large_download_streams_without_buffering(serve: Callable[..., Server]) -> None:
    # Its own server: a back-pressured response can leave state behind (see
    # test_app_connection_is_reusable_after_a_back_pressured_response).
    server = serve(echo_app_args("--max-pool-size", "1"))
    assert server.proc is not None
    size = 100 * MiB
    client = Client(server.port, timeout=30, rcvbuf=64 * 1024)  # keep the kernel from soaking it up
    sock = client.sock
    try:
        with RssWatch(server.proc.pid) as rss:
            client.send(build_request("GET", f"/bytes?n={size}"))
            # A slow client first: the relay must stop reading from the app, not buffer.
            watch_rss_for(server.proc.pid, 0.5, RSS_GROWTH_LIMIT, rss.before)
            head = client.read_head()
            assert head.status == 200
            assert head.get("content-length") == str(size)
            received = len(client.buf)
            bad = len(client.buf) - client.buf.count(b"x")
            client.buf.clear()
            chunk = bytearray(1024 * 1024)
            view = memoryview(chunk)
            while received < size:
                n = sock.recv_into(view)
                if n == 0:
                    break
                received += n
                bad += n - chunk.count(b"x", 0, n)
    finally:
        sock.close()
    assert received == size
    assert bad == 0, f"{bad} bytes of the body were not 'x'"
    assert rss.growth < RSS_GROWTH_LIMIT, f"server RSS grew by {rss.growth / MiB:.1f} MiB for a 100 MiB download ({rss})"


def test_body_sent_before_the_app_connection_is_up_arrives_intact(serve: Callable[..., Server]) -> None:
    """The first request to a process opens a new app connection; its body (well over the
    64 KiB the relay holds while waiting) is already on the way in one write."""
    server = serve(echo_app_args("--max-pool-size", "1"))
    body = os.urandom(MiB)
    with Client(server.port, timeout=10) as client:
        client.send(build_request("POST", "/echo", body=body))
        try:
            response = client.read_response()
        except TimeoutError:
            pytest.fail("no answer within 10 s to a POST whose 1 MiB body came in one write, "
                        "as the first request to a fresh process")
    assert response.status == 200
    info = response.json()
    assert info["body_length"] == len(body)
    assert info["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_keep_alive_after_a_large_upload(echo: Server) -> None:
    """A body big enough to fill the app connection's buffer makes the relay stop reading
    the client; once the body is through, the client connection must be read again.

    The relay has to be paused just as the body's last piece goes out, which happens in
    a good share of uploads but not in every one: several uploads make missing it unlikely.
    """
    size = 8 * MiB
    block = os.urandom(MiB)
    for attempt in range(1, 21):
        with Client(echo.port, timeout=10) as client:
            client.send(build_request("POST", "/echo", {"Content-Length": str(size)}))
            for _ in range(size // MiB):
                client.send(block)
            upload = client.read_response()
            assert upload.status == 200
            assert upload.json()["body_length"] == size
            client.sock.settimeout(5)
            try:
                after = client.request("GET", "/pid")
            except TimeoutError:
                pytest.fail(f"upload {attempt}: no answer within 5 s to a GET sent on the same "
                            f"keep-alive connection after an {size // MiB} MiB upload")
            assert after.status == 200
            assert after.body.isdigit()


def test_app_connection_is_reusable_after_a_back_pressured_response(serve: Callable[..., Server]) -> None:
    """A slow client makes the relay pause reading from the app; when that response is
    done, the app connection goes back to the pool and must serve the next request.

    The relay has to be paused just as the response's last piece comes, which happens in
    a good share of slow downloads but not in every one: several make missing it unlikely.
    """
    server = serve(echo_app_args("--max-pool-size", "1"))  # one process: its idle connection is reused
    size = 8 * MiB  # more than the kernel buffers, so the relay has to hold back
    for attempt in range(1, 21):
        with Client(server.port, timeout=10, rcvbuf=4096) as slow:
            slow.send(build_request("GET", f"/bytes?n={size}"))
            head = slow.read_head()
            assert head.status == 200
            received = len(slow.buf)
            while received < size:  # small reads: the relay's writes to this client back up
                piece = slow.sock.recv(2048)
                assert piece, f"connection closed after {received} of {size} bytes"
                received += len(piece)
            assert received == size
        with Client(server.port, timeout=5) as client:
            try:
                after = client.request("GET", "/pid")
            except TimeoutError:
                pytest.fail(f"download {attempt}: no answer within 5 s to a GET on a new connection "
                            f"after a slow client's {size // MiB} MiB download")
        assert after.status == 200
        assert int(after.body) in server.app_pids()


def test_chunked_app_response_is_dechunked_by_http_client(echo: Server) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", echo.port, timeout=10)
    try:
        conn.request("GET", "/chunked?n=40")
        response = conn.getresponse()
        body = response.read()
        # And the connection is reusable afterwards.
        conn.request("GET", "/pid")
        second = conn.getresponse()
        second_body = second.read()
    finally:
        conn.close()
    assert response.status == 200
    assert body == b"".join(b"chunk-%d\n" % i for i in range(40))
    assert second.status == 200
    assert second_body.isdigit()


def test_close_delimited_response_is_rechunked_for_http11(echo: Server) -> None:
    with Client(echo.port) as client:
        response = client.request("GET", "/close")
        # Re-chunked, so the client connection need not close: it serves another request.
        after = client.request("GET", "/pid")
    assert response.status == 200
    assert response.body == b"until the end"
    assert response.framing == "chunked", response.headers
    assert after.status == 200
    assert after.body.isdigit()


def test_close_delimited_response_for_http10_client(echo: Server) -> None:
    with Client(echo.port) as client:
        response = client.request("GET", "/close", version="HTTP/1.0")
        assert client.closed_by_peer(), "the server kept an HTTP/1.0 close-delimited response open"
    assert response.status == 200
    assert response.body == b"until the end"
    assert response.framing in ("close", "length"), response.headers
    assert response.all("transfer-encoding") == [], "chunked sent to an HTTP/1.0 client"


# --------------------------------------------------------------------------------------
# 5. HEAD, 204 and 304.
# --------------------------------------------------------------------------------------


def test_head_has_no_body_and_connection_stays_usable(echo: Server) -> None:
    with Client(echo.port) as client:
        client.send(build_request("HEAD", "/pid"))
        head = client.read_response("HEAD")
        get = client.request("GET", "/pid")
    assert head.status == 200
    pid = head.get("X-Pid")
    assert pid is not None and pid.isdigit()
    assert head.get("content-length") == str(len(pid)), head.headers  # what a GET would carry
    assert head.all("transfer-encoding") == []
    assert get.status == 200
    assert get.body.isdigit()


@pytest.mark.parametrize("code", [204, 304])
def test_no_body_status_and_connection_stays_usable(echo: Server, code: int) -> None:
    with Client(echo.port) as client:
        first = client.request("GET", f"/status?code={code}")
        second = client.request("GET", "/pid")
    assert first.status == code
    assert first.all("transfer-encoding") == [], first.headers
    assert first.get("content-length") in (None, "0"), first.headers
    assert second.status == 200
    assert second.body.isdigit()


# --------------------------------------------------------------------------------------
# 6. Keep-alive and pipelining.
# --------------------------------------------------------------------------------------


def test_keep_alive_serves_several_requests_on_one_connection(echo: Server) -> None:
    with Client(echo.port) as client:
        responses = [
            client.request("GET", "/pid"),
            client.request("POST", "/echo", body=b"some body"),
            client.request("GET", "/chunked?n=2"),
            client.request("GET", "/status?code=204"),
            client.request("GET", "/"),
        ]
        for response in responses:
            assert "close" not in response.connection_tokens(), response.headers
        assert not client.buf
    assert [r.status for r in responses] == [200, 200, 200, 204, 200]
    assert responses[0].body.isdigit()
    assert responses[1].json()["body_sha256"] == hashlib.sha256(b"some body").hexdigest()
    assert responses[2].body == b"chunk-0\nchunk-1\n"
    assert responses[4].body.startswith(b"Hello from ")


def test_pipelined_requests_come_back_complete_and_in_order(echo: Server) -> None:
    body = b"third request body"
    with Client(echo.port) as client:
        client.send(build_request("GET", "/sleep?ms=200")
                    + build_request("GET", "/pid")
                    + build_request("POST", "/echo?n=3", body=body))
        first = client.read_response()
        second = client.read_response()
        third = client.read_response()
        after = client.request("GET", "/status?code=200")
    assert (first.status, first.body) == (200, b"slept")
    assert second.status == 200 and second.body.isdigit()
    assert second.body.decode() == second.get("X-Pid")
    info = third.json()
    assert third.status == 200
    assert info["path"] == "/echo?n=3"
    assert info["body_length"] == len(body)
    assert info["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert after.status == 200


# --------------------------------------------------------------------------------------
# 7. An app that dies mid-request.
# --------------------------------------------------------------------------------------


def test_app_dying_mid_request_gives_502_and_service_goes_on(serve: Callable[..., Server]) -> None:
    server = serve(echo_app_args("--min-instances", "1", "--max-pool-size", "1"))
    [first_pid] = server.app_pids()
    with Client(server.port) as client:
        # A request first, so the app connection that /exit dies on is a kept-alive one.
        assert int(client.request("GET", "/pid").body) == first_pid
        response = client.request("GET", "/exit")
    assert response.status == 502
    assert (response.get("content-type") or "").startswith("text/html"), response.headers
    assert b"502" in response.body and b"Bad Gateway" in response.body
    wait_for(lambda: not pid_alive(first_pid), 5, what=f"process {first_pid} to be gone")
    server.wait_ready(2)  # a replacement, since min-instances is 1
    with Client(server.port) as client:
        after = client.request("GET", "/pid")
    assert after.status == 200
    # Served by the one replacement: the request that killed a process was not sent again.
    assert server.app_pids() == [first_pid, int(after.body)]


# --------------------------------------------------------------------------------------
# 8. Expect: 100-continue.
# --------------------------------------------------------------------------------------


def test_expect_100_continue(echo: Server) -> None:
    body = os.urandom(200_000)
    with Client(echo.port) as client:
        client.send(build_request("POST", "/echo", {"Content-Length": str(len(body)), "Expect": "100-continue"}))
        interim = client.read_head()  # the client waits for this before sending the body
        assert interim.status == 100, interim
        client.send(body)
        response = client.read_response()
    assert response.status == 200
    info = response.json()
    assert info["body_length"] == len(body)
    assert info["body_sha256"] == hashlib.sha256(body).hexdigest()


# --------------------------------------------------------------------------------------
# 9. A response the app ends early: what it sent arrives, then a close the client can tell.
# --------------------------------------------------------------------------------------


def until_closed(request: bytes, port: int) -> tuple[bytes, bytes, str]:
    """Send ``request`` on a new connection and read until the server ends it: (head, body, "closed" or "reset")."""
    data, how = b"", "closed"
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(request)
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except ConnectionResetError:
            how = "reset"
    head, _, body = data.partition(b"\r\n\r\n")
    return head, body, how


@pytest.fixture(scope="module")
def node_echo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server of one tests/apps/node_echo_app.js process: echo_app's endpoints, Node's framing."""
    server = start_server(tmp_path_factory.mktemp("node-echo"), [
        "--app-root", str(APPS), "--app-start-command", "node node_echo_app.js",
        "--min-instances", "1", "--max-pool-size", "1"])
    yield server
    server.kill()


@pytest.fixture(params=["python", "node"])
def either(request: pytest.FixtureRequest) -> Server:
    """The echo app in Python, then in Node.js (the same endpoints)."""
    server: Server = request.getfixturevalue("echo" if request.param == "python" else "node_echo")
    return server


def chunks(count: int) -> bytes:
    """echo_app's /chunked pieces, each framed as a chunk."""
    return b"".join(b"%x\r\n%s\r\n" % (len(b"chunk-%d\n" % i), b"chunk-%d\n" % i) for i in range(count))


def test_a_length_framed_response_the_app_cuts_arrives_as_sent_then_the_connection_closes(either: Server) -> None:
    head, body, how = until_closed(b"GET /lines?n=20000&cut=3000 HTTP/1.1\r\nHost: t\r\n\r\n", either.port)
    assert head.startswith(b"HTTP/1.1 200 ") and b"content-length: 320000" in head.lower(), head
    assert body == lines(3000), "every byte the app sent, and no more"
    assert how == "closed", "a plain close: the length already tells the client the response is short"
    either.wait_log(r"Process \d+ of \S+ closed the connection in the middle of a response")


def test_a_chunked_response_the_app_cuts_arrives_without_its_last_chunk_then_closes(either: Server) -> None:
    head, body, how = until_closed(b"GET /chunked?n=5&then=cut HTTP/1.1\r\nHost: t\r\n\r\n", either.port)
    assert head.startswith(b"HTTP/1.1 200 ") and b"transfer-encoding: chunked" in head.lower(), head
    assert body == chunks(5), "the chunks the app sent, and no last chunk"
    assert how == "closed"


def test_a_broken_chunk_ends_the_response_after_the_good_ones(either: Server) -> None:
    gate = os.urandom(8).hex()
    with Client(either.port) as client:
        client.send(b"GET /chunked?n=5&then=bad&gate=%s HTTP/1.1\r\nHost: t\r\n\r\n" % gate.encode())
        head = client.read_head()
        assert head.status == 200 and head.get("transfer-encoding") == "chunked", head
        good = client._read_exact(len(chunks(5)))  # the response has reached the client: it has begun
        assert fetch(either.port, f"/release?gate={gate}").status == 200  # now the app sends the broken chunk
        try:
            rest, how = client._read_to_eof(), "closed"
        except ConnectionResetError:
            rest, how = b"", "reset"
    assert good + rest == chunks(5), "the good chunks; nothing of the broken one, and no last chunk"
    assert how == "closed"
    either.wait_log(r"Process \d+ of \S+ sent an invalid response")


def test_an_http10_client_whose_response_the_app_cuts_is_reset(either: Server) -> None:
    """Without a length or chunks, the close ends an HTTP/1.0 body: a plain close would pass the part for whole."""
    head, body, how = until_closed(b"GET /chunked?n=5&then=cut HTTP/1.0\r\n\r\n", either.port)
    assert head.startswith(b"HTTP/1.1 200 ") and b"content-length" not in head.lower(), head
    assert b"".join(b"chunk-%d\n" % i for i in range(5)).startswith(body), body
    assert how == "reset"


def test_max_request_time_ends_a_response_that_began_after_what_was_sent(serve: Callable[..., Server]) -> None:
    server = serve(echo_app_args("--max-request-time", "1"))
    started = time.monotonic()
    head, body, how = until_closed(b"GET /chunked?n=2&then=hang HTTP/1.1\r\nHost: t\r\n\r\n", server.port)
    assert 0.9 < time.monotonic() - started < 10
    assert head.startswith(b"HTTP/1.1 200 "), head
    assert body == chunks(2) and how == "closed", (body, how)
    server.wait_log(r"ran longer than 1(\.0)?s \(max_request_time\)")

"""Many clients at once, each doing something different, against a real server and real apps.

The other integration tests check one behaviour at a time.  Here 24 client
threads, each with its own seeded random choices, mix every way a client can
use a connection for several seconds: keep-alive exchanges of every kind of
body and framing (static files and their ranges too), pipelined requests,
writes split at random places, HTTP/1.0, slow readers, bad requests, upgraded
connections (101), and clients that leave in the middle of a request or of a
response, closing or resetting.  Every answer that a client waits for is
checked byte for byte; afterwards the server must still be up and serving, must
have let every client connection go, must show no busy process in its pool,
and must have logged no traceback.  Eight configurations: the defaults; no
io_uring with busy polling; restarts every half second with recycled processes
and buffered uploads; TLS; a known concurrency, where requests queue; apps on
Unix sockets (the Kuria protocol); Node.js apps; and a second app beside the
first whose processes the clients make exit and whose settings reloads change,
which the first must not notice.

A failure names the client and the exchange, and ``STRESS_SEED=<seed>``
replays the same choices (not the same timing).  ``STRESS_SECONDS`` makes the
run longer (default 3 s per configuration).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import socket
import ssl
import struct
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trustme

from tests.integration.conftest import (
    APP_PYTHON,
    APPS,
    ECHO_GROUP,
    TCP_CLOSE_WAIT,
    TCP_ESTABLISHED,
    Server,
    echo_app_args,
    tcp_sockets,
    world_dir,
)
from tests.integration.test_admin_api import Admin, unix_admin
from tests.integration.test_proxy import Client, Response
from tests.integration.test_response_buffering import lines
from tests.polling import wait_for

SECONDS = float(os.environ.get("STRESS_SECONDS", "3"))
SEED = int(os.environ.get("STRESS_SEED", str(random.SystemRandom().randrange(1 << 30))))
CLIENTS = 24
#: How long a client waits for any one read or write before it calls the exchange stuck.
STUCK_S = 15.0
MiB = 1024 * 1024


class Stuck(AssertionError):
    pass


class Connection(Client):
    """test_proxy's Client and its strict response reader, over TLS if asked, with the ways a stress client
    writes and leaves: writes split at random places, a close by RST, and "has the server closed?".

    A connection the server closes too early raises EOFError (from Client's reads); one where nothing comes
    for STUCK_S raises Stuck."""

    def __init__(self, port: int, tls: ssl.SSLContext | None = None, receive_buffer: int | None = None) -> None:
        # Client sets a receive buffer before connecting: shrunk later, below a window already offered, the
        # kernel drops what arrives over it and stalls in zero-window probes (seconds).
        super().__init__(port, STUCK_S, receive_buffer)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls is not None:
            self.sock = tls.wrap_socket(self.sock, server_hostname="localhost")

    def send(self, data: bytes, rng: random.Random | None = None) -> None:
        """Send ``data``, in one write or (with ``rng``) in up to four pieces cut at random places."""
        if rng is None or len(data) < 2 or rng.random() < 0.5:
            self.sock.sendall(data)
            return
        cuts = sorted(rng.sample(range(1, len(data)), min(3, len(data) - 1)))
        start = 0
        for cut in [*cuts, len(data)]:
            self.sock.sendall(data[start:cut])
            start = cut
            if rng.random() < 0.3:
                time.sleep(0.001)  # the client's own pace: the server reads the pieces apart

    def _fill(self) -> bool:
        try:
            return super()._fill()
        except TimeoutError as e:
            raise Stuck(f"no byte for {STUCK_S}s") from e

    def closed_by_server(self) -> bool:
        """True if the server closes this connection (nothing more arrives)."""
        return not self.buf and not self._fill()

    def close(self, reset: bool = False) -> None:
        if reset:  # an RST instead of a FIN
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


def request(method: str, path: str, body: bytes | None = None, chunked: bool = False, close: bool = False,
            version: str = "1.1", headers: list[tuple[str, str]] = []) -> bytes:  # noqa: B006 (never changed)
    head = [f"{method} {path} HTTP/{version}"]
    if version == "1.1":
        head.append("Host: stress.test")
    head += [f"{name}: {value}" for name, value in headers]
    if close:
        head.append("Connection: close")
    if body is not None and chunked:
        head.append("Transfer-Encoding: chunked")
        data = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 7000]), body[i:i + 7000])
                        for i in range(0, len(body), 7000)) + b"0\r\n\r\n"
    elif body is not None:
        head.append(f"Content-Length: {len(body)}")
        data = body
    else:
        data = b""
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + data


# --------------------------------------------------------------------------------------
# Exchanges on a kept-alive connection: each sends one request and checks its answer.
# --------------------------------------------------------------------------------------

Check = Callable[[Response], None]
#: Opens a client connection to the server under test (plain or TLS); takes Connection's receive_buffer.
Dial = Callable[..., Connection]


def _hello(rng: random.Random) -> tuple[bytes, str, Check]:
    def check(r: Response) -> None:
        assert r.status == 200 and r.body.startswith(b"Hello from "), r
    return request("GET", "/"), "GET", check


#: What a header value holds here (printable ASCII, no spaces at its edges), and a query's pieces.
VALUE_CHARACTERS = "".join(chr(c) for c in range(0x21, 0x7F))
QUERY_PIECES = ["a", "b", "Z", "0", "9", "-", ".", "_", "~", "%2F", "%20", "=", "&"]


def _echo(rng: random.Random) -> tuple[bytes, str, Check]:
    """An upload with headers of its own and a query: the app must see all of them, as sent."""
    size = rng.choice([0, 1, 100, 5000, 70_000, 300_000])
    body = rng.randbytes(size)
    chunked = rng.random() < 0.4
    headers = [(f"X-Stress-{i}", "".join(rng.choices(VALUE_CHARACTERS, k=rng.randint(1, 300))))
               for i in range(rng.randint(0, 20))]
    path = "/echo?" + "".join(rng.choices(QUERY_PIECES, k=rng.randint(0, 100)))

    def check(r: Response) -> None:
        assert r.status == 200, r
        info = json.loads(r.body)
        assert (info["method"], info["path"], info["body_length"], info["body_sha256"]) == \
            ("POST", path, size, hashlib.sha256(body).hexdigest()), (info, chunked)
        seen = [(name.lower(), value) for name, value in info["headers"]]
        missing = [(name, value) for name, value in headers if (name.lower(), value) not in seen]
        assert not missing, (missing, seen)
    return request("POST", path, body, chunked=chunked, headers=headers), "POST", check


def _bytes(rng: random.Random) -> tuple[bytes, str, Check]:
    size = rng.choice([0, 10, 65536, 200_000, 2 * MiB])

    def check(r: Response) -> None:
        assert r.status == 200 and len(r.body) == size and r.body == b"x" * size, (r.status, len(r.body), size)
    return request("GET", f"/bytes?n={size}"), "GET", check


def _chunked(rng: random.Random) -> tuple[bytes, str, Check]:
    count = rng.choice([0, 1, 50])

    def check(r: Response) -> None:
        assert r.status == 200 and r.body == b"".join(b"chunk-%d\n" % i for i in range(count)), r
    return request("GET", f"/chunked?n={count}"), "GET", check


def _head(rng: random.Random) -> tuple[bytes, str, Check]:
    def check(r: Response) -> None:
        assert r.status == 200 and r.body == b"" and int(r.get("content-length") or 0) > 0, r
    return request("HEAD", "/echo"), "HEAD", check


def _status(rng: random.Random) -> tuple[bytes, str, Check]:
    code = rng.choice([201, 204, 404, 500, 503])

    def check(r: Response) -> None:
        assert r.status == code and r.body == b"", (code, r)
    return request("GET", f"/status?code={code}"), "GET", check


def _sleep(rng: random.Random) -> tuple[bytes, str, Check]:
    def check(r: Response) -> None:
        assert r.status == 200 and r.body == b"slept", r
    return request("GET", f"/sleep?ms={rng.choice([1, 20, 100])}"), "GET", check


#: The files of the server's --static-files-dir (written once, by the fixture), and what each holds.
STATIC_FILES = {f"f{size}.bin": random.Random(size).randbytes(size) for size in (0, 1000, 300_000, 3 * MiB)}


def _static(rng: random.Random) -> tuple[bytes, str, Check]:
    """A file the server serves itself: whole, or one byte range of it, or its head."""
    name = rng.choice(list(STATIC_FILES))
    content = STATIC_FILES[name]
    method = "HEAD" if rng.random() < 0.1 else "GET"
    headers = []
    if content and rng.random() < 0.4:
        first = rng.randrange(len(content))
        last = rng.randrange(first, len(content))
        headers = [("Range", f"bytes={first}-{last}")]

    def check(r: Response) -> None:
        if headers:
            assert r.status == 206 and r.get("content-range") == f"bytes {first}-{last}/{len(content)}", r
            wanted = content[first:last + 1]
        else:
            assert r.status == 200 and int(r.get("content-length") or 0) == len(content), r
            wanted = content
        assert r.body == (b"" if method == "HEAD" else wanted), (name, headers, len(r.body))
    return request(method, f"/{name}", headers=headers), method, check


EXCHANGES = [_hello, _echo, _bytes, _chunked, _head, _status, _sleep, _static]


# --------------------------------------------------------------------------------------
# What a client does with one connection.
# --------------------------------------------------------------------------------------

def keep_alive(dial: Dial, rng: random.Random) -> None:
    """Up to six exchanges one after another; the last may ask to close, and then the server must."""
    conn = dial()
    try:
        count = rng.randint(1, 6)
        for i in range(count):
            data, method, check = rng.choice(EXCHANGES)(rng)
            last_closes = i == count - 1 and rng.random() < 0.3
            if last_closes:
                data = data.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)
            conn.send(data, rng)
            check(conn.read_response(method))
            if last_closes:
                assert conn.closed_by_server(), "the server kept a Connection: close connection open"
    finally:
        conn.close(reset=rng.random() < 0.2)


def pipelined(dial: Dial, rng: random.Random) -> None:
    """Two to six requests in one write (bodies small enough for the pipeline); answers in order."""
    conn = dial()
    try:
        exchanges = [rng.choice([_hello, _chunked, _head, _status, _small_echo, _static])(rng) for _ in range(rng.randint(2, 6))]
        conn.send(b"".join(data for data, _, _ in exchanges), rng)
        for _, method, check in exchanges:
            check(conn.read_response(method))
    finally:
        conn.close()


def _small_echo(rng: random.Random) -> tuple[bytes, str, Check]:
    body = rng.randbytes(rng.randint(0, 2000))

    def check(r: Response) -> None:
        assert r.status == 200 and json.loads(r.body)["body_sha256"] == hashlib.sha256(body).hexdigest(), r
    return request("POST", "/echo", body), "POST", check


def leaves_mid_request(dial: Dial, rng: random.Random) -> None:
    """Sends part of a head, or a head and part of its body, then closes or resets."""
    conn = dial()
    whole = request("POST", "/echo", rng.randbytes(100_000), chunked=rng.random() < 0.5)
    conn.send(whole[:rng.randint(1, len(whole) - 1)])
    conn.close(reset=rng.random() < 0.5)


def leaves_mid_response(dial: Dial, rng: random.Random) -> None:
    """Asks for 3 or 4 MiB (from the app, or a static file) and leaves after reading some of it (or none)."""
    conn = dial()
    conn.send(request("GET", rng.choice([f"/bytes?n={4 * MiB}", f"/f{3 * MiB}.bin"])))
    want = rng.choice([0, 100, 200_000, MiB])
    while len(conn.buf) < want and conn._fill():
        pass
    conn.close(reset=rng.random() < 0.5)


def slow_reader(dial: Dial, rng: random.Random) -> None:
    """Reads a large answer a few KiB at a time, with pauses; it must arrive whole."""
    size = rng.choice([MiB, 3 * MiB])
    conn = dial(receive_buffer=16384)
    try:
        conn.send(request("GET", f"/bytes?n={size}"))
        head = conn.read_head()
        assert head.status == 200, head
        assert conn.buf == b"x" * len(conn.buf)
        received = len(conn.buf)
        conn.buf.clear()
        while received < size:
            piece = conn.sock.recv(rng.choice([4096, 16384]))
            assert piece, f"closed after {received} of {size} bytes"
            assert piece == b"x" * len(piece)
            received += len(piece)
            if rng.random() < 0.05:
                time.sleep(0.002)  # the client's own pace: it reads slowly
        assert received == size
    finally:
        conn.close()


def http10(dial: Dial, rng: random.Random) -> None:
    """HTTP/1.0 without Host or keep-alive: the answer, then the server closes."""
    conn = dial()
    try:
        conn.send(request("GET", "/", version="1.0"), rng)
        r = conn.read_response()
        assert r.status == 200 and r.body.startswith(b"Hello from "), r
        assert conn.closed_by_server()
    finally:
        conn.close()


def close_framed(dial: Dial, rng: random.Random) -> None:
    """An answer the app frames by closing its connection reaches the client whole."""
    conn = dial()
    try:
        conn.send(request("GET", "/close"))
        r = conn.read_response()
        assert r.status == 200 and r.body == b"until the end", r
    finally:
        conn.close()


def expects_continue(dial: Dial, rng: random.Random) -> None:
    """Uploads that wait for "100 Continue" before sending their bodies, as curl does for large ones."""
    conn = dial()
    try:
        for _ in range(rng.randint(1, 3)):
            body = rng.randbytes(rng.choice([1, 5000, 200_000]))
            conn.send(request("POST", "/echo", body).replace(b"\r\n\r\n", b"\r\nExpect: 100-continue\r\n\r\n", 1)
                      [:-len(body)])
            interim = conn.read_head()
            assert interim.status == 100, interim
            conn.send(body, rng)
            r = conn.read_response("POST", interim=[])  # one from the app as well would be allowed
            assert r.status == 200 and json.loads(r.body)["body_sha256"] == hashlib.sha256(body).hexdigest(), r
    finally:
        conn.close()


def app_cuts_response(dial: Dial, rng: random.Random) -> None:
    """The app closes its connection partway through a response it gave a length: the client gets what the
    app sent, then the server closes the client's connection (the response cannot be completed)."""
    conn = dial()
    try:
        conn.send(request("GET", "/lines?n=20000&cut=3000"))
        head = conn.read_head()
        assert head.status == 200 and head.get("content-length") == "320000", head
        body = conn._read_to_eof()
        assert body == lines(3000), (len(body), body[-40:])
    finally:
        conn.close()


#: Whether an upgraded connection may be cut before the client ends it (a restart aborts the old processes'
#: tunnels, as Passenger does); set by the test for its configuration.
TUNNELS_MAY_BE_CUT = False


def tunnel(dial: Dial, rng: random.Random) -> None:
    """An upgraded connection (101): bytes both ways until the client ends it, echoed in order and whole."""
    conn = dial()
    try:
        conn.send(b"GET /upgrade HTTP/1.1\r\nHost: stress.test\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        head = conn.read_head()
        assert head.status == 101, head
        assert conn._read_exact(8) == b"welcome\n"
        for _ in range(rng.randint(1, 6)):
            payload = rng.randbytes(rng.choice([1, 1000, 70_000, 300_000]))
            conn.send(payload, rng)
            try:
                echoed = conn._read_exact(len(payload))
            except EOFError:
                assert payload.startswith(conn.buf), "what came before the cut is out of order"
                raise
            assert echoed == payload, (len(echoed), len(payload))
    except (EOFError, ConnectionResetError, BrokenPipeError):
        if not TUNNELS_MAY_BE_CUT:
            raise
    finally:
        conn.close(reset=rng.random() < 0.3)


def crasher(dial: Dial, rng: random.Random) -> None:
    """Requests to a second app, "doomed" (mounted at /doomed), whose processes are made to exit now and then.

    /doomed/exit gets 502 (its process dies without answering).  An upload to /doomed/echo is answered whole;
    or, if another client's /exit killed its process under it, it gets 502, or (the head sent, the body not)
    a 200 cut short by a close.  The main app must not notice."""
    conn = dial()
    try:
        if rng.random() < 0.3:
            conn.send(request("GET", "/doomed/exit"))
            r = conn.read_response()
            assert r.status == 502, r
            return
        body = rng.randbytes(rng.randint(0, 5000))
        conn.send(request("POST", "/doomed/echo", body))
        head = conn.read_head()
        assert head.status in (200, 502), head
        try:
            answer = conn._read_exact(int(head.get("content-length") or 0))
        except EOFError:
            assert head.status == 200, head  # the server's own 502 page is always whole
            return
        if head.status == 200:
            assert json.loads(answer)["body_sha256"] == hashlib.sha256(body).hexdigest(), answer
    finally:
        conn.close()


BAD_REQUESTS = [
    b"GARBAGE\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
    b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
]


def bad_request(dial: Dial, rng: random.Random) -> None:
    """A malformed request gets a 4xx (or 505 for the version) and the connection is closed."""
    conn = dial()
    try:
        conn.send(rng.choice(BAD_REQUESTS))
        r = conn.read_response()
        assert 400 <= r.status < 500 or r.status == 505, r
        assert conn.closed_by_server()
    finally:
        conn.close()


#: (what a client does, how often it is chosen)
BEHAVIOURS: list[tuple[Callable[[Dial, random.Random], None], int]] = [
    (keep_alive, 10), (pipelined, 3), (leaves_mid_request, 2), (leaves_mid_response, 2),
    (slow_reader, 1), (http10, 2), (close_framed, 1), (bad_request, 1), (expects_continue, 1),
    (app_cuts_response, 1), (tunnel, 1),
]


@dataclass
class Tally:
    done: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    #: (seconds, which) of the longest use of a connection that went well
    slowest: tuple[float, str] = (0.0, "")
    lock: threading.Lock = field(default_factory=threading.Lock)


def client(dial: Dial, seed: int, deadline: float, tally: Tally,
           mix: list[tuple[Callable[[Dial, random.Random], None], int]] = BEHAVIOURS) -> None:
    rng = random.Random(seed)
    behaviours, weights = zip(*mix, strict=True)
    step = 0
    while time.monotonic() < deadline:
        behaviour = rng.choices(behaviours, weights)[0]
        began = time.monotonic()
        try:
            behaviour(dial, rng)
        except Exception as e:  # reported with what replays it
            with tally.lock:
                tally.failures.append(f"client seed {seed}, step {step}, {behaviour.__name__}: {e!r}")
            return
        with tally.lock:
            tally.done[behaviour.__name__] += 1
            tally.slowest = max(tally.slowest, (time.monotonic() - began, f"seed {seed} step {step} {behaviour.__name__}"))
        step += 1


def held_client_connections(port: int) -> list[tuple[int, int, int, int, int]]:
    """The server's side of client connections it has not let go (established, or closed by the client only)."""
    return [e for e in tcp_sockets() if e[0] == port and e[2] in (TCP_ESTABLISHED, TCP_CLOSE_WAIT)]


def busy_sessions(admin_pool: dict[str, object]) -> int:
    return sum(p["sessions"] for g in admin_pool["groups"] for p in g["processes"])  # type: ignore[index,misc,union-attr]


@dataclass
class Configuration:
    args: list[str] = field(default_factory=list)
    #: Restart the apps all through the load (rolling and blocking in turn, every half second).
    restarting: bool = False
    #: Serve HTTPS (a trustme certificate), and the clients speak TLS.
    tls: bool = False
    #: The app's options, when not echo_app.py's (another app with echo_app's endpoints).
    app: list[str] | None = None
    #: A second app, "doomed" at /doomed, whose processes the clients make exit (``crasher``), and reloads.
    crashing: bool = False


CONFIGURATIONS = {
    "default": Configuration(),
    "no-io-uring+busy-poll": Configuration(["--no-io-uring", "--busy-poll", "100"]),
    # Restarts, and processes recycled after 300 requests: every request a client waits for must still
    # be answered, none dropped.
    "restarting+buffered-uploads": Configuration(["--max-requests", "300", "--buffer-upload"], restarting=True),
    "tls": Configuration(tls=True),
    # Two requests at a time per process, at most three processes: requests wait in the queue, clients
    # leave while theirs waits, and uploads are buffered (the default for a known concurrency).
    "queued": Configuration(["--concurrency", "2"]),
    # Apps on Unix sockets (kuria_echo_app.py), and Node.js apps (node_echo_app.js): echo_app's endpoints.
    "unix-socket-apps": Configuration(app=["--app-root", str(APPS), "--app-start-command",
                                           f"{APP_PYTHON} kuria_echo_app.py", "--app-supports-kuria-protocol"]),
    "node-apps": Configuration(app=["--app-root", str(APPS), "--app-start-command", "node node_echo_app.js"]),
    # ... and reloaded (SIGHUP) every half second, with its settings changed every other time.
    "crashing-neighbour": Configuration(crashing=True),
}


@dataclass
class Reloadable:
    """A config file whose text has one ``%d``: the round, which changes the doomed app's settings."""

    path: Path
    text: str

    def write(self, round_: int) -> Path:
        self.path.write_text(self.text % round_)
        return self.path


@dataclass
class Stressed:
    server: Server
    admin: Admin
    configuration: Configuration
    tls: ssl.SSLContext | None
    config: Reloadable | None = None

    def dial(self, receive_buffer: int | None = None) -> Connection:
        return Connection(self.server.port, self.tls, receive_buffer)


@pytest.fixture(params=list(CONFIGURATIONS))
def stressed(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Stressed]:
    configuration = CONFIGURATIONS[request.param]
    registry = world_dir("registry", 0o755)
    static = world_dir("static", 0o755)
    for name, content in STATIC_FILES.items():
        (static / name).write_bytes(content)
    args = [*configuration.args, "--static-files-dir", str(static)]
    context = None
    if configuration.tls:
        ca = trustme.CA()
        issued = ca.issue_cert("localhost")
        folder = world_dir("tls", 0o755)
        cert, key = folder / "cert.pem", folder / "key.pem"
        issued.private_key_and_cert_chain_pem.write_to_path(str(cert))
        issued.private_key_pem.write_to_path(str(key))
        args += ["--ssl", "--ssl-certificate", str(cert), "--ssl-certificate-key", str(key)]
        context = ssl.create_default_context()
        ca.configure_trust(context)
    config = None
    if configuration.crashing:  # two apps: a config file (the per-app options go in it)
        config = Reloadable(tmp_path / "passenger.toml", textwrap.dedent(f"""
            min_instances = 2
            max_pool_size = 5
            instance_registry_dir = "{registry}"

            [[app]]
            name = "{ECHO_GROUP}"
            root = "{APPS}"
            start_command = "{APP_PYTHON} echo_app.py"
            static_files_dir = "{static}"

            [[app]]
            name = "doomed"
            root = "{APPS}"
            start_command = "{APP_PYTHON} echo_app.py"
            base_uri = "/doomed"
            envvars = {{ ROUND = "%d" }}
            """))
        server = Server(tmp_path, ["--config", str(config.write(0)), *configuration.args])
        ready = 4
    else:
        app = configuration.app or echo_app_args()
        server = Server(tmp_path, [*app, "--min-instances", "2", "--max-pool-size", "3",
                                   "--instance-registry-dir", str(registry), *args])
        ready = 2
    try:
        server.start(ready=ready)
        yield Stressed(server, unix_admin(registry, server), configuration, context, config)
    finally:
        server.kill()


def restart_until(server: Server, admin: Admin, deadline: float, done: list[str]) -> None:
    """Restart the app every half second, rolling and blocking in turn, until ``deadline``."""
    assert server.proc is not None
    while time.monotonic() + 0.5 < deadline:
        time.sleep(0.5)  # the pace of the restarts, not a wait for anything
        if len(done) % 2 == 0:
            server.proc.send_signal(signal.SIGUSR2)
            done.append("rolling")
        else:
            reply = admin.post("/pool/restart_app_group.json", {"name": ECHO_GROUP, "restart_method": "blocking"})
            assert reply.status == 200, reply
            done.append("blocking")


def reload_until(server: Server, config: Reloadable, deadline: float, done: list[str]) -> None:
    """Every half second a SIGHUP: in turn, with the configuration unchanged and with the doomed app's changed."""
    assert server.proc is not None
    while time.monotonic() + 0.5 < deadline:
        time.sleep(0.5)  # the pace of the reloads, not a wait for anything
        if len(done) % 2:
            config.write(len(done))
            done.append("changed")
        else:
            done.append("unchanged")
        server.proc.send_signal(signal.SIGHUP)


def test_many_clients_doing_everything_at_once(stressed: Stressed) -> None:
    server, admin, restarting = stressed.server, stressed.admin, stressed.configuration.restarting
    assert server.proc is not None

    global TUNNELS_MAY_BE_CUT
    TUNNELS_MAY_BE_CUT = restarting
    tally = Tally()
    deadline = time.monotonic() + SECONDS
    mix = [*BEHAVIOURS, (crasher, 3)] if stressed.configuration.crashing else BEHAVIOURS
    threads = [threading.Thread(target=client, args=(stressed.dial, SEED + i, deadline, tally, mix), daemon=True)
               for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    restarts: list[str] = []
    if restarting:
        restart_until(server, admin, deadline, restarts)
    elif stressed.config is not None:
        reload_until(server, stressed.config, deadline, restarts)
    for thread in threads:
        thread.join(SECONDS + 4 * STUCK_S)
    assert not any(t.is_alive() for t in threads), "a client is still running"
    print(f"seed {SEED}: {sum(tally.done.values())} connections used ({dict(tally.done)}); slowest "
          f"{tally.slowest[0]:.2f}s ({tally.slowest[1]}); restarts or reloads: {dict(Counter(restarts))}")
    assert not tally.failures, "\n".join(tally.failures) + f"\n(STRESS_SEED={SEED})"
    assert set(tally.done) == {b.__name__ for b, _ in mix}, tally.done  # each ran at least once
    if stressed.configuration.crashing:  # each death named, with its app and pid; the reloads took
        server.wait_log(r"Process \d+ of doomed closed the connection without answering")
        server.wait_log(r"Process \d+ of doomed exited")
        server.wait_log(r"Reload: the configuration is unchanged")
        server.wait_log(r"Reload: the settings of doomed changed; restarting it")
        assert "settings of apps changed" not in server.log()
    if restarting:
        assert len(restarts) >= 4, restarts
        server.wait_log(r"Restarting \S+ \(rolling\)")
        server.wait_log(r"Restarting \S+ \(blocking\)")

    # Still serving, and every connection let go, every process idle.
    conn = stressed.dial()
    conn.send(request("GET", "/"))
    assert conn.read_response().status == 200
    conn.close()
    wait_for(lambda: not held_client_connections(server.port), 10,
             what=f"the server to let every client connection go: {held_client_connections(server.port)}")
    wait_for(lambda: busy_sessions(admin.pool()) == 0, 10, what="no busy session in the pool")
    own = [line for line in server.log().splitlines() if "passenger.app.apps" not in line]  # not the apps' stderr
    assert not [line for line in own if "Traceback" in line or "Unhandled" in line], "\n".join(own[-80:])
    assert server.proc.poll() is None

#!/usr/bin/env python3
"""A test app that honours $PORT and shows what it received.

  /pid              this process's pid
  /echo             JSON: method, path, headers (list of pairs), body length and sha256
  /sleep?ms=N       answers after N ms (threads: other requests go on)
  /status?code=N    empty answer with that status
  /chunked?n=K      K chunks of "chunk-i\\n" with Transfer-Encoding: chunked
                    (&then=cut: then close without the last chunk; &then=bad: an invalid chunk, then
                    close, and with &gate=KEY only once /release?gate=KEY came; &then=hang: then wait
                    &ms=N, 30000 by default, before the last chunk: an app that stalls)
  /release?gate=KEY lets the response waiting on that gate go on
  /close            body framed by closing the connection (no length, not chunked)
  /bytes?n=N        N bytes of 'x', streamed in 64 KiB pieces with Content-Length
  /lines?n=K        K numbered 16-byte lines ("%015x\n"), in 64 KiB writes: order and loss show
                    (&cut=C: the length says K lines, but the app closes after C of them)
  /upgrade          with "Upgrade: echo": 101, "welcome\\n", then every byte sent back until the client closes
  /exit             the process exits without answering
  /alloc?mb=N       the process allocates N MB more and keeps it (for memory limits)
Anything else: "Hello from <pid>".

  --announce-stop   print "app <pid> got SIGTERM" when asked to stop, then die
                    of the signal as without it (restart tests order this line
                    against the server's own log lines)

Mounted at a base URI (PASSENGER_BASE_URI, from the server's base_uri), it
serves the same routes under it (/api/echo), as apps mounted at a sub-path do;
/echo still reports the path as received.  Every answer of _send carries
X-In-Flight: the requests this process was handling when it took this one
(itself included), so 1 means it never overlapped another.
"""
import hashlib
import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

BASE_URI = os.environ.get("PASSENGER_BASE_URI", "").rstrip("/")
_in_flight = 0
_hoard: list[bytearray] = []
_in_flight_lock = threading.Lock()
_gates: dict[str, threading.Event] = {}


def _gate(key: str) -> threading.Event:
    """The event /release?gate=KEY sets (made by whichever of the two comes first)."""
    with _in_flight_lock:
        return _gates.setdefault(key, threading.Event())


def announce_stop() -> None:
    """On SIGTERM, say so on stdout, then die of SIGTERM (the exit the server sees is unchanged)."""
    def on_term(signum: int, frame: object) -> None:
        print(f"app {os.getpid()} got SIGTERM", flush=True)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_term)


def _route_path(path: str) -> str:
    """The path without the base URI the app is mounted at, if it has one."""
    if BASE_URI and (path == BASE_URI or path.startswith(BASE_URI + "/")):
        return path[len(BASE_URI):] or "/"
    return path


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    #: TCP_NODELAY: the head and the body are two writes; with Nagle the body waits
    #: for the ACK of the head, which a kept-alive peer delays by ~40 ms.
    disable_nagle_algorithm = True
    #: Requests in flight in this process when this one arrived (itself included).
    in_flight = 0

    def log_message(self, fmt: str, *args: object) -> None:
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b""):
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes, ctype: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Pid", str(os.getpid()))
        self.send_header("X-In-Flight", str(self.in_flight))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def handle_any(self) -> None:
        global _in_flight
        with _in_flight_lock:
            _in_flight += 1
            self.in_flight = _in_flight
        try:
            self._handle()
        finally:
            with _in_flight_lock:
                _in_flight -= 1

    def _handle(self) -> None:
        url = urlsplit(self.path)
        path = _route_path(url.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        body = self._body()
        if path == "/upgrade" and self.headers.get("Upgrade", "").lower() == "echo":
            self.send_response(101)
            self.send_header("Upgrade", "echo")
            self.send_header("Connection", "Upgrade")
            self.end_headers()
            self.wfile.write(b"welcome\n")
            self.close_connection = True
            while data := self.rfile.read1(65536):
                self.wfile.write(data)
            return
        if path == "/release":
            _gate(query.get("gate", "")).set()
            return self._send(200, b"released")
        if path == "/pid":
            return self._send(200, str(os.getpid()).encode())
        if path == "/echo":
            info = {
                "method": self.command,
                "path": self.path,
                "version": self.request_version,
                "headers": [[k, v] for k, v in self.headers.items()],
                "body_length": len(body),
                "body_sha256": hashlib.sha256(body).hexdigest(),
                "env": {k: v for k, v in os.environ.items() if k in (
                    "PORT", "PASSENGER_APP_ENV", "RAILS_ENV", "RACK_ENV", "NODE_ENV", "WSGI_ENV",
                    "IN_PASSENGER", "PYTHONUNBUFFERED", "PWD", "GREETING", "USER", "LOGNAME", "HOME", "SHELL",
                    "PASSENGER_FROM_PROFILE", "PASSENGER_BASE_URI")},
                "uid": os.getuid(),
                "gid": os.getgid(),
                "groups": sorted(os.getgroups()),
                "cwd": os.getcwd(),
            }
            return self._send(200, json.dumps(info).encode(), "application/json")
        if path == "/sleep":
            time.sleep(float(query.get("ms", "0")) / 1000)
            return self._send(200, b"slept")
        if path == "/status":
            code = int(query.get("code", "200"))
            self.send_response(code)
            if code not in (204, 304):
                self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(int(query.get("n", "3"))):
                piece = f"chunk-{i}\n".encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            then = query.get("then")
            if then == "hang":  # a response that stalls after its first chunks
                self.wfile.flush()
                time.sleep(float(query.get("ms", "30000")) / 1000)
            elif then in ("cut", "bad"):  # ends without its last chunk, or with a broken one
                if then == "bad":
                    if "gate" in query:  # the test has read the good chunks: the response has begun
                        _gate(query["gate"]).wait(30)
                    self.wfile.write(b"zz\r\nnot a chunk\r\n")
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(b"0\r\n\r\n")
            return
        if path == "/close":
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"until the end")
            self.close_connection = True
            return
        if path == "/bytes":
            n = int(query.get("n", "0"))
            self.send_response(200)
            self.send_header("Content-Length", str(n))
            self.end_headers()
            piece = b"x" * 65536
            while n > 0:
                self.wfile.write(piece[: min(n, len(piece))])
                n -= len(piece)
            return
        if path == "/lines":
            lines = int(query.get("n", "0"))
            cut = min(int(query.get("cut", lines)), lines)
            self.send_response(200)
            self.send_header("Content-Length", str(16 * lines))
            self.end_headers()
            for start in range(0, cut, 4096):
                self.wfile.write(b"".join(b"%015x\n" % i for i in range(start, min(start + 4096, cut))))
            if cut < lines:
                self.close_connection = True
            return
        if path == "/alloc":
            _hoard.append(bytearray(int(query.get("mb", "0")) * 1024 * 1024))  # zero-filled: resident
            return self._send(200, b"holding %d MB" % (sum(map(len, _hoard)) // 1048576))
        if path == "/exit":
            sys.stderr.write("exiting on request\n")
            sys.stderr.flush()
            os._exit(3)
        return self._send(200, b"Hello from %d" % os.getpid())

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = handle_any


if __name__ == "__main__":
    if "--announce-stop" in sys.argv:
        announce_stop()
    port = int(os.environ["PORT"])
    print(f"echo app {os.getpid()} listening on {port}", flush=True)
    ThreadingHTTPServer.request_queue_size = 256  # the listen backlog (5 by default drops a burst's SYNs)
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    server.serve_forever()

"""Slow and idle clients against the real server, on short deadlines.

A slowloris client trickles its head; a slow uploader pauses in its body; an
idle keep-alive connection sits there; too many connections arrive at once.
The server cuts each at its deadline and keeps answering everyone else.
"""

from __future__ import annotations

import re
import socket
import statistics
import time

from tests.integration.conftest import Server, echo_app_args
from tests.polling import wait_for


def connect(server: Server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=10)


def read_all(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """Everything until the server closes the connection."""
    sock.settimeout(timeout)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def get(server: Server, path: str = "/pid") -> tuple[bytes, float]:
    started = time.monotonic()
    with connect(server) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
        return read_all(sock), time.monotonic() - started


def test_a_slow_head_gets_408_at_the_head_deadline(serve) -> None:  # type: ignore[no-untyped-def]
    server = serve(echo_app_args("--request-head-timeout", "1"))
    with connect(server) as slow:
        started = time.monotonic()
        slow.sendall(b"GET /pid HTTP/1.1\r\nHost: t\r\nX-Slow: ")
        answer = read_all(slow)
        elapsed = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert 0.9 <= elapsed < 3.5, elapsed
    assert get(server)[0].startswith(b"HTTP/1.1 200 ")


def test_a_connection_that_never_sends_is_closed_at_the_head_deadline(serve) -> None:  # type: ignore[no-untyped-def]
    server = serve(echo_app_args("--request-head-timeout", "1"))
    with connect(server) as silent:
        started = time.monotonic()
        assert read_all(silent) == b"", "closed without an answer: there was no request"
        assert time.monotonic() - started < 3.5


def test_a_pause_in_the_body_gets_408(serve) -> None:  # type: ignore[no-untyped-def]
    server = serve(echo_app_args("--request-body-timeout", "1"))
    with connect(server) as uploader:
        uploader.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc")
        started = time.monotonic()
        answer = read_all(uploader)
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert time.monotonic() - started < 3.5


def test_a_slow_but_steady_body_is_not_cut(serve) -> None:  # type: ignore[no-untyped-def]
    server = serve(echo_app_args("--request-body-timeout", "1"))
    with connect(server) as uploader:
        uploader.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 6\r\nConnection: close\r\n\r\n")
        for piece in (b"ab", b"cd", b"ef"):
            time.sleep(0.6)  # the client's own pace: each pause is shorter than the deadline
            uploader.sendall(piece)
        answer = read_all(uploader)
    assert answer.startswith(b"HTTP/1.1 200 "), answer
    assert b'"body_length": 6' in answer


def test_an_idle_keep_alive_connection_closes_after_the_keepalive_timeout(serve) -> None:  # type: ignore[no-untyped-def]
    server = serve(echo_app_args("--keepalive-timeout", "1"))
    with connect(server) as client:
        client.sendall(b"GET /pid HTTP/1.1\r\nHost: t\r\n\r\n")
        client.settimeout(10)
        first = b""
        while b"\r\n\r\n" not in first:
            first += client.recv(65536)
        head, _, body = first.partition(b"\r\n\r\n")
        length = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
        while len(body) < length:
            body += client.recv(65536)  # the whole response: what follows can only be the close
        assert head.startswith(b"HTTP/1.1 200 ")
        started = time.monotonic()
        assert read_all(client) == b"", "closed quietly: no request was in progress"
        assert 0.9 <= time.monotonic() - started < 3.5


def test_connections_beyond_max_connections_are_closed_at_once(serve) -> None:  # type: ignore[no-untyped-def]
    server = serve(echo_app_args("--max-connections", "3"))
    held = [connect(server) for _ in range(3)]
    try:
        for sock in held:
            sock.sendall(b"GET /pid HTTP/1.1\r\nHost: t\r\n\r\n")
            sock.settimeout(10)
            assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
        with connect(server) as extra:
            try:
                closed = read_all(extra, timeout=5) == b""
            except ConnectionResetError:
                closed = True  # a close before the handshake settled can come as a reset: closed all the same
            assert closed, "closed at once, without an answer"
        server.wait_log(r"client connections are open \(max_connections\); closing new ones")
    finally:
        for sock in held:
            sock.close()
    def served() -> bool:
        try:
            return get(server)[0].startswith(b"HTTP/1.1 200 ")
        except ConnectionResetError:
            return False  # the server has not seen the held connections close yet

    wait_for(served, timeout=10, what="room again once the held connections closed")


def test_500_slowloris_connections_do_not_slow_normal_clients(serve) -> None:  # type: ignore[no-untyped-def]
    server = serve(echo_app_args("--request-head-timeout", "2"))
    baseline = statistics.median(get(server)[1] for _ in range(20))
    slow = [connect(server) for _ in range(500)]
    try:
        for sock in slow:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nX-A: ")  # and never more
        during = [get(server) for _ in range(20)]
        assert all(answer.startswith(b"HTTP/1.1 200 ") for answer, _ in during)
        latency = statistics.median(elapsed for _, elapsed in during)
        print(f"\nmedian latency: {baseline * 1000:.2f} ms alone, {latency * 1000:.2f} ms beside 500 slowloris clients")
        assert latency < baseline + 0.05, (baseline, latency)
        started = time.monotonic()
        for sock in slow:
            assert read_all(sock, timeout=10).startswith(b"HTTP/1.1 408 ")
        assert time.monotonic() - started < 5, "all dropped by the head deadline"
    finally:
        for sock in slow:
            sock.close()

"""WebSockets through the server, driven by a real client library (websockets) against an RFC 6455 app."""

from __future__ import annotations

import os
import socket

from websockets.sync.client import connect

from tests.integration.conftest import APP_PYTHON, APPS


def ws_args(*extra: str) -> list[str]:
    return ["--app-root", str(APPS), "--app-start-command", f"{APP_PYTHON} websocket_app.py", *extra]


def test_messages_go_both_ways_with_large_ones_under_back_pressure(serve) -> None:  # type: ignore[no-untyped-def]
    server = serve(ws_args())
    with connect(f"ws://127.0.0.1:{server.port}/chat", open_timeout=10, max_size=None) as ws:
        ws.send("hello")
        assert ws.recv(timeout=10) == "hello"
        big = os.urandom(8 * 1024 * 1024)
        ws.send(big)
        assert ws.recv(timeout=30) == big
        ws.ping(b"are you there").wait(timeout=10)


def test_an_open_websocket_counts_as_a_request_in_flight_on_its_process(serve) -> None:  # type: ignore[no-untyped-def]
    server = serve(ws_args("--concurrency", "1", "--max-pool-size", "1", "--max-request-queue-time", "0.5"))
    with connect(f"ws://127.0.0.1:{server.port}/chat", open_timeout=10) as ws:
        ws.send("busy")
        assert ws.recv(timeout=10) == "busy"
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as plain:
            plain.sendall(b"GET /pid HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            assert plain.recv(65536).startswith(b"HTTP/1.1 504 "), "the only process is taken by the WebSocket"
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as plain:
        plain.sendall(b"GET /pid HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        assert plain.recv(65536).startswith(b"HTTP/1.1 200 "), "free again once the WebSocket closed"

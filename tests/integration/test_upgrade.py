"""Upgrade requests (WebSockets and the like) become a byte tunnel after the app's 101."""

from __future__ import annotations

import socket

from tests.integration.conftest import APP_PYTHON, APPS


def test_upgrade_becomes_a_tunnel_both_ways(serve) -> None:
    server = serve(["--app-root", str(APPS), "--app-start-command", f"{APP_PYTHON} upgrade_app.py"])
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        data = b""
        while b"welcome\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
        head = data.split(b"\r\n\r\n", 1)[0].lower()
        assert head.startswith(b"http/1.1 101 ")
        assert b"upgrade: echo" in head
        assert b"connection: upgrade" in head
        payload = bytes(range(256)) * 1024  # not HTTP: must pass untouched
        sock.sendall(payload)
        echoed = b""
        while len(echoed) < len(payload):
            chunk = sock.recv(65536)
            assert chunk, len(echoed)
            echoed += chunk
        assert echoed == payload

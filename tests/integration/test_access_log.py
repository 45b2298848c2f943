"""The access log of the real server: what a line says, flushing, and reopening on SIGUSR1."""

from __future__ import annotations

import os
import re
import signal
import socket
from pathlib import Path

from tests.integration.conftest import echo_app_args
from tests.polling import wait_for

LINE = re.compile(rb'^(?P<peer>\S+) - - \[(?P<time>[^]]+)\] "(?P<request>[^"]*)" (?P<status>\d{3}) (?P<bytes>\d+) '
                  rb'"(?P<referer>[^"]*)" "(?P<agent>[^"]*)" rid=(?P<rid>\S+) upstream=(?P<upstream>\S+)$')


def request(port: int, text: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(text.encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


def lines(path: Path, count: int) -> list[re.Match[bytes]]:
    def enough() -> list[re.Match[bytes]] | None:
        found = path.read_bytes().splitlines() if path.exists() else []
        return [m for m in (LINE.match(line) for line in found) if m] if len(found) >= count else None

    return wait_for(enough, timeout=10, what=f"{count} access log lines in {path}")


def test_each_request_gets_a_combined_line_with_its_id_and_upstream_time(serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    log = tmp_path / "access.log"
    server = serve(echo_app_args("--access-log", str(log)))
    answer = request(server.port, "GET /pid?x=1 HTTP/1.1\r\nHost: t\r\nReferer: http://r/\r\nUser-Agent: tester/1\r\n"
                                  "X-Request-Id: trace-42\r\nConnection: close\r\n\r\n")
    body = answer.partition(b"\r\n\r\n")[2]
    request(server.port, "GET / HTTP/1.1\r\nConnection: close\r\n\r\n")  # no Host: 400, refused before a line
    request(server.port, "GET /status?code=404 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    first, second = lines(log, 2)
    assert first["peer"] == b"127.0.0.1"
    assert first["request"] == b"GET /pid?x=1 HTTP/1.1"
    assert (first["status"], int(first["bytes"])) == (b"200", len(body))
    assert (first["referer"], first["agent"], first["rid"]) == (b"http://r/", b"tester/1", b"trace-42")
    assert float(first["upstream"]) >= 0
    assert second["status"] == b"404" and second["referer"] == b"-"


def test_sigusr1_reopens_the_access_log(serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    log = tmp_path / "access.log"
    server = serve(echo_app_args("--access-log", str(log)))
    request(server.port, "GET /pid HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    lines(log, 1)
    rotated = tmp_path / "access.log.1"
    log.rename(rotated)
    os.kill(server.proc.pid, signal.SIGUSR1)
    server.wait_log(r"Reopened the access log")
    request(server.port, "GET /after HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    [after] = lines(log, 1)
    assert after["request"] == b"GET /after HTTP/1.1"
    assert len(rotated.read_bytes().splitlines()) == 1

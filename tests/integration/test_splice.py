"""Large bodies spliced from the app's socket to the client's (passenger.http.splice), end to end.

Whether a body took the splice path shows in the server's descriptors: the
pipe it used is kept for the next body, so a server that never spliced holds
no pipe.
"""

from __future__ import annotations

import os
import socket

from tests.integration.conftest import APP_PYTHON, APPS, Server, echo_app_args, world_dir
from tests.integration.test_response_buffering import lines, read_responses, spill_files
from tests.polling import wait_for

ONE_PROCESS = ("--min-instances", "1", "--max-pool-size", "1")
LINES = 256 * 1024  # 4 MiB of numbered lines


def pipes(server: Server) -> int:
    """Pipes the server process holds open (its app processes' output comes through some: compare)."""
    assert server.proc is not None
    fd_dir = f"/proc/{server.proc.pid}/fd"
    count = 0
    for fd in os.listdir(fd_dir):
        try:
            count += os.readlink(f"{fd_dir}/{fd}").startswith("pipe:")
        except OSError:
            pass
    return count


def test_large_bodies_are_spliced_whole_in_order_on_one_connection(serve) -> None:  # type: ignore[no-untyped-def]
    server = serve(echo_app_args(*ONE_PROCESS))
    before = pipes(server)
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
        request = b"GET /lines?n=%d HTTP/1.1\r\nHost: t\r\n\r\n" % LINES
        sock.sendall(request + request + b"GET /pid HTTP/1.1\r\nHost: t\r\n\r\n")
        responses = read_responses(sock, 3)
    for head, body in responses[:2]:
        assert head.startswith(b"HTTP/1.1 200 ")
        assert body == lines(LINES), "nothing lost, duplicated or reordered"
    assert responses[2][1].isdigit(), "the connection goes on after the spliced bodies"
    assert pipes(server) > before, "the bodies took the splice path (its pipe is kept for the next)"


def test_a_client_that_stops_reading_mid_body_gets_the_rest_in_order(serve) -> None:  # type: ignore[no-untyped-def]
    buffers = world_dir("buffers", 0o700)
    server = serve(echo_app_args(*ONE_PROCESS, "--data-buffer-dir", str(buffers)))
    assert server.proc is not None
    before = pipes(server)
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.sendall(b"GET /lines?n=%d HTTP/1.1\r\nHost: t\r\n\r\n" % (4 * LINES))
        data = b""
        while len(data) < 1024 * 1024:  # reads at full speed first: the body is being spliced
            chunk = sock.recv(65536)
            assert chunk
            data += chunk
        # Then nothing: its buffers fill, and the server holds the rest (memory, then a spill file).
        wait_for(lambda: spill_files(server.proc.pid, buffers), 10, what="the rest held in data_buffer_dir")
        head, _, body = data.partition(b"\r\n\r\n")
        while len(body) < 16 * 4 * LINES:
            chunk = sock.recv(1 << 20)
            assert chunk, "closed in the middle of the body"
            body += chunk
    assert head.startswith(b"HTTP/1.1 200 ")
    assert body == lines(4 * LINES), "the bytes held after the pause follow the spliced ones, in order"
    assert pipes(server) > before, "the body began on the splice path"


def test_an_app_that_closes_inside_a_spliced_body_cuts_the_client_and_leaks_no_pipe(serve) -> None:  # type: ignore[no-untyped-def]
    server = serve(echo_app_args(*ONE_PROCESS))
    before = pipes(server)
    counts = []
    for _ in range(4):
        with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
            sock.sendall(b"GET /lines?n=%d&cut=%d HTTP/1.1\r\nHost: t\r\n\r\n" % (LINES, LINES // 2))
            data = b""
            try:
                while chunk := sock.recv(1 << 20):
                    data += chunk
            except ConnectionResetError:
                pass
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ")
        assert body == lines(LINES // 2), "what the app sent arrives, then the connection is cut"
        counts.append(pipes(server))
    assert counts[0] > before, "the bodies took the splice path"
    assert counts[-1] == counts[0], f"pipes held after each cut body: {counts}"
    server.wait_log(r"Process \d+ of \S+ closed the connection in the middle of a response", count=4)
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
        sock.sendall(b"GET /lines?n=%d HTTP/1.1\r\nHost: t\r\n\r\n" % LINES)
        ((head, body),) = read_responses(sock, 1)
    assert body == lines(LINES), "the server goes on splicing"


def test_a_large_body_from_an_app_on_a_unix_socket_is_spliced_whole(serve) -> None:  # type: ignore[no-untyped-def]
    keep = world_dir("kuria")
    server = serve(["--app-root", str(APPS), "--app-start-command", f"{APP_PYTHON} kuria_app.py",
                    "--app-supports-kuria-protocol", "--envvar", f"KURIA_TEST_DIR={keep}", *ONE_PROCESS])
    before = pipes(server)
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
        sock.sendall(b"GET /lines?n=%d HTTP/1.1\r\nHost: t\r\n\r\n" % LINES)
        ((head, body),) = read_responses(sock, 1)
    assert head.startswith(b"HTTP/1.1 200 ")
    assert body == lines(LINES)
    assert pipes(server) > before, "the body took the splice path from the app's Unix socket"

"""Response buffering: a client that reads slowly never holds an app process for long.

The client sockets here have a small receive buffer and read nothing at first,
so the kernel's buffers fill after a few hundred KiB; the rest of a 16 MiB
response is either held by the server (memory, then disk) or, past the high
watermark, left in the app's connection, keeping its process busy.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from tests.integration.conftest import Server, echo_app_args, server_let_go, world_dir
from tests.polling import wait_for

#: One process that takes one request at a time; a request queued for 2 s gets 504.
ONE_PROCESS = ("--concurrency", "1", "--min-instances", "1", "--max-pool-size", "1", "--max-request-queue-time", "2")
LINES = 1024 * 1024  # 16 MiB of numbered lines


def lines(count: int) -> bytes:
    return b"".join(b"%015x\n" % i for i in range(count))


def slow_reader(server: Server) -> socket.socket:
    """A connection whose kernel buffers fill fast: it reads nothing until the test says so."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(20)
    sock.connect(("127.0.0.1", server.port))
    return sock


def read_responses(sock: socket.socket, count: int) -> list[tuple[bytes, bytes]]:
    """``count`` responses with Content-Length, read in full."""
    data = bytearray()
    found = []
    while len(found) < count:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(1 << 20)
            assert chunk, f"closed after {len(found)} responses"
            data += chunk
        end = data.index(b"\r\n\r\n")
        head = bytes(data[:end])
        del data[:end + 4]
        length = int(next(line.split(b":", 1)[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:")))
        while len(data) < length:
            chunk = sock.recv(1 << 20)
            assert chunk, "closed in the middle of a body"
            data += chunk
        found.append((head, bytes(data[:length])))
        del data[:length]
    return found


def quick_get(server: Server) -> bytes:
    """The status line of GET /pid on a new connection (504 if the only process stays busy for 2 s)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /pid HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data.split(b"\r\n", 1)[0]


def spill_files(pid: int, directory: Path) -> list[str]:
    """The deleted files in ``directory`` that process ``pid`` holds open."""
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(directory) + "/") and target.endswith("(deleted)"):
            found.append(target)
    return found


def test_a_slow_reader_frees_the_process_and_gets_every_byte_in_order(serve) -> None:  # type: ignore[no-untyped-def]
    buffers = world_dir("buffers", 0o700)
    server = serve(echo_app_args(*ONE_PROCESS, "--data-buffer-dir", str(buffers)))
    with slow_reader(server) as reader:
        # Two pipelined requests: the second is answered after all of the first has drained.
        reader.sendall(b"GET /lines?n=%d HTTP/1.1\r\nHost: t\r\n\r\nGET /pid HTTP/1.1\r\nHost: t\r\n\r\n" % LINES)
        assert server.proc is not None
        wait_for(lambda: spill_files(server.proc.pid, buffers), 10, what="the response held in data_buffer_dir")
        assert quick_get(server) == b"HTTP/1.1 200 OK", "the only process is free while the reader reads nothing"
        (head, body), (second_head, pid) = read_responses(reader, 2)
    assert head.startswith(b"HTTP/1.1 200 ")
    assert len(body) == 16 * LINES and body == lines(LINES), "nothing lost, duplicated or reordered"
    assert second_head.startswith(b"HTTP/1.1 200 ") and pid.isdigit()
    wait_for(lambda: not spill_files(server.proc.pid, buffers), 10, what="the spill file closed once drained")


def test_past_the_high_watermark_the_app_waits_for_the_reader(serve) -> None:  # type: ignore[no-untyped-def]
    server = serve(echo_app_args(*ONE_PROCESS, "--response-buffer-high-watermark", "1m"))
    with slow_reader(server) as reader:
        reader.sendall(b"GET /lines?n=%d HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n" % LINES)
        assert reader.recv(1, socket.MSG_PEEK), "the response has begun: the process is this reader's"
        assert quick_get(server) == b"HTTP/1.1 504 Gateway Timeout", "1 MiB held: the app is paused, still busy"
        ((head, body),) = read_responses(reader, 1)
    assert head.startswith(b"HTTP/1.1 200 ") and body == lines(LINES)
    assert quick_get(server) == b"HTTP/1.1 200 OK"


def test_a_client_that_reads_nothing_is_cut_at_the_send_timeout(serve) -> None:  # type: ignore[no-untyped-def]
    server = serve(echo_app_args(*ONE_PROCESS, "--send-timeout", "1"))
    with slow_reader(server) as reader:
        reader.sendall(b"GET /lines?n=%d HTTP/1.1\r\nHost: t\r\n\r\n" % LINES)
        client_port = reader.getsockname()[1]
        server.wait_log(r"read nothing of its response for 1(\.0)? s \(send_timeout\)", timeout=10)
        wait_for(lambda: server_let_go(server.port, client_port), 10, what="the server closed the connection")
    assert quick_get(server) == b"HTTP/1.1 200 OK"

"""The io_uring setting on a real server: on by default, off with --no-io-uring, and every
response intact either way while many clients' requests share the passes."""

from __future__ import annotations

import http.client
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from passenger.http.uring import LARGEST, open_ring
from tests.integration.conftest import Server, echo_app_args
from tests.io_uring import no_io_uring

#: Body sizes that go through the ring, and past it (larger than it copies).
SIZES = (0, 13, 1000, LARGEST - 200, LARGEST + 1, 3 * LARGEST)


def io_urings(pid: int) -> int:
    """How many io_uring descriptors the process holds."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            count += os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:[io_uring]"
        except FileNotFoundError:
            pass
    return count


def kernel_allows_io_uring() -> None:
    try:
        open_ring(2).close()
    except OSError as error:
        no_io_uring(error.strerror)


def many_clients_get_every_byte(port: int, clients: int = 16, requests: int = 24) -> None:
    """Keep-alive clients at once, each asking for every size in turn; each body must be exact."""

    def one_client(k: int) -> int:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
        try:
            for n in range(requests):
                size = SIZES[(k + n) % len(SIZES)]
                connection.request("GET", f"/bytes?n={size}")
                response = connection.getresponse()
                body = response.read()
                assert response.status == 200
                assert body == b"x" * size, f"client {k}, request {n}: {len(body)} bytes for {size}"
        finally:
            connection.close()
        return requests

    with ThreadPoolExecutor(clients) as pool:
        assert sum(pool.map(one_client, range(clients))) == clients * requests


def test_the_server_sends_through_io_uring_by_default(serve: Callable[..., Server]) -> None:
    kernel_allows_io_uring()
    server = serve(echo_app_args("--min-instances", "2"), ready=2)
    assert server.proc is not None
    assert io_urings(server.proc.pid) >= 1  # the ring's descriptor (and the duplicates its mmaps hold)
    many_clients_get_every_byte(server.port)
    assert "io_uring is unavailable" not in server.log()


def test_no_io_uring_sends_a_call_per_socket(serve: Callable[..., Server]) -> None:
    server = serve(echo_app_args("--min-instances", "2", "--no-io-uring"), ready=2)
    assert server.proc is not None
    assert io_urings(server.proc.pid) == 0
    many_clients_get_every_byte(server.port)

"""passenger.http.congestion: which connections stay within the host, and Reno on a real socket."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from passenger.http.congestion import TCP_CONGESTION, is_local, tcp_socket, use_reno, use_reno_within_host


@pytest.mark.parametrize(("peer", "local"), [
    ("127.0.0.1", "127.0.0.1"),
    ("127.0.0.1", "0.0.0.0"),
    ("127.45.6.7", "127.0.0.1"),
    ("::1", "::1"),
    ("::ffff:127.0.0.1", "::"),
    ("::ffff:127.9.9.9", "::ffff:10.1.2.3"),
    ("::1", "2001:db8::5"),
    ("10.1.2.3", "10.1.2.3"),  # the host's own address at both ends: the kernel routes it over loopback
    ("fe80::1%eth0", "fe80::1%eth0"),
])
def test_connections_within_the_host(peer: str, local: str) -> None:
    assert is_local(peer, local)


@pytest.mark.parametrize(("peer", "local"), [
    ("203.0.113.7", "127.0.0.1"),
    ("10.1.2.4", "10.1.2.3"),
    ("2001:db8::1", "::1"),
    ("::ffff:203.0.113.7", "::"),
    ("::ffff:10.1.2.4", "::ffff:10.1.2.3"),
    ("::2", "::1"),
    ("fe80::1%eth0", "fe80::2%eth0"),
    ("not an address", "127.0.0.1"),
])
def test_connections_to_other_hosts(peer: str, local: str) -> None:
    assert not is_local(peer, local)


@pytest.fixture
def tcp_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    listener.close()
    yield server, client
    server.close()
    client.close()


def congestion(sock: socket.socket) -> bytes:
    return sock.getsockopt(socket.IPPROTO_TCP, TCP_CONGESTION, 16).rstrip(b"\0")


def test_use_reno_sets_the_socket_of_a_transport_or_of_the_one_a_tls_layer_wraps(
        tcp_pair: tuple[socket.socket, socket.socket]) -> None:
    server, client = tcp_pair
    assert use_reno(SimpleNamespace(socket=server))
    assert congestion(server) == b"reno"
    assert use_reno(SimpleNamespace(transport=SimpleNamespace(socket=client)))  # TLSMemoryBIOProtocol's shape
    assert congestion(client) == b"reno"


def test_use_reno_leaves_what_has_no_tcp_socket() -> None:
    assert tcp_socket(SimpleNamespace()) is None
    assert not use_reno(SimpleNamespace(socket=None))
    left, right = socket.socketpair()  # a Unix socket: the kernel refuses TCP options
    try:
        assert not use_reno(SimpleNamespace(socket=left))
    finally:
        left.close()
        right.close()


def test_use_reno_within_host_goes_by_the_transports_addresses(tcp_pair: tuple[socket.socket, socket.socket]) -> None:
    server, client = tcp_pair
    before = congestion(client)

    def transport(sock: socket.socket, peer: str) -> SimpleNamespace:
        return SimpleNamespace(socket=sock, getPeer=lambda: SimpleNamespace(host=peer),
                               getHost=lambda: SimpleNamespace(host=sock.getsockname()[0]))

    assert not use_reno_within_host(transport(client, "203.0.113.7"))  # as if the peer were another host
    assert congestion(client) == before
    assert use_reno_within_host(transport(server, server.getpeername()[0]))
    assert congestion(server) == b"reno"

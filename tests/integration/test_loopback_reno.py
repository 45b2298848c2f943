"""The loopback_reno setting on a real server: its sockets to a local client and to the apps use Reno by
default, and the system's congestion control with --no-loopback-reno.

The server's sockets are read in the server itself: each is found by its ports (``/proc/net/tcp``), taken
with ``pidfd_getfd`` (the server is this process's child) and asked for ``TCP_CONGESTION``.
"""

from __future__ import annotations

import ctypes
import http.client
import os
import re
import socket
from collections.abc import Callable

import pytest

from passenger.http.congestion import TCP_CONGESTION
from tests.integration.conftest import Server, echo_app_args

SYS_PIDFD_GETFD = 438  # x86_64 and arm64 alike
_libc = ctypes.CDLL(None, use_errno=True)


def system_congestion_control() -> str:
    with open("/proc/sys/net/ipv4/tcp_congestion_control") as f:
        return f.read().strip()


def inodes_to(remote_port: int) -> list[int]:
    """Inodes of the established IPv4 TCP sockets connected to ``remote_port`` (on any process)."""
    inodes = []
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            if int(fields[2].rsplit(":", 1)[1], 16) == remote_port and int(fields[3], 16) == 1:
                inodes.append(int(fields[9]))
    return inodes


def congestion_controls(pid: int, inodes: list[int]) -> list[str]:
    """The congestion control of each of process ``pid``'s sockets among these inodes."""
    wanted = {f"socket:[{inode}]" for inode in inodes}
    found = []
    pidfd = os.pidfd_open(pid)
    try:
        for name in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{name}") not in wanted:
                    continue
            except FileNotFoundError:
                continue
            fd = _libc.syscall(SYS_PIDFD_GETFD, pidfd, int(name), 0)
            if fd < 0:
                error = ctypes.get_errno()
                pytest.fail(f"pidfd_getfd of the server's fd {name}: {os.strerror(error)}")
            with socket.socket(fileno=fd) as sock:
                found.append(sock.getsockopt(socket.IPPROTO_TCP, TCP_CONGESTION, 16).rstrip(b"\0").decode())
    finally:
        os.close(pidfd)
    return found


def app_ports(server: Server) -> list[int]:
    return [int(port) for port in re.findall(r"is ready on port (\d+)", server.log())]


def server_side(server: Server) -> tuple[list[str], list[str]]:
    """With one keep-alive client connected after a 1 MiB response: the congestion control of the server's
    socket to that client, and of its sockets to the apps."""
    assert server.proc is not None
    client = http.client.HTTPConnection("127.0.0.1", server.port, timeout=20)
    try:
        client.request("GET", f"/bytes?n={1024 * 1024}")
        response = client.getresponse()
        assert (response.status, response.read()) == (200, b"x" * 1024 * 1024)
        client_port = client.sock.getsockname()[1]
        # Only the server's own descriptors are looked at: the client's socket and the apps' are not its.
        to_client = congestion_controls(server.proc.pid, inodes_to(client_port))
        to_apps = congestion_controls(server.proc.pid, [inode for port in app_ports(server) for inode in inodes_to(port)])
    finally:
        client.close()
    assert to_client, "the server's socket to the client was not found"
    assert to_apps, "no socket of the server to an app was found"
    return to_client, to_apps


def test_connections_within_the_host_use_reno_by_default(serve: Callable[..., Server]) -> None:
    server = serve(echo_app_args("--min-instances", "1"))
    to_client, to_apps = server_side(server)
    assert set(to_client) == {"reno"}, to_client
    assert set(to_apps) == {"reno"}, to_apps


def test_no_loopback_reno_leaves_the_system_congestion_control(serve: Callable[..., Server]) -> None:
    system = system_congestion_control()
    server = serve(echo_app_args("--min-instances", "1", "--no-loopback-reno"))
    to_client, to_apps = server_side(server)
    assert set(to_client) == {system}, to_client
    assert set(to_apps) == {system}, to_apps

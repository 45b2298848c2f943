"""Reno congestion control for TCP connections that stay within this host.

Linux gives every new TCP socket the system's congestion control
(``net.ipv4.tcp_congestion_control``).  BBR, the default on many hosts and on
the one ``bench/compare_bench.py`` runs on, paces each connection's sends with
a timer.  A connection between two addresses of this host (every connection to
an app process, and a client that is a proxy on the same machine) has no
network to pace for, and the pacing's timers and interrupts cost the sender:
relaying 1 MiB responses to a local client took 350 µs of the server's CPU
per response through a BBR socket and 190 µs through a Reno one, and the
server relayed 1,900 responses a second against 2,700 (perf put the cost in
``tcp_write_xmit``).  Reno never paces, and it is the one congestion control
every process may choose, whatever ``net.ipv4.tcp_allowed_congestion_control``
says.  Connections to other hosts keep the system's choice.

The ``loopback_reno`` setting (``--no-loopback-reno``) leaves every socket to
the system.
"""

from __future__ import annotations

import socket
from typing import Any

RENO = b"reno"
#: ``socket.TCP_CONGESTION`` (Linux's value where Python does not name it).
TCP_CONGESTION: int = getattr(socket, "TCP_CONGESTION", 13)


def is_local(peer: str, local: str) -> bool:
    """Does a connection from ``peer`` to ``local`` stay within this host: a loopback address (IPv4,
    IPv6, or IPv4 mapped into IPv6), or the same address at both ends?  The addresses are as the
    socket reports them (dotted quads, compressed IPv6), so their text says it without a parse (a
    parse cost every connection from another host 1.8 µs)."""
    return peer == local or is_loopback(peer)


def is_loopback(address: str) -> bool:
    """Is ``address`` (as a socket reports it) a loopback address, IPv4, IPv6 or IPv4 mapped into IPv6?"""
    if address.startswith("::ffff:"):
        address = address[7:]
    return address.startswith("127.") or address == "::1"


def tcp_socket(transport: Any) -> socket.socket | None:
    """The TCP socket under ``transport``: its own, or that of the TCP transport a TLS layer wraps."""
    for candidate in (transport, getattr(transport, "transport", None)):
        sock = getattr(candidate, "socket", None)
        if isinstance(sock, socket.socket):
            return sock
    return None


def use_reno(transport: Any) -> bool:
    """Give the connection Reno (the caller knows it stays within this host); True if it did.  A transport
    without a TCP socket, or a kernel that refuses (one built without TCP_CONGESTION), keeps what it has."""
    sock = tcp_socket(transport)
    if sock is None:
        return False
    try:
        sock.setsockopt(socket.IPPROTO_TCP, TCP_CONGESTION, RENO)
    except OSError:
        return False
    return True


def use_reno_within_host(transport: Any) -> bool:
    """``use_reno`` if the transport's connection stays within this host (its addresses say so)."""
    return is_local(transport.getPeer().host, transport.getHost().host) and use_reno(transport)

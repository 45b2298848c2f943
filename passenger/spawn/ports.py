"""Choosing a free TCP port for each app process (Passenger's ``findFreePort``).

Ports are taken round-robin from a range below the kernel's ephemeral range, so
our own outgoing connections never sit on a port we are about to hand to an app.
A port is only probed, never reserved: the app binds it moments later.
"""

from __future__ import annotations

import random
import socket
from collections.abc import Container


class NoFreePort(RuntimeError):
    """Every port of the range is taken."""


def _ephemeral_range() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(x) for x in f.read().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999


def default_range() -> tuple[int, int]:
    """10000 up to the start of the ephemeral range (or 10000-20000 if that leaves too few)."""
    low, _ = _ephemeral_range()
    if low - 1 >= 12000:
        return 10000, low - 1
    return 10000, 20000


def _bindable(port: int) -> bool:
    for host in ("127.0.0.1", "0.0.0.0"):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            # Apps set SO_REUSEADDR, so a TIME_WAIT left by an earlier process does not block them.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
        except OSError:
            return False
        finally:
            s.close()
    return True


class PortAllocator:
    """Hands out ports round-robin from ``[low, high]``, skipping those in use."""

    def __init__(self, low: int | None = None, high: int | None = None) -> None:
        default_low, default_high = default_range()
        self.low = default_low if low is None else low
        self.high = default_high if high is None else high
        self._next = random.randint(self.low, self.high)

    def allocate(self, taken: Container[int] = ()) -> int:
        size = self.high - self.low + 1
        for _ in range(size):
            port = self._next
            self._next = self.low if port >= self.high else port + 1
            if port not in taken and _bindable(port):
                return port
        raise NoFreePort(f"no free port between {self.low} and {self.high}")

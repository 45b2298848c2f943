"""The ``Date`` header, formatted once a second (RFC 9110 section 5.6.7)."""

from __future__ import annotations

import time
from email.utils import formatdate

_cached_second = -1
_cached_line = b""


def date_line() -> bytes:
    """``Date: <now>\\r\\n``; the string is rebuilt only when the second changes."""
    global _cached_second, _cached_line
    now = int(time.time())
    if now != _cached_second:
        _cached_second = now
        _cached_line = b"Date: " + formatdate(now, usegmt=True).encode("ascii") + b"\r\n"
    return _cached_line

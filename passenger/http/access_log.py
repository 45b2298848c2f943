"""The access log: one line per request in the combined format, plus the request id and upstream time.

    127.0.0.1 - - [24/Nov/2026:01:45:25 +0000] "GET /a HTTP/1.1" 200 13 "-" "curl/8.5.0" rid=9f0c...01 upstream=0.004

``upstream`` is the seconds from handing the request to an app process to the
end of its response ("-" when no process answered: a static file or an error
of the server's own).  Lines are buffered and flushed once a second (and at
stop), as nginx's ``buffer=`` does, so logging costs no syscall per request.
SIGUSR1 reopens the file, for logrotate.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any

from twisted.internet.task import LoopingCall

#: Seconds between two flushes of the buffered lines.
FLUSH_INTERVAL = 1.0
#: The request's HTTP version as logged (the parser's two; others are encoded when they come).
VERSIONS = {"1.1": b"1.1", "1.0": b"1.0"}


#: An absent (or empty) quoted field.
NONE = b'"-"'


def _quoted(value: bytes | None) -> bytes:
    if not value:
        return b'"-"'
    return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


class AccessLog:
    def __init__(self, path: str, clock: Any) -> None:
        """``path``: a file (appended to), or ``-`` for standard output."""
        self.path = path
        self._file: IO[bytes] = self._open()
        self._second = -1
        self._stamp = b""
        self._flusher = LoopingCall(self.flush)
        self._flusher.clock = clock
        self._flusher.start(FLUSH_INTERVAL, now=False)

    def _open(self) -> IO[bytes]:
        if self.path == "-":
            return sys.stdout.buffer
        return open(self.path, "ab", buffering=65536)  # kept open; closed by close()

    def log(self, peer: bytes, method: bytes, target: bytes, version: str, status: int, sent: int,
            headers: list[tuple[bytes, bytes]], request_id: bytes, upstream: float | None, now: float) -> None:
        """One line for a request that ended at ``now``; ``headers`` are its own (for Referer and User-Agent)."""
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("[%d/%b/%Y:%H:%M:%S +0000]", time.gmtime(second)).encode("ascii")
        referer = agent = NONE
        for name, value in headers:  # one pass, on the request's own list
            lname = name.lower()
            if lname == b"referer":
                referer = _quoted(value)
            elif lname == b"user-agent":
                agent = _quoted(value)
        self._file.write(b"%s - - %s \"%s %s HTTP/%s\" %d %d %s %s rid=%s upstream=%s\n" % (
            peer or b"-", self._stamp, method, target, VERSIONS.get(version) or version.encode("ascii"), status,
            sent, referer, agent, request_id or b"-", b"-" if upstream is None else b"%.3f" % upstream))

    def flush(self) -> None:
        try:
            self._file.flush()
        except OSError:
            pass

    def reopen(self) -> None:
        """logrotate moved the file: write to a new one at the same path."""
        if self.path == "-":
            return
        self.flush()
        old, self._file = self._file, self._open()
        old.close()

    def close(self) -> None:
        if self._flusher.running:
            self._flusher.stop()
        self.flush()
        if self.path != "-":
            self._file.close()

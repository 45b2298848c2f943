"""The access log: one line per request in the combined format, plus the request id and upstream time.

    127.0.0.1 - - [24/Nov/2026:01:45:25 +0000] "GET /a HTTP/1.1" 200 13 "-" "curl/8.5.0" rid=9f0c...01 upstream=0.004

``upstream`` is the seconds from handing the request to an app process to the
end of its response ("-" when no process answered: a static file or an error
of the server's own).  Lines are held in a list and written with one ``write``
once a second, when 64 KiB are held, and at stop, as nginx's ``buffer=`` does,
so logging costs no syscall per request (and no lock: a buffered file object
takes one on every ``write``).  SIGUSR1 reopens the file, for logrotate.
"""

from __future__ import annotations

import errno
import sys
import time
from typing import IO, Any, ClassVar, Final

from twisted.internet.task import LoopingCall
from twisted.logger import Logger

#: Seconds between two flushes of the held lines.
FLUSH_INTERVAL: Final = 1.0
#: Bytes of lines held before they are written without waiting for the next flush.
BUFFER_SIZE: Final = 65536
#: The request's HTTP version as logged (the parser's two; others are encoded when they come).
VERSIONS: Final = {"1.1": b"1.1", "1.0": b"1.0"}


#: An absent (or empty) quoted field.
NONE: Final = b'"-"'
#: A line, with the upstream time in whole milliseconds (formatting a float costs more than two ints).
LINE: Final = b"%s - - %s \"%s %s HTTP/%s\" %s %d %s %s rid=%s upstream=%s\n"
#: A line of a request no process answered.
LINE_NO_UPSTREAM: Final = b"%s - - %s \"%s %s HTTP/%s\" %s %d %s %s rid=%s upstream=-\n"
#: The text of every status code, and of every upstream time under a second: an index costs less than
#: formatting the number (a line took 380 ns with them formatted, 270 with these).
STATUS_TEXT: Final = tuple(b"%d" % code for code in range(600))
MILLIS_TEXT: Final = tuple(b"0.%03d" % ms for ms in range(1000))


def _quoted(value: bytes | None) -> bytes:
    if not value:
        return b'"-"'
    return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


class AccessLog:
    log_failure: ClassVar[Logger] = Logger()

    def __init__(self, path: str, clock: Any) -> None:
        """``path``: a file (appended to), or ``-`` for standard output."""
        self.path = path
        self._file: IO[bytes] = self._open()
        self._lines: list[bytes] = []
        self._held = 0
        self._failing = False
        self._second = -1
        self._stamp = b""
        self._flusher = LoopingCall(self.flush)
        self._flusher.clock = clock
        self._flusher.start(FLUSH_INTERVAL, now=False)

    def _open(self) -> IO[bytes]:
        if self.path == "-":
            return sys.stdout.buffer
        return open(self.path, "ab", buffering=0)  # kept open; closed by close(); the lines are our buffer

    def log(self, peer: bytes, method: bytes, target: bytes, version: str, status: int, sent: int,
            headers: list[tuple[bytes, bytes]], request_id: bytes, upstream: float | None, now: float) -> None:
        """One line for a request that ended at ``now``; ``headers`` are its own (for Referer and User-Agent)."""
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("[%d/%b/%Y:%H:%M:%S +0000]", time.gmtime(second)).encode("ascii")
        referer = agent = NONE
        for name, value in headers:  # one pass, on the request's own list; lower() only on a length match
            size = len(name)
            if size == 7 and name.lower() == b"referer":
                referer = _quoted(value)
            elif size == 10 and name.lower() == b"user-agent":
                agent = _quoted(value)
        http = VERSIONS.get(version) or version.encode("ascii")
        code = STATUS_TEXT[status] if 0 <= status < 600 else b"%d" % status
        if upstream is None:
            line = LINE_NO_UPSTREAM % (peer or b"-", self._stamp, method, target, http, code, sent, referer,
                                       agent, request_id or b"-")
        else:
            ms = max(0, int(upstream * 1000.0 + 0.5))  # not below 0 if the wall clock stepped back
            line = LINE % (peer or b"-", self._stamp, method, target, http, code, sent, referer, agent,
                           request_id or b"-", MILLIS_TEXT[ms] if ms < 1000 else b"%d.%03d" % (ms // 1000, ms % 1000))
        self._lines.append(line)
        self._held += len(line)
        if self._held >= BUFFER_SIZE:
            self.flush()

    def flush(self) -> None:
        """Write the held lines; on an error (a full disk) they are dropped, with one warning until it clears."""
        if not self._lines:
            return
        data = b"".join(self._lines)
        self._lines = []
        self._held = 0
        try:
            view = memoryview(data)
            while view:
                written = self._file.write(view)
                if not written:  # a non-blocking stdout that is full
                    raise BlockingIOError(errno.EAGAIN, "the output is full")
                view = view[written:]
            if self.path == "-":
                self._file.flush()
        except OSError as e:
            if not self._failing:
                self._failing = True
                self.log_failure.warn("Access log {path}: could not write ({error}); lines are lost until it can",
                                      path=self.path, error=e.strerror or e)
            return
        self._failing = False

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

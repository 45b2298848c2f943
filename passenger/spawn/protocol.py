"""The child's ProcessProtocol: split output into lines, log them, report the exit.

It holds no policy (twisted-style I-4): the process object decides what an
exit means.
"""

from __future__ import annotations

import collections
from collections.abc import Callable

from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

#: Lines of output kept per process for error reports.
TAIL_LINES = 100
#: A line longer than this is logged in pieces rather than buffered without end.
MAX_LINE = 16384

_STREAMS = {1: "stdout", 2: "stderr"}


class AppProcessProtocol(ProcessProtocol):
    def __init__(self, app: str, on_ended: Callable[[Failure], None]) -> None:
        self.app = app
        # One namespace per app, so the text log shows whose output a line is.
        self.log = Logger(namespace=f"passenger.app.{app}")
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self._on_ended = on_ended
        self._partial = {1: b"", 2: b""}

    pid: int | None = None

    def connectionMade(self) -> None:
        # Kept here: Twisted clears transport.pid before processEnded.
        self.pid = getattr(self.transport, "pid", None)

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        buffered = self._partial.get(childFD, b"") + data
        *lines, rest = buffered.split(b"\n")
        while len(rest) > MAX_LINE:
            lines.append(rest[:MAX_LINE])
            rest = rest[MAX_LINE:]
        self._partial[childFD] = rest
        for line in lines:
            self._emit(childFD, line)

    def _emit(self, fd: int, raw: bytes) -> None:
        line = raw.rstrip(b"\r").decode("utf-8", "replace")
        stream = _STREAMS.get(fd, f"fd{fd}")
        self.tail.append(f"[{stream}] {line}")
        self.log.info("App {pid} {stream}: {line}", app=self.app, pid=self.pid, stream=stream, line=line)

    def processEnded(self, reason: Failure) -> None:
        for fd, rest in self._partial.items():
            if rest:
                self._emit(fd, rest)
        self._partial = {1: b"", 2: b""}
        self._on_ended(reason)

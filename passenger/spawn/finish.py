"""Watching ``response/finish``: the one byte a Kuria app writes when it is ready ('1') or failed ('0').

The FIFO is read by the reactor, never with a blocking open or read.  The
server also holds the FIFO's write end, so the read end never reports end of
file before the app has written.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReadDescriptor
from twisted.python.failure import Failure
from zope.interface import implementer


@implementer(IReadDescriptor)
class FinishSignal:
    def __init__(self, reactor: Any, path: str, on_result: Callable[[bytes], None]) -> None:
        self._reactor = reactor
        self._path = path
        self._on_result = on_result
        self._fd = -1
        self._keep_open = -1

    def start(self) -> None:
        self._fd = os.open(self._path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        self._keep_open = os.open(self._path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        self._reactor.addReader(self)

    def stop(self) -> None:
        if self._fd < 0:
            return
        self._reactor.removeReader(self)
        os.close(self._fd)
        os.close(self._keep_open)
        self._fd = self._keep_open = -1

    def fileno(self) -> int:
        return self._fd

    def doRead(self) -> None:
        try:
            data = os.read(self._fd, 1)
        except OSError as e:
            if e.errno == errno.EAGAIN:
                return
            raise
        if data:
            self.stop()
            self._on_result(data)

    def connectionLost(self, reason: Failure) -> None:
        self.stop()

    def logPrefix(self) -> str:
        return "passenger-finish-fifo"

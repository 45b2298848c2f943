"""Hold a response for a client that reads slower than the app writes.

Passenger's "real-time disk-backed" response buffering: bytes go to the client
at once while it keeps up.  When its transport asks to pause, they are held,
in memory up to MEMORY_THRESHOLD, then in a deleted file in ``data_buffer_dir``;
only when the held bytes reach the high watermark is the app connection paused.
So a slow reader holds an app process no longer than the app takes to write
the high watermark: the process is released as soon as its response is
complete, and what is held drains to the client afterwards.

Tunnels (WebSockets) are not held: their client's pauses pause the app
connection directly, as plain back-pressure.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable, Sequence
from typing import Any, BinaryIO, ClassVar, Final

from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import classImplements

from passenger.http.fastpath import write_pieces

#: Bytes held in memory before the rest goes to a file (Passenger's DEFAULT_FILE_BUFFERED_CHANNEL_THRESHOLD).
MEMORY_THRESHOLD: Final = 128 * 1024
#: Bytes read back from the file per write to the client.
READ_SIZE: Final = 65536


class ResponseBuffer:
    """One client connection's response path, registered as its transport's producer while a response runs."""

    log: ClassVar[Logger] = Logger()

    def __init__(self, transport: Any, directory: str | None, high_watermark: int,
                 stalled: Callable[[bool], None]) -> None:
        self.transport = transport
        #: Told True when the client stops taking bytes and False when it takes more (its send deadline).
        self.stalled = stalled
        self.registered = False
        self.directory = directory
        #: Held bytes at which the app connection is paused (0: never, the disk is the limit).
        self.high_watermark = high_watermark
        #: The client's transport asked us to stop writing.
        self.client_paused = False
        #: The app connection whose reads we pause (None once its response is complete).
        self.upstream: Any = None
        self.upstream_paused = False
        #: Tunnels pass the client's pauses on to the app connection instead of holding bytes.
        self.direct = False
        #: Held bytes, oldest first: ``memory``, then the file from ``read_at``, then ``tail``.
        #: (Lists, not deques: they hold a few pieces at most while a client is slow, and most
        #: connections never hold any; an empty deque is 760 bytes, an empty list 56.)
        self.memory: list[bytes] = []
        self.memory_size = 0
        self.file: BinaryIO | None = None
        self.read_at = 0
        self.file_size = 0
        #: Bytes that came after the disk refused more (they wait in memory, the app paused).
        self.tail: list[bytes] = []
        self.held = 0
        #: Called once everything held has reached the transport (the response is complete).
        self.on_drained: Callable[[], None] | None = None

    def start(self, upstream_transport: Any, direct: bool) -> None:
        """A response (or a tunnel) from ``upstream_transport`` begins."""
        self.upstream = upstream_transport
        self.upstream_paused = False
        self.direct = direct
        self.on_drained = None
        self.registered = True
        self.transport.registerProducer(self, True)

    def write(self, pieces: Sequence[bytes]) -> None:
        """Bytes of the response, in order."""
        if not self.held and not self.client_paused:
            write_pieces(self.transport, pieces)
            return
        self._hold(pieces)

    def upstream_done(self, on_drained: Callable[[], None]) -> None:
        """The app's response is complete: its connection is free; ``on_drained`` runs when the client has it all."""
        upstream, self.upstream = self.upstream, None
        if self.upstream_paused and upstream is not None:
            upstream.resumeProducing()
        self.upstream_paused = False
        if self.held:
            self.on_drained = on_drained
        else:
            self.stop()
            on_drained()

    def stop(self) -> None:
        """The response ended (or broke): forget what is held and leave the transport."""
        self.upstream = None
        self.upstream_paused = False
        self.on_drained = None
        self._discard()
        if self.registered:
            self.registered = False
            self.client_paused = False
            self.transport.unregisterProducer()

    # IPushProducer, for the client's transport.
    def pauseProducing(self) -> None:
        self.client_paused = True
        self.stalled(True)
        if self.direct and self.upstream is not None and not self.upstream_paused:
            self.upstream_paused = True
            self.upstream.pauseProducing()

    def resumeProducing(self) -> None:
        self.client_paused = False
        self.stalled(False)
        if self.held:
            self._drain()
        if not self.held and self.upstream_paused and self.upstream is not None:
            self.upstream_paused = False
            self.upstream.resumeProducing()

    def stopProducing(self) -> None:
        """The client is gone."""
        self.registered = False
        self.upstream = None
        self.on_drained = None
        self._discard()

    # Holding and draining.
    def _hold(self, pieces: Sequence[bytes]) -> None:
        size = sum(map(len, pieces))
        self.held += size
        if self.tail or (self.file is None and self.memory_size + size > MEMORY_THRESHOLD and not self._open()):
            self.tail.extend(pieces)
            self._pause_upstream()
        elif self.file is None:
            self.memory.extend(pieces)
            self.memory_size += size
        elif not self._append(pieces, size):
            self.tail.extend(pieces)
            self._pause_upstream()
        if self.high_watermark and self.held >= self.high_watermark:
            self._pause_upstream()

    def _open(self) -> bool:
        try:
            self.file = tempfile.TemporaryFile(dir=self.directory, buffering=0)
        except OSError as e:
            self.log.warn("Cannot buffer a response to disk in {dir}: {error}; holding the app connection instead",
                          dir=self.directory or tempfile.gettempdir(), error=e)
            return False
        self.read_at = self.file_size = 0
        return True

    def _append(self, pieces: Sequence[bytes], size: int) -> bool:
        file = self.file
        assert file is not None
        try:
            written = os.writev(file.fileno(), pieces)
            if written < size:  # rare for a regular file; finish it with one copy
                os.write(file.fileno(), b"".join(pieces)[written:])
        except OSError as e:
            self.log.warn("Cannot buffer a response to disk: {error}; holding the app connection instead",
                          error=os.strerror(e.errno) if e.errno in (errno.ENOSPC, errno.EDQUOT) else e)
            return False  # what reached the file past file_size is never read: the file takes no more
        self.file_size += size
        return True

    def _pause_upstream(self) -> None:
        if self.upstream is not None and not self.upstream_paused:
            self.upstream_paused = True
            self.upstream.pauseProducing()

    def _drain(self) -> None:
        """Write held bytes until the client's transport pauses us again or nothing is held."""
        transport = self.transport
        memory = self.memory
        while memory and not self.client_paused:
            piece = memory.pop(0)
            self.memory_size -= len(piece)
            self.held -= len(piece)
            transport.write(piece)
        file = self.file
        if file is not None:
            while self.read_at < self.file_size and not self.client_paused:
                piece = os.pread(file.fileno(), READ_SIZE, self.read_at)
                self.read_at += len(piece)
                self.held -= len(piece)
                transport.write(piece)
            if self.read_at >= self.file_size:
                self.file = None
                file.close()  # the disk space goes back at once
        tail = self.tail
        while tail and not self.client_paused and self.file is None:
            piece = tail.pop(0)
            self.held -= len(piece)
            transport.write(piece)
        if not self.held and self.on_drained is not None:
            on_drained = self.on_drained
            self.stop()
            on_drained()

    def _discard(self) -> None:
        self.memory.clear()
        self.tail.clear()
        self.memory_size = self.held = 0
        file, self.file = self.file, None
        if file is not None:
            file.close()


classImplements(ResponseBuffer, IPushProducer)

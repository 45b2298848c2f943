"""Pipes for splice(2): a response body goes from the app's socket to the client's without entering Python.

Relaying a large body through user space copies every byte twice (``recv``
into a bytes object, ``send`` out of it): for 1 MiB responses those copies
were a fifth of the server's CPU (perf, bench/compare_bench.py's 1mb run).
``splice`` moves the socket's pages into a pipe and from the pipe into the
other socket; the bytes are never copied into the process.

``UpstreamConnection`` decides when a body can take this path and drives it
(``passenger.http.upstream``); this module keeps the pipes.  A pipe is made
when a body starts and kept for the next one when it ends empty, up to
``SPARE_PIPES`` of them.
"""

from __future__ import annotations

import fcntl
import os

#: Whether this system has splice(2) (Linux, Python 3.10+).
AVAILABLE = hasattr(os, "splice") and hasattr(os, "SPLICE_F_NONBLOCK")
#: Bytes a pipe holds, and so the most one splice moves (Linux's default is 64 KiB).
PIPE_SIZE = 256 * 1024
#: Bodies with fewer bytes left than this are relayed through user space (a pipe and two calls a piece
#: cost more than the copies they save).
SPLICE_MIN = 64 * 1024
#: Empty pipes kept for later bodies.
SPARE_PIPES = 16
#: Flags of every splice: move pages rather than copy where the kernel can, never block.
FLAGS = (os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK) if AVAILABLE else 0

_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)

_spare: list[tuple[int, int]] = []


def take_pipe() -> tuple[int, int] | None:
    """A pipe (read end, write end), both non-blocking; None if none can be made (out of descriptors)."""
    if _spare:
        return _spare.pop()
    try:
        read_end, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.fcntl(write_end, _F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        pass  # over /proc/sys/fs/pipe-max-size or the user's pipe quota: the default size works too
    return read_end, write_end


def give_back(pipe: tuple[int, int], empty: bool) -> None:
    """A body is done with ``pipe``: kept if it is empty and there is room, else closed."""
    if empty and len(_spare) < SPARE_PIPES:
        _spare.append(pipe)
        return
    os.close(pipe[0])
    os.close(pipe[1])


def read_all(read_end: int, size: int) -> bytes:
    """The ``size`` bytes a pipe holds (a body that leaves the splice path takes them with it)."""
    pieces = []
    while size > 0:
        piece = os.read(read_end, size)
        if not piece:
            break
        pieces.append(piece)
        size -= len(piece)
    return b"".join(pieces)

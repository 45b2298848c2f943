"""The sends of a reactor pass in one system call, through an io_uring.

At the end of a pass the eager transports send what they held, one socket
after another (``fastpath.send_corked``).  On a kernel that preempts only on
the way back to user space, each of those ``send`` calls woke a peer waiting
on this CPU (a wrk thread, an app process: the scheduler places them beside
the server that woke them) and handed it the CPU as the call returned: the
peer read one response, slept, and the server's next send woke it again.
``perf sched`` at half the maximum rate counted 5,360 such preemptions of the
server in 2 s against 1,977 sleeps, the server running 5 µs between them.
Submitted as one ring, the sends all go out before the call returns, and each
peer wakes once to everything it was sent.

The ring is the least that does this: ``IORING_OP_SEND`` entries with
``MSG_DONTWAIT`` (the kernel then completes each at once, sent or ``EAGAIN``,
rather than waiting for room), and one ``io_uring_enter`` that submits them and
waits for their completions before it returns.  Each entry points at the data
of a bytes object (its pieces joined when there are several), which the ring
holds until then; nothing is lent to the kernel past the call.  Copying into a
staging buffer of ours instead cost 0.25 µs more per send.  Where io_uring is missing or
refused (an old kernel, a seccomp profile, ``kernel.io_uring_disabled``),
``open_ring`` raises and the transports send one by one as before.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import struct
import sys
from collections.abc import Callable, Sequence
from typing import Any, Final

# The system calls (the same numbers on every architecture, being newer than their unification).
_SYS_IO_URING_SETUP: Final = 425
_SYS_IO_URING_ENTER: Final = 426

_OFF_SQ_RING: Final = 0
_OFF_SQES: Final = 0x10000000
_FEAT_SINGLE_MMAP: Final = 1
_SETUP_SUBMIT_ALL: Final = 1 << 7  # an entry the kernel refuses completes with its error; the rest go on
_ENTER_GETEVENTS: Final = 1
_OP_SEND: Final = 26
_SEND_FLAGS: Final = 0x40 | 0x4000  # MSG_DONTWAIT | MSG_NOSIGNAL

#: struct io_uring_params: ten u32, then struct io_sqring_offsets and struct io_cqring_offsets
#: (eight u32 and a u64 each).
_PARAMS: Final = struct.Struct("<10I8IQ8IQ")
#: The part of a submission entry a send sets (opcode, flags, ioprio, fd, off, addr, len, msg_flags,
#: user_data); the rest of the 64 bytes stays zero.
_SQE_SIZE: Final = 64
_SQE: Final = struct.Struct("<BBHiQQIIQ")
_CQE_SIZE: Final = 16
_CQE_WORDS: Final = _CQE_SIZE // 4
#: Where a bytes object's data starts, from its address (``id``): CPython's layout, checked by ``open_ring``.
_BYTES_DATA: Final = sys.getsizeof(b"") - 1

#: Submission entries in the ring: the sends of one submit at most.
ENTRIES: Final = 256
#: A send of several pieces larger than this goes the usual way (joining them would copy more than the
#: call saves).
LARGEST: Final = 16 * 1024


class Ring:
    """An io_uring that sends batches of byte strings, each to its socket, in one system call.

    ``add`` stages a send and ``submit`` makes them all, returning each one's result in order: the
    bytes the kernel took, or minus the errno."""

    def __init__(self, fd: int, params: tuple[int, ...], syscall: Any) -> None:
        self.fd = fd
        self._syscall = syscall
        sq_entries, cq_entries = params[0], params[1]
        sq_tail, sq_mask, sq_array = params[11], params[12], params[16]
        cq_head, cq_tail, cq_mask, cqes = params[19], params[20], params[21], params[24]
        ring_size = max(sq_array + sq_entries * 4, cqes + cq_entries * _CQE_SIZE)
        self._ring = mmap.mmap(fd, ring_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE,
                               offset=_OFF_SQ_RING)
        self._sqes = mmap.mmap(fd, sq_entries * _SQE_SIZE, mmap.MAP_SHARED,
                               mmap.PROT_READ | mmap.PROT_WRITE, offset=_OFF_SQES)
        #: ``_SQE.pack_into``, bound once: compiled code would look the method up on every send.
        self._pack_sqe: Callable[..., None] = _SQE.pack_into
        # The rings as 32-bit words (every offset the kernel gives is a multiple of 4; a completion is 16
        # bytes: user_data, res, flags), unsigned and signed.
        words = self._words = memoryview(self._ring).cast("I")
        self._ints = memoryview(self._ring).cast("i")
        self._sq_tail_word, self._cq_head_word, self._cq_tail_word = sq_tail // 4, cq_head // 4, cq_tail // 4
        self._sq_mask = words[sq_mask // 4]
        self._cq_mask = words[cq_mask // 4]
        self._cqes_word = cqes // 4
        self._sq_tail = words[sq_tail // 4]
        # Entry i of the ring is always submission entry i.
        for index in range(sq_entries):
            words[sq_array // 4 + index] = index
        self.capacity = min(sq_entries, ENTRIES)
        #: What the staged sends point at: kept alive until ``submit`` returns.
        self._held: list[bytes] = []
        self.staged = 0
        #: A submit failed after the kernel took its sends (see ``submit``).
        self.lost_sends = False

    def add(self, fd: int, pieces: Sequence[Any], size: int) -> bool:
        """Stage the send of ``pieces`` (``size`` bytes in all) to ``fd``; False if it does not fit
        (too large to join, or the ring is full: submit first)."""
        staged = self.staged
        if staged >= self.capacity or (size > LARGEST and len(pieces) > 1):
            return False
        joined: object = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        data = joined if type(joined) is bytes else bytes(joined)  # type: ignore[call-overload]  # a buffer: copied
        self._held.append(data)
        slot = (self._sq_tail + staged) & self._sq_mask
        self._pack_sqe(self._sqes, slot * _SQE_SIZE, _OP_SEND, 0, 0, fd, 0, id(data) + _BYTES_DATA, len(data),
                       _SEND_FLAGS, staged)
        self.staged = staged + 1
        return True

    def submit(self) -> list[int]:
        """Make the staged sends; each one's bytes sent (or minus its errno), in the order staged.

        OSError: the ring itself failed, before it took any of them (they can be sent another way), or
        after (``lost_sends`` is then set: how much of each went out is unknown).  Either way, close
        the ring (the reactor does, ``ring_failed``)."""
        count = self.staged
        if not count:
            return []
        words = self._words
        self._sq_tail = (self._sq_tail + count) & 0xFFFFFFFF
        words[self._sq_tail_word] = self._sq_tail
        results = [-errno.EAGAIN] * count
        done = 0
        to_submit = count
        while done < count:
            entered = self._syscall(_SYS_IO_URING_ENTER, self.fd, to_submit, count - done, _ENTER_GETEVENTS, None, 0)
            if entered < 0:
                error = ctypes.get_errno()
                if error != errno.EINTR:
                    self.lost_sends = not to_submit  # an error return takes nothing
                    raise OSError(error, os.strerror(error))
            else:
                to_submit = 0  # SUBMIT_ALL: every entry was taken, and each one completes
            head = words[self._cq_head_word]
            tail = words[self._cq_tail_word]
            while head != tail:
                at = self._cqes_word + (head & self._cq_mask) * _CQE_WORDS
                results[words[at]] = self._ints[at + 2]  # user_data (below 2**32), res
                head = (head + 1) & 0xFFFFFFFF
                done += 1
            words[self._cq_head_word] = head
        self.staged = 0
        self._held = []
        return results

    def close(self) -> None:
        """Unmap the rings and close the descriptor (again: nothing)."""
        if self.fd < 0:
            return
        self._words.release()
        self._ints.release()
        self._sqes.close()
        self._ring.close()
        os.close(self.fd)
        self.fd = -1


def open_ring(entries: int = ENTRIES) -> Ring:
    """A ring for batched sends; OSError where io_uring is unavailable or refused (the kernel's reason)."""
    libc = ctypes.PyDLL(None, use_errno=True)  # no GIL release: every call returns at once
    syscall = libc.syscall
    syscall.restype = ctypes.c_long
    syscall.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_long, ctypes.c_long, ctypes.c_long,
                        ctypes.c_void_p, ctypes.c_long]
    params = ctypes.create_string_buffer(_PARAMS.pack(0, 0, _SETUP_SUBMIT_ALL, *[0] * 25), _PARAMS.size)
    fd = syscall(_SYS_IO_URING_SETUP, entries, ctypes.addressof(params), 0, 0, None, 0)
    if fd < 0:
        error = ctypes.get_errno()
        raise OSError(error, f"io_uring_setup: {os.strerror(error)}")
    values = _PARAMS.unpack(params.raw)
    try:
        probe = b"where a bytes object keeps its data"
        if ctypes.string_at(id(probe) + _BYTES_DATA, len(probe)) != probe or sys.byteorder != "little":
            raise OSError(errno.ENOTSUP, "this Python does not lay bytes out as CPython does on little-endian")
        if not values[5] & _FEAT_SINGLE_MMAP:
            raise OSError(errno.ENOSYS, "io_uring_setup: the kernel's io_uring is too old (no single mmap)")
        return Ring(fd, values, syscall)
    except BaseException:
        os.close(fd)
        raise

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
rather than waiting for room), copied into a staging buffer of ours so that no
Python object's memory is lent to the kernel, and one ``io_uring_enter`` that
submits them and collects their completions.  Where io_uring is missing or
refused (an old kernel, a seccomp profile, ``kernel.io_uring_disabled``),
``open_ring`` raises and the transports send one by one as before.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import struct
from collections.abc import Sequence
from typing import Any

# The system calls (the same numbers on every architecture, being newer than their unification).
_SYS_IO_URING_SETUP = 425
_SYS_IO_URING_ENTER = 426

_OFF_SQ_RING = 0
_OFF_SQES = 0x10000000
_FEAT_SINGLE_MMAP = 1
_SETUP_SUBMIT_ALL = 1 << 7  # an entry the kernel refuses completes with its error; the rest go on
_ENTER_GETEVENTS = 1
_OP_SEND = 26
_SEND_FLAGS = 0x40 | 0x4000  # MSG_DONTWAIT | MSG_NOSIGNAL

#: struct io_uring_params: ten u32, then struct io_sqring_offsets and struct io_cqring_offsets
#: (eight u32 and a u64 each).
_PARAMS = struct.Struct("<10I8IQ8IQ")
#: The part of a submission entry a send sets (opcode, flags, ioprio, fd, off, addr, len, msg_flags,
#: user_data); the rest of the 64 bytes stays zero.
_SQE_SIZE = 64
_SQE = struct.Struct("<BBHiQQIIQ")
_CQE_SIZE = 16
_CQE = struct.Struct("<QiI")
_U32 = struct.Struct("<I")

#: Submission entries in the ring: the sends of one submit at most.
ENTRIES = 256
#: Bytes the staging buffer holds: the sends of one submit at most.
STAGING = 256 * 1024
#: A send larger than this goes the usual way (its copy would cost more than the call it saves).
LARGEST = 16 * 1024


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
        ring = self._ring
        self._sq_tail_at, self._cq_head_at, self._cq_tail_at = sq_tail, cq_head, cq_tail
        self._sq_mask = _U32.unpack_from(ring, sq_mask)[0]
        self._cq_mask = _U32.unpack_from(ring, cq_mask)[0]
        self._cqes_at = cqes
        self._sq_tail = _U32.unpack_from(ring, sq_tail)[0]
        # Entry i of the ring is always submission entry i.
        for index in range(sq_entries):
            _U32.pack_into(ring, sq_array + 4 * index, index)
        self.capacity = min(sq_entries, ENTRIES)
        self._staging = ctypes.create_string_buffer(STAGING)
        self._view = memoryview(self._staging).cast("B")
        self._base = ctypes.addressof(self._staging)
        self._used = 0
        self.staged = 0

    def add(self, fd: int, pieces: Sequence[bytes], size: int) -> bool:
        """Stage the send of ``pieces`` (``size`` bytes in all) to ``fd``; False if it does not fit
        (too large, or the ring or the buffer is full: submit first)."""
        used = self._used
        if size > LARGEST or used + size > STAGING or self.staged >= self.capacity:
            return False
        view = self._view
        at = used
        for piece in pieces:
            end = at + len(piece)
            view[at:end] = piece
            at = end
        slot = (self._sq_tail + self.staged) & self._sq_mask
        _SQE.pack_into(self._sqes, slot * _SQE_SIZE, _OP_SEND, 0, 0, fd, 0, self._base + used, size,
                       _SEND_FLAGS, self.staged)
        self.staged += 1
        self._used = at
        return True

    def submit(self) -> list[int]:
        """Make the staged sends; each one's bytes sent (or minus its errno), in the order staged."""
        count = self.staged
        if not count:
            return []
        ring = self._ring
        self._sq_tail = (self._sq_tail + count) & 0xFFFFFFFF
        _U32.pack_into(ring, self._sq_tail_at, self._sq_tail)
        results = [-errno.EAGAIN] * count
        done = 0
        to_submit = count
        while done < count:
            entered = self._syscall(_SYS_IO_URING_ENTER, self.fd, to_submit, count - done, _ENTER_GETEVENTS, None, 0)
            if entered < 0:
                error = ctypes.get_errno()
                if error != errno.EINTR:
                    raise OSError(error, os.strerror(error))
            else:
                to_submit = 0  # SUBMIT_ALL: every entry was taken, and each one completes
            head = _U32.unpack_from(ring, self._cq_head_at)[0]
            tail = _U32.unpack_from(ring, self._cq_tail_at)[0]
            while head != tail:
                user_data, res, _flags = _CQE.unpack_from(ring, self._cqes_at + (head & self._cq_mask) * _CQE_SIZE)
                results[user_data] = res
                head = (head + 1) & 0xFFFFFFFF
                done += 1
            _U32.pack_into(ring, self._cq_head_at, head)
        self.staged = 0
        self._used = 0
        return results

    def close(self) -> None:
        """Unmap the rings and close the descriptor (again: nothing)."""
        if self.fd < 0:
            return
        self._view.release()
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
        if not values[5] & _FEAT_SINGLE_MMAP:
            raise OSError(errno.ENOSYS, "io_uring_setup: the kernel's io_uring is too old (no single mmap)")
        return Ring(fd, values, syscall)
    except BaseException:
        os.close(fd)
        raise

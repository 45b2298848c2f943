"""Which TCP ports an app's process tree listens on, read from Linux /proc.

A generic app is ready only once 127.0.0.1:$PORT accepts a connection (GLS
§1.7).  When it never does, the usual cause is an app that ignores $PORT or
listens on ::1 only (phusion/passenger#2563), and a bare spawn timeout says
neither.  Reading /proc lets the spawner name the actual address in its error.

Everything here is plain, non-blocking file reads of /proc (a few per process),
bounded by :data:`MAX_PROCESSES`; a process may exit while we look, so missing
entries and permission errors only shrink the answer, they never raise.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from collections.abc import Iterable
from typing import Literal

import attrs

#: ``st`` column value of a socket in TCP_LISTEN state.
LISTEN = "0A"
#: Walk at most this many processes of a tree, so a fork bomb cannot stall us.
MAX_PROCESSES = 512
#: Addresses on which a connect to 127.0.0.1 arrives.  ``::`` is taken as
#: dual-stack, the Linux default (net.ipv6.bindv6only = 0); /proc cannot show
#: IPV6_V6ONLY, and a wrong guess only means the caller keeps waiting.
REACHABLE_ADDRESSES = frozenset({"127.0.0.1", "0.0.0.0", "::ffff:127.0.0.1", "::"})

ByteOrder = Literal["little", "big"]


@attrs.frozen
class Listening:
    """One listening TCP socket: ``pid`` is the first process of the tree that holds it."""

    family: str
    address: str
    port: int
    pid: int

    @property
    def endpoint(self) -> str:
        """``127.0.0.1:3000`` or ``[::1]:3000``, as a user would type it."""
        return f"[{self.address}]:{self.port}" if ":" in self.address else f"{self.address}:{self.port}"


def decode_address(hex_address: str, byteorder: ByteOrder = sys.byteorder) -> str:
    """Decode the address half of a /proc/net/tcp{,6} ``local_address`` field.

    The kernel prints each 32-bit word of the network-order address with
    ``%08X`` as a host-order integer, so on little-endian machines the bytes of
    every word appear reversed (127.0.0.1 is ``0100007F``).
    """
    if len(hex_address) not in (8, 32):
        raise ValueError(f"not a /proc/net/tcp address: {hex_address!r}")
    packed = b"".join(int(hex_address[i:i + 8], 16).to_bytes(4, byteorder) for i in range(0, len(hex_address), 8))
    if len(packed) == 4:
        return str(ipaddress.IPv4Address(packed))
    v6 = ipaddress.IPv6Address(packed)
    if v6.ipv4_mapped is not None:  # Python < 3.13 would print ::ffff:7f00:1
        return f"::ffff:{v6.ipv4_mapped}"
    return str(v6)


def decode_endpoint(field: str, byteorder: ByteOrder = sys.byteorder) -> tuple[str, int]:
    """``0100007F:0BB8`` -> ``("127.0.0.1", 3000)``; the port is printed in plain hex."""
    hex_address, _, hex_port = field.partition(":")
    return decode_address(hex_address, byteorder), int(hex_port, 16)


def parse_listen_rows(text: str, byteorder: ByteOrder = sys.byteorder) -> dict[int, tuple[str, int]]:
    """Map socket inode -> (address, port) for the LISTEN rows of a /proc/net/tcp{,6} file.

    Malformed rows are skipped rather than fatal: the format is the kernel's
    and we only need the rows we can read.
    """
    found: dict[int, tuple[str, int]] = {}
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10 or fields[3] != LISTEN:
            continue
        try:
            inode = int(fields[9])
            endpoint = decode_endpoint(fields[1], byteorder)
        except ValueError:
            continue
        if inode:
            found[inode] = endpoint
    return found


def listening_ports(pid: int, include_children: bool = True, *, proc: str = "/proc") -> list[Listening]:
    """The TCP sockets that ``pid`` (and, by default, its descendants) listen on.

    Sorted by port, family, address.  Apps are often started through a shell
    or a launcher (``sh -c``, ``npm start``) whose child does the listening,
    hence ``include_children``.  ``proc`` exists for tests with a fake tree.
    """
    pids = _process_tree(proc, pid) if include_children else [pid]
    owner: dict[int, int] = {}
    for p in pids:
        for inode in _socket_inodes(proc, p):
            owner.setdefault(inode, p)
    if not owner:
        return []
    found: set[Listening] = set()
    seen_namespaces: set[str] = set()
    for p in dict.fromkeys(owner.values()):
        namespace = _readlink(f"{proc}/{p}/ns/net") or f"pid {p}"
        if namespace in seen_namespaces:
            continue
        seen_namespaces.add(namespace)
        for family in ("tcp", "tcp6"):
            text = _read(f"{proc}/{p}/net/{family}")
            if text is None:
                continue
            for inode, (address, port) in parse_listen_rows(text).items():
                if inode in owner:
                    found.add(Listening(family, address, port, owner[inode]))
    return sorted(found, key=lambda entry: (entry.port, entry.family, entry.address, entry.pid))


def not_exec_yet(pid: int, parent: int, *, proc: str = "/proc") -> bool:
    """``pid`` is still the copy of ``parent`` that fork made: it runs the same command line.

    Between fork and exec a child holds copies of its parent's descriptors, the
    server's listening sockets among them; what it listens on says nothing of
    the app yet.  Unreadable entries answer False (look at it as it is).
    """
    mine = _read_bytes(f"{proc}/{pid}/cmdline")
    return bool(mine) and mine == _read_bytes(f"{proc}/{parent}/cmdline")


def describe_wrong_listen(expected_port: int, found: list[Listening]) -> str | None:
    """A one-line reason why 127.0.0.1:``expected_port`` does not accept, or None.

    None when the app is reachable there (the probe will succeed shortly) and
    when it listens nowhere yet (it may still be booting; keep waiting).
    """
    if not found:
        return None
    if any(entry.port == expected_port and entry.address in REACHABLE_ADDRESSES for entry in found):
        return None
    target = f"127.0.0.1:{expected_port}"
    on_port = [entry for entry in found if entry.port == expected_port]
    if on_port:
        if any(entry.family == "tcp6" for entry in on_port):
            return f"the app listens on {_endpoints(on_port)} only; it must listen on {target} (IPv4)"
        return f"the app listens on {_endpoints(on_port)} only; it must listen on {target} or 0.0.0.0:{expected_port}"
    return f"the app listens on {_endpoints(found)}, not on port {expected_port} given in $PORT: make it use $PORT"


def _endpoints(entries: Iterable[Listening], limit: int = 4) -> str:
    unique = list(dict.fromkeys(entry.endpoint for entry in entries))
    shown = ", ".join(unique[:limit])
    return shown if len(unique) <= limit else f"{shown} and {len(unique) - limit} more"


def _process_tree(proc: str, root: int) -> list[int]:
    """``root`` and its descendants, breadth first.

    Uses /proc/PID/task/TID/children (one read per thread) and falls back to
    one scan of every /proc/PID/stat when the kernel lacks CONFIG_PROC_CHILDREN.
    """
    order = [root]
    seen = {root}
    by_parent: dict[int, list[int]] | None = None
    index = 0
    while index < len(order) and len(order) < MAX_PROCESSES:
        pid = order[index]
        index += 1
        children = _children(proc, pid) if by_parent is None else by_parent.get(pid, [])
        if children is None:
            by_parent = _children_by_parent(proc)
            children = by_parent.get(pid, [])
        for child in children:
            if child not in seen and len(order) < MAX_PROCESSES:
                seen.add(child)
                order.append(child)
    return order


def _children(proc: str, pid: int) -> list[int] | None:
    """Children of every thread of ``pid``; None if this kernel has no ``children`` files."""
    task_dir = f"{proc}/{pid}/task"
    try:
        tids = os.listdir(task_dir)
    except OSError:
        return []
    children: list[int] = []
    for tid in tids:
        try:
            with open(f"{task_dir}/{tid}/children") as f:
                children.extend(int(word) for word in f.read().split())
        except FileNotFoundError:
            if os.path.isdir(f"{task_dir}/{tid}"):
                return None
        except (OSError, ValueError):
            continue
    return children


def _children_by_parent(proc: str) -> dict[int, list[int]]:
    by_parent: dict[int, list[int]] = {}
    try:
        names = os.listdir(proc)
    except OSError:
        return by_parent
    for name in names:
        if not name.isdigit():
            continue
        stat = _read(f"{proc}/{name}/stat")
        if stat is None:
            continue
        try:  # "pid (comm) state ppid ...": comm may itself contain ") "
            ppid = int(stat.rpartition(")")[2].split()[1])
        except (IndexError, ValueError):
            continue
        by_parent.setdefault(ppid, []).append(int(name))
    return by_parent


def _read_bytes(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def _socket_inodes(proc: str, pid: int) -> list[int]:
    fd_dir = f"{proc}/{pid}/fd"
    try:
        fds = os.listdir(fd_dir)
    except OSError:
        return []
    inodes = []
    for fd in fds:
        target = _readlink(f"{fd_dir}/{fd}")
        if target is not None and target.startswith("socket:[") and target.endswith("]"):
            try:
                inodes.append(int(target[8:-1]))
            except ValueError:
                continue
    return inodes


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except (OSError, UnicodeDecodeError):
        return None


def _readlink(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None

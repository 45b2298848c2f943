"""passenger.spawn.sockets: /proc/net/tcp decoding, a fake /proc tree, and real listening processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from passenger.spawn.sockets import (
    Listening,
    decode_address,
    decode_endpoint,
    describe_wrong_listen,
    listening_ports,
    not_exec_yet,
    parse_listen_rows,
)
from tests.polling import wait_for

T = TypeVar("T")

# Rows captured from /proc/self/net/tcp{,6} on x86_64 (little-endian) while the
# sockets named in the comments were open; inode is the socket's st_ino.
TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:0BB9 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 167107 1 0000000010846ade 100 0 0 10 0
   1: 0200007F:0BBA 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 167108 1 000000004755afdd 100 0 0 10 0
   3: 0100007F:0BB8 00000000:0000 0A 00000000:00000001 00:00000000 00000000     0        0 167106 2 00000000222bf991 100 0 0 10 0
   4: 0100007F:C332 0100007F:0BB8 01 00000000:00000000 00:00000000 00000000     0        0 167112 2 000000002b327736 20 0 0 10 -1
   5: 0100007F:0BB8 0100007F:C332 01 00000000:00000000 00:00000000 00000000     0        0 0 1 0000000039ba4335 20 0 0 10 -1
"""
# 0.0.0.0:3001 (167107), 127.0.0.2:3002 (167108), 127.0.0.1:3000 (167106), then both ends of a connection to 3000.
TCP6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0000000000000000FFFF00000100007F:303B 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 167111 1 00000000231ba280 100 0 0 10 0
   1: 00000000000000000000000000000000:303A 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 167110 1 0000000060670be7 100 0 0 10 0
   2: 00000000000000000000000001000000:3039 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 167109 1 000000007c6059ae 100 0 0 10 0
   0: 000000FD000000000000000002000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 167176 1 00000000231ba280 100 0 0 10 0
   1: 000080FE00000000FF00FC00010000FE:1F91 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 167177 1 0000000060670be7 100 0 0 10 0
"""  # noqa: E501
# [::ffff:127.0.0.1]:12347, [::]:12346, [::1]:12345, [fd00::2]:8080, [fe80::fc:ff:fe00:1]:8081.


# decoding


@pytest.mark.parametrize(("field", "expected"), [
    ("0100007F:0BB8", ("127.0.0.1", 3000)),
    ("00000000:0BB9", ("0.0.0.0", 3001)),
    ("0200007F:0BBA", ("127.0.0.2", 3002)),
    ("0000000000000000FFFF00000100007F:303B", ("::ffff:127.0.0.1", 12347)),
    ("00000000000000000000000000000000:303A", ("::", 12346)),
    ("00000000000000000000000001000000:3039", ("::1", 12345)),
    ("000000FD000000000000000002000000:1F90", ("fd00::2", 8080)),
    ("000080FE00000000FF00FC00010000FE:1F91", ("fe80::fc:ff:fe00:1", 8081)),
])
def test_decode_endpoint_little_endian(field: str, expected: tuple[str, int]) -> None:
    assert decode_endpoint(field, "little") == expected


def test_decode_address_follows_byte_order() -> None:
    # A big-endian kernel prints the words in network order.
    assert decode_address("7F000001", "big") == "127.0.0.1"
    assert decode_address("00000000000000000000000000000001", "big") == "::1"
    assert decode_address("00000000000000000000FFFFC0000202", "big") == "::ffff:192.0.2.2"
    assert decode_address("0100007F", "big") == "1.0.0.127"


@pytest.mark.parametrize("bad", ["", "0100007", "0100007F00", "XYZW007F"])
def test_decode_address_rejects_malformed(bad: str) -> None:
    with pytest.raises(ValueError):
        decode_address(bad, "little")


def test_parse_listen_rows_keeps_only_listening_sockets() -> None:
    assert parse_listen_rows(TCP, "little") == {
        167107: ("0.0.0.0", 3001),
        167108: ("127.0.0.2", 3002),
        167106: ("127.0.0.1", 3000),
    }
    assert parse_listen_rows(TCP6, "little") == {
        167111: ("::ffff:127.0.0.1", 12347),
        167110: ("::", 12346),
        167109: ("::1", 12345),
        167176: ("fd00::2", 8080),
        167177: ("fe80::fc:ff:fe00:1", 8081),
    }


def test_parse_listen_rows_skips_malformed_rows() -> None:
    header = TCP.splitlines()[0]
    text = "\n".join([header, "   0: garbage", "   1: ZZZZZZZZ:0BB8 00000000:0000 0A 0 0 0 0 0 x 1",
                      TCP.splitlines()[3]])
    assert parse_listen_rows(text, "little") == {167106: ("127.0.0.1", 3000)}


# describe_wrong_listen


def at(address: str, port: int, pid: int = 10) -> Listening:
    return Listening("tcp6" if ":" in address else "tcp", address, port, pid)


@pytest.mark.parametrize("address", ["127.0.0.1", "0.0.0.0", "::ffff:127.0.0.1", "::"])
def test_reachable_listener_needs_no_explanation(address: str) -> None:
    # Even with other, unrelated listeners alongside.
    assert describe_wrong_listen(5000, [at("::1", 5000), at(address, 5000), at("127.0.0.1", 9229)]) is None


def test_nothing_listening_yet_means_keep_waiting() -> None:
    assert describe_wrong_listen(5000, []) is None


def test_wrong_port_message() -> None:
    assert describe_wrong_listen(12345, [at("127.0.0.1", 3000)]) == (
        "the app listens on 127.0.0.1:3000, not on port 12345 given in $PORT: make it use $PORT")


def test_wrong_port_message_lists_every_endpoint_once() -> None:
    found = [at("127.0.0.1", 3000, 10), at("127.0.0.1", 3000, 11), at("::", 8080)]
    assert describe_wrong_listen(12345, found) == (
        "the app listens on 127.0.0.1:3000, [::]:8080, not on port 12345 given in $PORT: make it use $PORT")


def test_wrong_port_message_stays_one_line_with_many_listeners() -> None:
    message = describe_wrong_listen(1, [at("127.0.0.1", port) for port in range(3000, 3010)])
    assert message is not None
    assert "\n" not in message
    assert "127.0.0.1:3003 and 6 more, not on port 1" in message


def test_ipv6_loopback_only_message() -> None:
    assert describe_wrong_listen(12345, [at("::1", 12345)]) == (
        "the app listens on [::1]:12345 only; it must listen on 127.0.0.1:12345 (IPv4)")


def test_other_ipv4_address_message() -> None:
    assert describe_wrong_listen(12345, [at("192.0.2.2", 12345), at("127.0.0.1", 9229)]) == (
        "the app listens on 192.0.2.2:12345 only; it must listen on 127.0.0.1:12345 or 0.0.0.0:12345")


# a fake /proc tree: descendants, both ways of finding children, vanished processes


def fake_process(proc: Path, pid: int, ppid: int, inodes: list[int], children: list[int] | None,
                 tcp: str = "", tcp6: str = "") -> None:
    base = proc / str(pid)
    (base / "fd").mkdir(parents=True)
    (base / "net").mkdir()
    (base / "task" / str(pid)).mkdir(parents=True)
    if children is not None:
        (base / "task" / str(pid) / "children").write_text("".join(f"{c} " for c in children))
    (base / "stat").write_text(f"{pid} (we ird) name) S {ppid} {pid} {pid} 0 -1\n")
    for fd, inode in enumerate(inodes, 3):
        os.symlink(f"socket:[{inode}]", base / "fd" / str(fd))
    os.symlink("/dev/null", base / "fd" / "0")
    os.symlink("pipe:[999]", base / "fd" / "1")
    (base / "net" / "tcp").write_text(tcp)
    (base / "net" / "tcp6").write_text(tcp6)


def native(text: str) -> str:
    """The sample rows as this machine's kernel would print them."""
    if sys.byteorder == "little":
        return text
    pytest.skip("the captured rows are little-endian")


@pytest.mark.parametrize("with_children_files", [True, False], ids=["children-files", "stat-scan"])
def test_fake_tree_finds_descendants_sockets(tmp_path: Path, with_children_files: bool) -> None:
    tcp, tcp6 = native(TCP), native(TCP6)
    # 100 -> 101 -> 102; 103 is unrelated; 104 is listed as a child but has exited.
    fake_process(tmp_path, 100, 1, [], [101, 104] if with_children_files else None, tcp, tcp6)
    fake_process(tmp_path, 101, 100, [167106], [102] if with_children_files else None, tcp, tcp6)
    fake_process(tmp_path, 102, 101, [167109, 167112], [] if with_children_files else None, tcp, tcp6)
    fake_process(tmp_path, 103, 1, [167107], [] if with_children_files else None, tcp, tcp6)
    assert listening_ports(100, proc=str(tmp_path)) == [
        Listening("tcp", "127.0.0.1", 3000, 101),
        Listening("tcp6", "::1", 12345, 102),
    ]
    assert listening_ports(100, include_children=False, proc=str(tmp_path)) == []
    assert listening_ports(103, proc=str(tmp_path)) == [Listening("tcp", "0.0.0.0", 3001, 103)]


def test_fake_tree_shared_socket_belongs_to_the_topmost_holder(tmp_path: Path) -> None:
    # A pre-forking server: parent and worker hold the same listening socket.
    tcp = native(TCP)
    fake_process(tmp_path, 200, 1, [167106], [201], tcp)
    fake_process(tmp_path, 201, 200, [167106], [], tcp)
    assert listening_ports(200, proc=str(tmp_path)) == [Listening("tcp", "127.0.0.1", 3000, 200)]
    assert listening_ports(201, proc=str(tmp_path)) == [Listening("tcp", "127.0.0.1", 3000, 201)]


def test_a_child_not_exec_yet_runs_its_parents_command_line(tmp_path: Path) -> None:
    fake_process(tmp_path, 300, 1, [167106], [301])
    fake_process(tmp_path, 301, 300, [167106], [])
    fake_process(tmp_path, 302, 300, [], [])
    (tmp_path / "300" / "cmdline").write_bytes(b"python\0twistd\0passenger\0")
    (tmp_path / "301" / "cmdline").write_bytes(b"python\0twistd\0passenger\0")  # forked, not exec'd yet
    (tmp_path / "302" / "cmdline").write_bytes(b"/bin/sh\0-c\0python3 app.py\0")
    assert not_exec_yet(301, 300, proc=str(tmp_path))
    assert not not_exec_yet(302, 300, proc=str(tmp_path))
    assert not not_exec_yet(303, 300, proc=str(tmp_path)), "gone: looked at as it is"


def test_missing_or_unreadable_entries_never_raise(tmp_path: Path) -> None:
    assert listening_ports(424242, proc=str(tmp_path)) == []
    assert listening_ports(1, proc=str(tmp_path / "no-proc-here")) == []
    # Sockets but no readable net tables: nothing to match them against.
    fake_process(tmp_path, 300, 1, [167106], [])
    (tmp_path / "300" / "net" / "tcp").unlink()
    (tmp_path / "300" / "net" / "tcp6").unlink()
    assert listening_ports(300, proc=str(tmp_path)) == []


# real processes

LISTENER = """\
import os, socket, sys
host, report = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
s.bind((host, 0))
s.listen()
with open(report + ".tmp", "w") as f:
    f.write(f"{os.getpid()} {s.getsockname()[1]}")
os.rename(report + ".tmp", report)
sys.stdin.read()
"""


def read_report(path: Path) -> tuple[int, int] | None:
    try:
        pid, port = path.read_text().split()
    except FileNotFoundError:
        return None
    return int(pid), int(port)


class Spawner:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str]) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, start_new_session=True)
        self.procs.append(proc)
        return proc

    def listener(self, host: str, via_shell: bool = False) -> tuple[subprocess.Popen[bytes], int, int]:
        """Start a process listening on ``host`` (through ``sh -c`` if asked); returns (Popen, listener pid, port)."""
        report = self.tmp / f"report-{len(self.procs)}"
        argv = [sys.executable, "-c", LISTENER, host, str(report)]
        if via_shell:  # the trailing command keeps sh from exec'ing python
            argv = ["sh", "-c", '"$@"; echo done >/dev/null', "sh", *argv]
        proc = self.start(argv)
        pid, port = wait_for(lambda: read_report(report), what=f"a listener on {host}")
        return proc, pid, port

    def close(self) -> None:
        for proc in self.procs:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            if proc.stdin is not None:
                proc.stdin.close()
            proc.wait(timeout=10)


@pytest.fixture
def spawner(tmp_path: Path) -> Iterator[Spawner]:
    s = Spawner(tmp_path)
    yield s
    s.close()


def ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


def ppid_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])


def test_real_ipv4_listener(spawner: Spawner) -> None:
    proc, pid, port = spawner.listener("127.0.0.1")
    assert pid == proc.pid
    found = wait_for(lambda: listening_ports(proc.pid), what="listening_ports")
    assert found == [Listening("tcp", "127.0.0.1", port, proc.pid)]
    assert describe_wrong_listen(port, found) is None
    other = port + 1 if port < 65535 else port - 1
    assert describe_wrong_listen(other, found) == (
        f"the app listens on 127.0.0.1:{port}, not on port {other} given in $PORT: make it use $PORT")


def test_real_ipv6_loopback_listener(spawner: Spawner) -> None:
    if not ipv6_loopback():
        pytest.skip("no IPv6 loopback (::1) on this machine")
    proc, pid, port = spawner.listener("::1")
    assert pid == proc.pid
    found = wait_for(lambda: listening_ports(proc.pid), what="listening_ports")
    assert found == [Listening("tcp6", "::1", port, proc.pid)]
    assert describe_wrong_listen(port, found) == (
        f"the app listens on [::1]:{port} only; it must listen on 127.0.0.1:{port} (IPv4)")


def test_real_listener_in_a_child_of_the_spawned_process(spawner: Spawner) -> None:
    shell, pid, port = spawner.listener("127.0.0.1", via_shell=True)
    assert pid != shell.pid
    assert ppid_of(pid) == shell.pid, "the listener should be a child of sh, not sh itself"
    found = wait_for(lambda: listening_ports(shell.pid), what="listening_ports")
    assert found == [Listening("tcp", "127.0.0.1", port, pid)]
    assert listening_ports(shell.pid, include_children=False) == []


def test_real_processes_are_told_apart(spawner: Spawner) -> None:
    first, _, first_port = spawner.listener("127.0.0.1")
    second, _, second_port = spawner.listener("0.0.0.0")
    assert wait_for(lambda: listening_ports(first.pid), what="first") == [
        Listening("tcp", "127.0.0.1", first_port, first.pid)]
    assert wait_for(lambda: listening_ports(second.pid), what="second") == [
        Listening("tcp", "0.0.0.0", second_port, second.pid)]


def test_real_exited_process_gives_nothing(spawner: Spawner) -> None:
    proc = spawner.start([sys.executable, "-c", "pass"])
    proc.wait(timeout=10)
    assert listening_ports(proc.pid) == []

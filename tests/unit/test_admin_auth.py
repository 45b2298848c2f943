"""passenger.admin.auth: peer credentials on Unix sockets, then basic auth (admin / ro_admin)."""

from __future__ import annotations

import base64
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

from passenger.admin import auth
from passenger.admin.auth import FULL, NONE, READ, Passwords, Verdict, authorize, peer_uid

PASSWORDS = Passwords(read_only="read-only-secret", full="full-secret")
NOBODY = 65534


class Transport:
    """What authorize needs of a twisted transport: getHandle()."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    def getHandle(self) -> Any:
        return self.handle


def basic(user: str, password: str) -> bytes:
    return b"Basic " + base64.b64encode(f"{user}:{password}".encode())


@pytest.fixture
def unix_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    yield a, b
    a.close()
    b.close()


@pytest.fixture
def tcp_connection() -> Iterator[socket.socket]:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
        yield server
        server.close()
        client.close()


# Peer credentials.

def test_peer_uid_of_a_unix_socket_is_the_other_ends_uid(unix_pair: tuple[socket.socket, socket.socket]) -> None:
    assert peer_uid(Transport(unix_pair[0])) == os.getuid()


@pytest.mark.parametrize("transport", [None, object(), Transport(None), Transport("not a socket")],
                         ids=["none", "no-getHandle", "no-handle", "not-a-socket"])
def test_no_peer_uid_without_a_unix_socket(transport: Any) -> None:
    assert peer_uid(transport) is None


def test_no_peer_uid_on_tcp(tcp_connection: socket.socket) -> None:
    assert peer_uid(Transport(tcp_connection)) is None


def test_no_peer_uid_on_a_closed_socket(unix_pair: tuple[socket.socket, socket.socket]) -> None:
    unix_pair[0].close()
    assert peer_uid(Transport(unix_pair[0])) is None


def test_our_own_uid_on_a_unix_socket_is_full_whatever_the_header(
        unix_pair: tuple[socket.socket, socket.socket]) -> None:
    transport = Transport(unix_pair[0])
    for header in (None, b"Bearer nothing", b"Basic !!!", basic("admin", "wrong"), basic("ro_admin", "read-only-secret")):
        assert authorize(transport, header, PASSWORDS) == Verdict(FULL), header


NOBODY_CLIENT = """
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
s.sendall(b"x")
s.recv(1)
"""


@pytest.fixture
def nobody_connection() -> Iterator[socket.socket]:
    """The server end of a Unix socket connection made by a process running as nobody."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to connect as nobody")
    directory = tempfile.mkdtemp(prefix="auth-test-", dir="/tmp")
    os.chmod(directory, 0o777)
    path = os.path.join(directory, "api.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(path)
        os.chmod(path, 0o777)
        listener.listen(1)
        python = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable
        client = subprocess.Popen(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                                   python, "-c", NOBODY_CLIENT, path])
        listener.settimeout(10)
        connection, _ = listener.accept()
        try:
            assert connection.recv(1) == b"x"
            yield connection
        finally:
            connection.close()
            client.wait(10)
    finally:
        listener.close()
        shutil.rmtree(directory, ignore_errors=True)


def test_another_users_peer_needs_basic_auth(nobody_connection: socket.socket) -> None:
    transport = Transport(nobody_connection)
    assert peer_uid(transport) == NOBODY
    assert authorize(transport, None, PASSWORDS).level == NONE
    assert authorize(transport, basic("admin", "wrong"), PASSWORDS).level == NONE
    assert authorize(transport, basic("ro_admin", "read-only-secret"), PASSWORDS).level == READ
    assert authorize(transport, basic("admin", "full-secret"), PASSWORDS) == Verdict(FULL)


def test_the_servers_own_uid_is_full(nobody_connection: socket.socket, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth.os, "geteuid", lambda: NOBODY)  # as if the server ran as nobody
    assert authorize(Transport(nobody_connection), None, PASSWORDS) == Verdict(FULL)


# Basic auth (TCP, or a Unix peer that is neither root nor the server's user).

@pytest.fixture(params=["tcp", "none"])
def remote(request: pytest.FixtureRequest, tcp_connection: socket.socket) -> Any:
    return Transport(tcp_connection) if request.param == "tcp" else None


def test_no_credentials(remote: Any) -> None:
    verdict = authorize(remote, None, PASSWORDS)
    assert verdict.level == NONE
    assert "basic auth" in verdict.reason and "admin" in verdict.reason


def test_full_admin(remote: Any) -> None:
    assert authorize(remote, basic("admin", "full-secret"), PASSWORDS) == Verdict(FULL)


def test_read_only_admin(remote: Any) -> None:
    verdict = authorize(remote, basic("ro_admin", "read-only-secret"), PASSWORDS)
    assert verdict.level == READ
    assert "read-only" in verdict.reason


@pytest.mark.parametrize(("user", "password"), [
    ("admin", "read-only-secret"),
    ("ro_admin", "full-secret"),
    ("admin", "wrong"),
    ("admin", ""),
    ("admin", "full-secret "),
    ("admin", "full-secre"),
    ("Admin", "full-secret"),
    ("root", "full-secret"),
    ("", "full-secret"),
])
def test_wrong_user_or_password(remote: Any, user: str, password: str) -> None:
    verdict = authorize(remote, basic(user, password), PASSWORDS)
    assert verdict == Verdict(NONE, "Wrong user name or password")


@pytest.mark.parametrize(("header", "reason"), [
    (b"Bearer full-secret", "Only basic authentication is supported"),
    (b"Digest username=admin", "Only basic authentication is supported"),
    (b"full-secret", "Only basic authentication is supported"),
    (b"", "Only basic authentication is supported"),
    (b"Basic", "Malformed basic authentication header"),
    (b"Basic !!!", "Malformed basic authentication header"),
    (b"Basic YWRtaW4", "Malformed basic authentication header"),  # bad padding
    (b"Basic " + base64.b64encode(b"adminfull-secret"), "Malformed basic authentication header"),
    (b"Basic " + base64.b64encode(b"admin:\xff"), "Malformed basic authentication header"),
])
def test_other_schemes_and_malformed_headers(remote: Any, header: bytes, reason: str) -> None:
    assert authorize(remote, header, PASSWORDS) == Verdict(NONE, reason)


def test_the_scheme_is_case_insensitive_and_spaces_around_the_credentials_do_not_matter(remote: Any) -> None:
    credentials = base64.b64encode(b"admin:full-secret")
    for header in (b"basic " + credentials, b"BASIC " + credentials, b"Basic " + credentials + b"  "):
        assert authorize(remote, header, PASSWORDS).level == FULL, header


def test_a_password_may_contain_colons(remote: Any) -> None:
    passwords = Passwords(read_only="a:b", full="c:d:e")
    assert authorize(remote, basic("admin", "c:d:e"), passwords).level == FULL
    assert authorize(remote, basic("ro_admin", "a:b"), passwords).level == READ
    assert authorize(remote, basic("admin", "c:d"), passwords).level == NONE

"""Who may use the admin API, and for what (Passenger's ApiServerUtils rules, passenger-gls.md §5).

Over the instance directory's Unix socket, root and the server's own user are
full administrators, known by the kernel's peer credentials.  Everyone else,
and everyone on an ``--admin-listen`` endpoint, uses basic auth: ``ro_admin``
with the read-only password may look, ``admin`` with the full password may
also act.  Passwords are compared in constant time.
"""

from __future__ import annotations

import base64
import hmac
import os
import socket
import struct
from typing import Any

import attrs

NONE = 0
READ = 1
FULL = 2

READ_ONLY_USER = "ro_admin"
FULL_USER = "admin"


@attrs.frozen
class Verdict:
    level: int
    #: Why access is limited (shown in a 401 or 403).
    reason: str = ""


@attrs.frozen
class Passwords:
    read_only: str
    full: str


def peer_uid(transport: Any) -> int | None:
    """The uid of the process at the other end of a Unix socket connection, or None (TCP, or unknown)."""
    handle = getattr(transport, "getHandle", lambda: None)()
    if not isinstance(handle, socket.socket) or handle.family != socket.AF_UNIX:
        return None
    try:
        creds = handle.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


def _matches(given: str, expected: str) -> bool:
    """Constant-time comparison; an empty password (one that could not be set) never matches."""
    return bool(expected) and hmac.compare_digest(given.encode(), expected.encode())


def authorize(transport: Any, authorization: bytes | None, passwords: Passwords) -> Verdict:
    """What the client on ``transport`` with this Authorization header may do."""
    uid = peer_uid(transport)
    if uid is not None and uid in (0, os.geteuid()):
        return Verdict(FULL)
    if authorization is None:
        return Verdict(NONE, "Authentication required: basic auth as admin or ro_admin, with the password "
                             "from the instance directory")
    scheme, _, encoded = authorization.partition(b" ")
    if scheme.lower() != b"basic":
        return Verdict(NONE, "Only basic authentication is supported")
    try:
        user, sep, password = base64.b64decode(encoded.strip(), validate=True).decode("utf-8").partition(":")
    except (ValueError, UnicodeDecodeError):
        return Verdict(NONE, "Malformed basic authentication header")
    if not sep:
        return Verdict(NONE, "Malformed basic authentication header")
    if user == FULL_USER and _matches(password, passwords.full):
        return Verdict(FULL)
    if user == READ_ONLY_USER and _matches(password, passwords.read_only):
        return Verdict(READ, "The ro_admin account is read-only; use the admin account (the full password) to act")
    return Verdict(NONE, "Wrong user name or password")

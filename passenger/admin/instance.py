"""The instance directory: how passenger-status and passenger-config find a running server.

As Passenger's (passenger-gls.md §4.1): ``<registry>/passenger.XXXXXXXX``, mode
0700, holding ``properties.json``, the server's pid, the read-only and full
admin passwords (0600), the admin API's Unix socket and a ``lock`` file the
server holds an flock on while it runs.  The server removes it on a clean exit;
one whose server is gone (killed, crashed; its lock is free, or its pid gone)
is stale, and the next server or tool that looks removes it.  The lock, not the
pid alone, decides: a pid can be reused by another process.

This module is shared by the server and the command-line tools, so it does
plain blocking file work and imports nothing of Twisted.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import secrets
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import attrs

PREFIX = "passenger."
#: An instance directory's name: the prefix and mkdtemp's 8 random characters (spawn work directories,
#: ``passenger.spawn.*``, share the prefix and must never be taken for one).
NAME = re.compile(r"passenger\.[a-z0-9_]{8}")
PROPERTIES = "properties.json"
PID_FILE = "server.pid"
READ_ONLY_PASSWORD = "read_only_admin_password.txt"
FULL_PASSWORD = "full_admin_password.txt"
#: The admin API socket, where Passenger keeps its own.
API_SOCKET = "agents.s/core_api"
LOCK = "lock"
#: Longest Unix socket path the kernel takes (sun_path is 108 bytes with its NUL).
MAX_SOCKET_PATH = 107
#: A directory without properties.json this old was left by a server that died while starting.
HALF_MADE_AGE = 60.0


class InstanceError(Exception):
    """No instance (or no single one) to talk to; the message says what to do."""


class NoInstance(InstanceError):
    """No server runs (or none by that name)."""


class SeveralInstances(InstanceError):
    """Several servers run and none was named."""


class NotPermitted(InstanceError):
    """A server runs, but this user may not look into its instance directory."""


def registry_dir(configured: str | None = None) -> Path:
    """Where instance directories live: the configured one, else $TMPDIR or /tmp (as Passenger)."""
    return Path(configured or os.environ.get("TMPDIR") or tempfile.gettempdir())


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


@attrs.frozen
class Instance:
    """A server's instance directory, as the tools see it."""

    path: Path
    properties: dict[str, Any]
    #: The server's own descriptor of the lock file (held while it runs), None for the tools.
    lock_fd: int | None = attrs.field(default=None, eq=False, repr=False)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def pid(self) -> int:
        return int(self.properties.get("pid", 0))

    @property
    def socket_path(self) -> Path:
        return self.path / API_SOCKET

    @property
    def has_socket(self) -> bool:
        """False when the path is too long for a Unix socket: the API is then only on --admin-listen."""
        return self.properties.get("api_socket", "") is not None

    def alive(self) -> bool:
        """Does its server still run?  Its pid exists and the lock is held (by the server, not a reused pid)."""
        if self.pid <= 0 or not pid_alive(self.pid):
            return False
        try:
            fd = os.open(self.path / LOCK, os.O_RDONLY)
        except FileNotFoundError:
            return False
        except OSError:
            return True  # not ours to test: trust the pid
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # closing releases a lock we took
        return False

    def password(self, full: bool) -> str | None:
        """The full or read-only admin password, or None if this user may not read it."""
        try:
            return (self.path / (FULL_PASSWORD if full else READ_ONLY_PASSWORD)).read_text().strip()
        except OSError:
            return None


def create(registry: Path, properties: dict[str, Any]) -> Instance:
    """Make a new instance directory with fresh passwords; ``properties`` gain its id and creation time."""
    registry.mkdir(parents=True, exist_ok=True)
    remove_stale(registry)
    path = Path(tempfile.mkdtemp(prefix=PREFIX, dir=registry))  # mode 0700, a name nobody can predict
    (path / "agents.s").mkdir(mode=0o700)
    lock_fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)  # not inherited by apps
    fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    socket_path = path / API_SOCKET
    for name in (READ_ONLY_PASSWORD, FULL_PASSWORD):
        _write(path / name, secrets.token_urlsafe(18), 0o600)  # 24 characters, as Passenger's
    _write(path / PID_FILE, str(os.getpid()), 0o644)
    full = {"instance_id": path.name, "pid": os.getpid(), "created_at": time.time(),
            "api_socket": str(socket_path) if len(str(socket_path).encode()) <= MAX_SOCKET_PATH else None,
            **properties}
    _write(path / PROPERTIES, json.dumps(full, indent=2) + "\n", 0o644)  # last: it marks the directory complete
    return Instance(path, full, lock_fd)


def _write(path: Path, text: str, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def remove(instance: Instance) -> None:
    shutil.rmtree(instance.path, ignore_errors=True)
    if instance.lock_fd is not None:
        os.close(instance.lock_fd)


def read(path: Path) -> Instance | None:
    """The instance at ``path``, or None if it is not (or not yet) one; PermissionError if it is not ours."""
    try:
        properties = json.loads((path / PROPERTIES).read_text())
    except PermissionError:
        raise
    except (OSError, ValueError):
        return None
    return Instance(path, properties) if isinstance(properties, dict) else None


def _readable(path: Path) -> Instance | None:
    try:
        return read(path)
    except PermissionError:
        return None


def _candidates(registry: Path) -> list[Path]:
    try:
        return sorted(p for p in registry.iterdir() if NAME.fullmatch(p.name) and p.is_dir())
    except OSError:
        return []


def remove_stale(registry: Path) -> list[Path]:
    """Remove the instance directories whose server is gone (those this user may remove); return them."""
    removed = []
    for path in _candidates(registry):
        try:
            instance = read(path)
        except PermissionError:
            continue  # someone else's: theirs to clean up
        if instance is None:  # half made (its server died while starting), or not ours at all
            try:
                stale = ((path / "agents.s").is_dir()
                         and time.time() - path.stat().st_mtime > HALF_MADE_AGE)
            except OSError:
                continue
        else:
            stale = not instance.alive()
        if stale:
            try:
                shutil.rmtree(path)
            except OSError as e:
                if e.errno not in (errno.EACCES, errno.EPERM, errno.ENOENT):
                    raise
                continue
            removed.append(path)
    return removed


def running(registry: Path) -> list[Instance]:
    """The instances whose server is alive, oldest first (stale ones are removed on the way)."""
    remove_stale(registry)
    found = [instance for instance in map(_readable, _candidates(registry))
             if instance is not None and instance.alive()]
    return sorted(found, key=lambda i: i.properties.get("created_at", 0))


def forbidden(registry: Path) -> list[Path]:
    """Instance directories this user may not look into (another user's server)."""
    closed = []
    for path in _candidates(registry):
        try:
            read(path)
        except PermissionError:
            closed.append(path)
    return closed


def find(registry: Path, name: str | None = None) -> Instance:
    """The one instance to talk to: ``name`` (a directory name or the server's pid), or the only one running."""
    instances = running(registry)
    if name is not None:
        for instance in instances:
            if name in (instance.name, str(instance.pid)):
                return instance
        closed = [p for p in forbidden(registry) if p.name == name]
        if closed:
            raise NotPermitted(_not_permitted(closed))
        known = ", ".join(i.name for i in instances) or "none"
        raise NoInstance(f"There is no passenger instance named {name!r} in {registry} (running: {known}).")
    if not instances:
        closed = forbidden(registry)
        if closed:
            raise NotPermitted(_not_permitted(closed))
        raise NoInstance(f"No passenger server is running (no instance directory in {registry}). "
                         "If it runs with another --instance-registry-dir or TMPDIR, pass --instance-registry-dir.")
    if len(instances) > 1:
        listing = "\n".join(f"  {i.name} (pid {i.pid}, {', '.join(i.properties.get('listen', []))})"
                            for i in instances)
        raise SeveralInstances(f"Several passenger servers are running; choose one with --instance NAME:\n{listing}")
    return instances[0]


def _not_permitted(paths: list[Path]) -> str:
    names = ", ".join(str(p) for p in paths)
    return (f"A passenger server runs ({names}) but you may not use its instance directory: run this as root "
            "or as the user the server runs as.")

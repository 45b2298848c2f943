"""The instance directory: how passenger-status and passenger-config find a running server.

As Passenger's (passenger-gls.md §4.1): ``<registry>/passenger.XXXXXXXX``, mode
0700, holding ``properties.json``, the server's pid, the read-only and full
admin passwords (0600) and the admin API's Unix socket.  The server removes it
on a clean exit; one whose server is gone (killed, crashed) is stale, and the
next server or tool that looks removes it.

This module is shared by the server and the command-line tools, so it does
plain blocking file work and imports nothing of Twisted.
"""

from __future__ import annotations

import errno
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
#: A directory without properties.json this old was left by a server that died while starting.
HALF_MADE_AGE = 60.0


class InstanceError(Exception):
    """No instance (or no single one) to talk to; the message says what to do."""


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

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def pid(self) -> int:
        return int(self.properties.get("pid", 0))

    @property
    def socket_path(self) -> Path:
        return self.path / API_SOCKET

    def alive(self) -> bool:
        return self.pid > 0 and pid_alive(self.pid)

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
    for name in (READ_ONLY_PASSWORD, FULL_PASSWORD):
        _write(path / name, secrets.token_urlsafe(18), 0o600)  # 24 characters, as Passenger's
    _write(path / PID_FILE, str(os.getpid()), 0o644)
    full = {"instance_id": path.name, "pid": os.getpid(), "created_at": time.time(), **properties}
    _write(path / PROPERTIES, json.dumps(full, indent=2) + "\n", 0o644)  # last: it marks the directory complete
    return Instance(path, full)


def _write(path: Path, text: str, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def remove(instance: Instance) -> None:
    shutil.rmtree(instance.path, ignore_errors=True)


def read(path: Path) -> Instance | None:
    """The instance at ``path``, or None if it is not (or not yet) one."""
    try:
        properties = json.loads((path / PROPERTIES).read_text())
    except (OSError, ValueError):
        return None
    return Instance(path, properties) if isinstance(properties, dict) else None


def _candidates(registry: Path) -> list[Path]:
    try:
        return sorted(p for p in registry.iterdir() if NAME.fullmatch(p.name) and p.is_dir())
    except OSError:
        return []


def remove_stale(registry: Path) -> list[Path]:
    """Remove the instance directories whose server is gone (those this user may remove); return them."""
    removed = []
    for path in _candidates(registry):
        instance = read(path)
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
    found = [instance for instance in map(read, _candidates(registry)) if instance is not None and instance.alive()]
    return sorted(found, key=lambda i: i.properties.get("created_at", 0))


def find(registry: Path, name: str | None = None) -> Instance:
    """The one instance to talk to: ``name`` (a directory name or the server's pid), or the only one running."""
    instances = running(registry)
    if name is not None:
        for instance in instances:
            if name in (instance.name, str(instance.pid)):
                return instance
        known = ", ".join(i.name for i in instances) or "none"
        raise InstanceError(f"There is no passenger instance named {name!r} in {registry} (running: {known}).")
    if not instances:
        raise InstanceError(f"No passenger server is running (no instance directory in {registry}). "
                            "If it runs with another --instance-registry-dir or TMPDIR, pass --instance-registry-dir.")
    if len(instances) > 1:
        listing = "\n".join(f"  {i.name} (pid {i.pid}, {', '.join(i.properties.get('listen', []))})"
                            for i in instances)
        raise InstanceError(f"Several passenger servers are running; choose one with --instance NAME:\n{listing}")
    return instances[0]

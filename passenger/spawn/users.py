"""Which account an app process runs as (Passenger's user switching, passenger-gls.md §5).

Only a server running as root switches: to ``--user``/``--group`` when given,
else to the owner of the app root, and never to root (``nobody`` then).
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from collections.abc import Callable, Collection

import attrs

from passenger.config import AppConfig, ConfigError

FALLBACK_USER = "nobody"
LOGIN_SHELLS = ("bash", "zsh", "ksh", "sh", "dash")


@attrs.frozen
class AppUser:
    uid: int
    gid: int
    name: str
    home: str
    shell: str

    def environment(self) -> dict[str, str]:
        return {"USER": self.name, "LOGNAME": self.name, "HOME": self.home, "SHELL": self.shell}


def _account(name_or_id: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name_or_id)
    except KeyError:
        if name_or_id.isdigit():
            return pwd.getpwuid(int(name_or_id))
        raise


def _group_id(name_or_id: str, label: str) -> int:
    try:
        return grp.getgrnam(name_or_id).gr_gid
    except KeyError:
        if name_or_id.isdigit():
            return int(name_or_id)
        raise ConfigError(f"{label} {name_or_id!r}: no such group") from None


def _option(key: str) -> str:
    return "--" + key


def resolve_app_user(app: AppConfig, euid: int | None = None,
                     label: Callable[[str], str] = _option) -> AppUser | None:
    """The account to switch to, or None when the server is not root (apps run as the server's user).

    ``label`` names the ``user`` and ``group`` settings in errors (as their source gave them).
    """
    if (os.geteuid() if euid is None else euid) != 0:
        return None
    if app.user is not None:
        try:
            account = _account(app.user)
        except KeyError:
            raise ConfigError(f"{label('user')} {app.user!r}: no such user") from None
        if account.pw_uid == 0:
            raise ConfigError(f"{label('user')} {app.user!r}: app processes never run as root; "
                              "pick an unprivileged account")
    else:
        owner = os.stat(app.root).st_uid
        try:
            account = pwd.getpwuid(owner) if owner != 0 else pwd.getpwnam(FALLBACK_USER)
        except KeyError:
            account = pwd.getpwnam(FALLBACK_USER)
    gid = _group_id(app.group, label("group")) if app.group is not None else account.pw_gid
    return AppUser(account.pw_uid, gid, account.pw_name, account.pw_dir, account.pw_shell)


def login_shell(user: AppUser | None) -> str | None:
    """The account's shell if it is one that takes ``-lc`` (as Passenger's load_shell_envvars)."""
    shell = user.shell if user is not None else pwd.getpwuid(os.getuid()).pw_shell
    return shell if os.path.basename(shell) in LOGIN_SHELLS and os.access(shell, os.X_OK) else None


def unreachable(user: AppUser, path: str, groups: Collection[int] | None = None) -> str | None:
    """Which directory on the way to ``path`` ``user`` may not enter, by its mode bits, and why; None
    when every one lets it through, or one has an ACL (then the kernel decides, not the bits).

    An app run as ``nobody`` from a checkout under ``/root`` (0700) cannot open its own files; said at
    the first spawn, that is one line instead of a ``Permission denied`` at every attempt."""
    groups = set(os.getgrouplist(user.name, user.gid)) if groups is None else set(groups)
    parts = [part for part in os.path.realpath(path).split("/") if part]
    for index in range(len(parts) + 1):
        directory = "/" + "/".join(parts[:index])
        try:
            info = os.stat(directory)
            if "system.posix_acl_access" in os.listxattr(directory):
                return None
        except OSError:
            return None  # gone or unreadable: the spawn reports that its own way
        if info.st_uid == user.uid:
            allowed = info.st_mode & stat.S_IXUSR
        elif info.st_gid in groups:
            allowed = info.st_mode & stat.S_IXGRP
        else:
            allowed = info.st_mode & stat.S_IXOTH
        if not allowed:
            return f"{directory} is mode {stat.S_IMODE(info.st_mode):04o}, owned by {_owner_name(info.st_uid)}"
    return None


def _owner_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)

"""Which account an app process runs as (Passenger's user switching, passenger-gls.md §5).

Only a server running as root switches: to ``--user``/``--group`` when given,
else to the owner of the app root, and never to root (``nobody`` then).
"""

from __future__ import annotations

import grp
import os
import pwd
from collections.abc import Callable

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

"""The environment an app process starts with (``passenger-gls.md`` §1.5)."""

from __future__ import annotations

import os
from collections.abc import Mapping

from passenger.config import AppConfig


def app_environment(app: AppConfig, port: int | None, inherited: Mapping[str, str] | None = None) -> dict[str, str]:
    """The server's own environment, Passenger's variables, then the user's on top."""
    env = dict(os.environ if inherited is None else inherited)
    for name in ("PASSENGER_APP_ENV", "RAILS_ENV", "RACK_ENV", "WSGI_ENV", "NODE_ENV"):
        env[name] = app.environment
    env["IN_PASSENGER"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    env["PWD"] = app.root
    if app.base_uri != "/":
        for name in ("PASSENGER_BASE_URI", "RACK_BASE_URI", "RAILS_RELATIVE_URL_ROOT"):
            env[name] = app.base_uri
    if port is not None:
        env["PORT"] = str(port)
    env.update(app.envvars)
    return env


def app_argv(app: AppConfig, prologue: str = "", shell: str = "/bin/sh") -> list[str]:
    """``/bin/sh -c "exec <command>"``: the shell expands $PORT, then becomes the app.

    With a login shell (``--load-shell-envvars``) it is ``<shell> -lc "exec <command>"``.
    """
    flag = "-c" if shell == "/bin/sh" else "-lc"
    return [shell, flag, prologue + "exec " + app.start_command]

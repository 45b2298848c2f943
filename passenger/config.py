"""Validated, frozen configuration values.

Everything a user can get wrong is checked here, once, before anything is
spawned or daemonized; every problem becomes a one-line :class:`ConfigError`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

import attrs

#: Passenger's "unknown" concurrency: the app never said how many requests a
#: process can take at once.
UNKNOWN_CONCURRENCY = None


class ConfigError(ValueError):
    """A configuration value is unusable; the message is one line for the user."""


@attrs.frozen
class AppConfig:
    """One application: how to start it and how many of it to run."""

    name: str
    root: str
    start_command: str
    environment: str = "production"
    min_instances: int = 1
    max_pool_size: int = 6
    #: None: unknown (Passenger's default); 0: unlimited; N: at most N at once.
    concurrency: int | None = UNKNOWN_CONCURRENCY
    max_request_queue_size: int = 100
    start_timeout: float = 90.0
    envvars: Mapping[str, str] = attrs.field(factory=dict)
    #: Seconds between TERM and KILL when a process is stopped.
    shutdown_timeout: float = 30.0
    #: The app speaks SpawningKit's Kuria protocol: no $PORT; it reports its sockets.
    kuria: bool = False
    #: Where spawn work directories go (None: $TMPDIR or /tmp).
    spawn_dir: str | None = None
    #: Keep each spawn's work directory, for debugging.
    debug_spawn_dir: bool = False
    #: Status of the answer when the app cannot start (Passenger: 500).
    spawn_error_status: int = 500
    #: Show the detailed spawn error page (None: only with environment "development").
    friendly_error_pages: bool | None = None
    #: The page served instead when the app cannot start (its bytes, read at start).
    custom_error_page: bytes | None = None


@attrs.frozen
class ServerConfig:
    """The whole server: where it listens and the app it runs."""

    app: AppConfig
    listen: tuple[str, ...] = ("tcp:3000:interface=0.0.0.0",)
    #: Seconds in-flight requests get to finish when the server stops.
    drain_timeout: float = 30.0


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def parse_envvar(text: str) -> tuple[str, str]:
    """Split ``NAME=VALUE`` as given to ``--envvar``."""
    name, sep, value = text.partition("=")
    if not sep or not _ENV_NAME.match(name):
        raise ConfigError(f"--envvar {text!r}: expected NAME=VALUE with NAME a valid variable name")
    return name, value


def non_negative_int(option: str, value: object) -> int:
    try:
        number = int(str(value))
    except ValueError:
        raise ConfigError(f"{option} {value!r}: expected a whole number") from None
    if number < 0:
        raise ConfigError(f"{option} {number}: must not be negative")
    return number


def positive_seconds(option: str, value: object) -> float:
    try:
        number = float(str(value))
    except ValueError:
        raise ConfigError(f"{option} {value!r}: expected a number of seconds") from None
    if not number > 0 or number != number or number == float("inf"):
        raise ConfigError(f"{option} {value}: must be a positive number of seconds")
    return number


def validate_app(app: AppConfig) -> AppConfig:
    """Check an app's values; return it with its root made absolute."""
    if not app.start_command.strip():
        raise ConfigError("--app-start-command is empty: give the command that starts the app, e.g. 'node server.js'")
    root = os.path.abspath(app.root)
    if not os.path.isdir(root):
        raise ConfigError(f"--app-root {app.root!r}: no such directory")
    if app.max_pool_size < 1:
        raise ConfigError(f"--max-pool-size {app.max_pool_size}: must be at least 1")
    if app.min_instances > app.max_pool_size:
        raise ConfigError(
            f"--min-instances {app.min_instances} is greater than --max-pool-size {app.max_pool_size}"
        )
    return attrs.evolve(app, root=root)

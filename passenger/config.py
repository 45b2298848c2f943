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
    #: GET this path: ready only on 2xx/3xx, and checked every interval while running.
    health_check_path: str | None = None
    health_check_interval: float = 10.0
    health_check_timeout: float = 5.0
    #: Consecutive failed checks after which a running process is replaced.
    health_check_failures: int = 3
    #: When the server is root: run the app as this user/group (default: the app root's owner, never root).
    user: str | None = None
    group: str | None = None
    #: Start the command through the user's login shell, so its profile sets the environment.
    load_shell_envvars: bool = False


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


#: Passenger reads at most this much of an app's Passengerfile.json.
PASSENGERFILE_CAP = 512 * 1024


def read_passengerfile(root: str) -> dict[str, object]:
    """The two keys Passenger takes from ``<root>/Passengerfile.json``: app_start_command, app_supports_kuria_protocol."""
    import json

    path = os.path.join(root, "Passengerfile.json")
    try:
        with open(path, "rb") as f:
            data = f.read(PASSENGERFILE_CAP + 1)
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise ConfigError(f"{path}: {e.strerror}") from None
    if len(data) > PASSENGERFILE_CAP:
        raise ConfigError(f"{path}: larger than {PASSENGERFILE_CAP // 1024} KiB")
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: must be a JSON object")
    found: dict[str, object] = {}
    command = doc.get("app_start_command")
    if command is not None:
        if not isinstance(command, str) or not command.strip():
            raise ConfigError(f"{path}: app_start_command must be a non-empty string")
        found["app_start_command"] = command
    kuria = doc.get("app_supports_kuria_protocol")
    if kuria is not None:
        if not isinstance(kuria, bool):
            raise ConfigError(f"{path}: app_supports_kuria_protocol must be true or false")
        found["app_supports_kuria_protocol"] = kuria
    return found


def validate_app(app: AppConfig) -> AppConfig:
    """Check an app's values; return it with its root made absolute."""
    if not app.start_command.strip():
        raise ConfigError("--app-start-command is empty: give the command that starts the app, e.g. 'node server.js'")
    root = os.path.abspath(app.root)
    if not os.path.isdir(root):
        raise ConfigError(f"--app-root {app.root!r}: no such directory")
    if app.max_pool_size < 1:
        raise ConfigError(f"--max-pool-size {app.max_pool_size}: must be at least 1")
    if app.spawn_dir is not None and not (os.path.isdir(app.spawn_dir) and os.access(app.spawn_dir, os.W_OK | os.X_OK)):
        raise ConfigError(f"--spawn-dir {app.spawn_dir!r}: not a directory the server can write to")
    if not 100 <= app.spawn_error_status <= 599:
        raise ConfigError(f"--spawn-error-status {app.spawn_error_status}: not an HTTP status (100-599)")
    path = app.health_check_path
    if path is not None and (not path.startswith("/") or any(c in path for c in " \r\n\t")):
        raise ConfigError(f"--health-check-path {path!r}: must start with / and contain no spaces")
    if app.health_check_failures < 1:
        raise ConfigError(f"--health-check-failures {app.health_check_failures}: must be at least 1")
    if app.min_instances > app.max_pool_size:
        raise ConfigError(
            f"--min-instances {app.min_instances} is greater than --max-pool-size {app.max_pool_size}"
        )
    return attrs.evolve(app, root=root)

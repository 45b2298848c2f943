"""``twistd passenger`` / ``twist passenger``: command-line options and makeService.

Option names and defaults follow Passenger Standalone.  All validation happens
in :meth:`Options.postOptions`, which runs before twistd daemonizes, so every
mistake reaches the terminal as one line and a non-zero exit.
"""

from __future__ import annotations

import errno
import os
import socket
import sys
from typing import Any

from twisted.application.service import IService
from twisted.python import usage

from passenger.config import (
    AppConfig,
    ConfigError,
    ServerConfig,
    non_negative_int,
    parse_envvar,
    positive_seconds,
    read_passengerfile,
    validate_app,
)


def _unknown_or_count(value: str) -> int | None:
    if value.strip().lower() in ("", "unknown", "-1"):
        return None
    return non_negative_int("--concurrency", value)


class ConfigExit(SystemExit):
    """A bad option value: exit 1 with one line, before twistd daemonizes.

    twistd answers a UsageError by printing the whole --help first, which buries
    the one line that matters; SystemExit prints just the message.
    """

    def __init__(self, message: str) -> None:
        super().__init__(f"passenger: {message}")
        self.message = message


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Spawn processes of any web app with --app-start-command (which gets its "
        "port in $PORT), keep a pool of them, and reverse-proxy HTTP to the least busy one."
    )

    optParameters: list[list[Any]] = [
        ["app-root", None, None, "Directory of the app; the command runs there. [default: current directory]"],
        ["app-start-command", None, None, "Command that starts one app process listening on 127.0.0.1:$PORT."],
        ["address", None, "0.0.0.0", "Address to listen on for HTTP."],
        ["port", None, "3000", "Port to listen on for HTTP."],
        ["environment", None, "production", "Sets PASSENGER_APP_ENV, RAILS_ENV, RACK_ENV, WSGI_ENV and NODE_ENV."],
        ["min-instances", None, "1", "Processes to keep running at all times."],
        ["max-pool-size", None, "6", "Most processes to run."],
        ["concurrency", None, "unknown", "Requests one process can take at once: N, 0 for unlimited, or unknown."],
        ["max-request-queue-size", None, "100", "Requests that may wait for a process; beyond that 503. 0 = unbounded."],
        ["start-timeout", None, "90", "Seconds a process may take to start listening before it is killed."],
        ["drain-timeout", None, "30", "Seconds in-flight requests get to finish when the server stops."],
        ["shutdown-timeout", None, "30", "Seconds between TERM and KILL when an app process is stopped."],
        ["spawn-dir", None, None, "Where spawn work directories are made. [default: $TMPDIR or /tmp]"],
        ["spawn-error-status", None, "500", "HTTP status of the answer when the app cannot be started."],
        ["custom-error-page", None, None, "HTML file served instead of the error page when the app cannot be started."],
        ["health-check-path", None, None, "GET this path: a process is ready only when it answers 2xx/3xx, "
         "and is replaced when it fails it --health-check-failures times in a row."],
        ["health-check-interval", None, "10", "Seconds between health checks of a running process."],
        ["health-check-timeout", None, "5", "Seconds a health check may take."],
        ["health-check-failures", None, "3", "Failed health checks in a row after which a process is replaced."],
        ["user", None, None, "When run as root: the account app processes run as. [default: the app root's owner; "
         "never root: nobody then]"],
        ["group", None, None, "When run as root: the group app processes run as. [default: the user's group]"],
    ]
    optFlags: list[list[Any]] = [
        ["app-supports-kuria-protocol", None,
         "The app speaks SpawningKit's Kuria protocol: no $PORT; it writes response/finish and properties.json."],
        ["debug-spawn-dir", None, "Keep every spawn's work directory (for debugging the handshake)."],
        ["friendly-error-pages", None, "Show the detailed spawn error page (default: only with --environment development)."],
        ["no-friendly-error-pages", None, "Never show the detailed spawn error page."],
        ["load-shell-envvars", None, "Start the command through the user's login shell (bash -lc ...), "
         "so its profile sets the environment."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["envvars"] = {}

    def opt_listen(self, description: str) -> None:
        """Endpoint to serve HTTP on (repeatable; replaces --address/--port):
        tcp:PORT, unix:PATH, ssl:PORT:privateKey=KEY:certKey=CERT, systemd:domain=INET:index=0."""
        self["listen"].append(description)

    def opt_envvar(self, assignment: str) -> None:
        """NAME=VALUE to set in the app's environment (repeatable)."""
        try:
            name, value = parse_envvar(assignment)
        except ConfigError as e:
            raise ConfigExit(str(e)) from None
        self["envvars"][name] = value

    def opt_app_support_kuria_protocol(self) -> None:
        """Alias of --app-supports-kuria-protocol (Passenger Standalone's spelling)."""
        self["app-supports-kuria-protocol"] = True

    def opt_force_max_concurrent_requests_per_process(self, value: str) -> None:
        """Alias of --concurrency (Passenger's name)."""
        self["concurrency"] = value

    def postOptions(self) -> None:
        try:
            self["config"] = self._build()
        except ConfigError as e:
            raise ConfigExit(str(e)) from None

    def _build(self) -> ServerConfig:
        root = self["app-root"] or os.getcwd()
        if not os.path.isdir(root):
            raise ConfigError(f"--app-root {root!r}: no such directory")
        passengerfile = read_passengerfile(root)  # the command line wins over it
        command = self["app-start-command"] or passengerfile.get("app_start_command")
        if command is None:
            raise ConfigError("--app-start-command is required: the command that starts the app, e.g. 'node server.js'")
        if self["friendly-error-pages"] and self["no-friendly-error-pages"]:
            raise ConfigError("--friendly-error-pages and --no-friendly-error-pages contradict each other")
        friendly = True if self["friendly-error-pages"] else (False if self["no-friendly-error-pages"] else None)
        app = validate_app(
            AppConfig(
                name=os.path.basename(os.path.abspath(root)) or "app",
                root=root,
                start_command=str(command),
                environment=self["environment"],
                min_instances=non_negative_int("--min-instances", self["min-instances"]),
                max_pool_size=non_negative_int("--max-pool-size", self["max-pool-size"]),
                concurrency=_unknown_or_count(self["concurrency"]),
                max_request_queue_size=non_negative_int("--max-request-queue-size", self["max-request-queue-size"]),
                start_timeout=positive_seconds("--start-timeout", self["start-timeout"]),
                envvars=dict(self["envvars"]),
                shutdown_timeout=positive_seconds("--shutdown-timeout", self["shutdown-timeout"]),
                kuria=bool(self["app-supports-kuria-protocol"] or passengerfile.get("app_supports_kuria_protocol")),
                spawn_dir=self["spawn-dir"],
                debug_spawn_dir=bool(self["debug-spawn-dir"]),
                spawn_error_status=non_negative_int("--spawn-error-status", self["spawn-error-status"]),
                friendly_error_pages=friendly,
                custom_error_page=_read_page(self["custom-error-page"]),
                health_check_path=self["health-check-path"],
                health_check_interval=positive_seconds("--health-check-interval", self["health-check-interval"]),
                health_check_timeout=positive_seconds("--health-check-timeout", self["health-check-timeout"]),
                health_check_failures=non_negative_int("--health-check-failures", self["health-check-failures"]),
                user=self["user"],
                group=self["group"],
                load_shell_envvars=bool(self["load-shell-envvars"]),
            )
        )
        from passenger.spawn.users import resolve_app_user

        resolve_app_user(app)  # an unknown --user/--group, or root, is a config error now, not at the first spawn
        listen = tuple(self["listen"]) or (self._default_listen(),)
        skip_tls_stack_unless_needed(listen)
        for description in listen:
            _check_listen(description)
        return ServerConfig(
            app=app,
            listen=listen,
            drain_timeout=positive_seconds("--drain-timeout", self["drain-timeout"]),
        )

    def _default_listen(self) -> str:
        port = non_negative_int("--port", self["port"])
        if port > 65535:
            raise ConfigError(f"--port {port}: must be at most 65535")
        address = self["address"].replace(":", "\\:")
        return f"tcp:{port}:interface={address}"


#: Endpoint types that need pyOpenSSL.
TLS_ENDPOINTS = ("ssl:", "tls:", "le:", "lets:", "txsni:")


def skip_tls_stack_unless_needed(listen: tuple[str, ...]) -> None:
    """Keep pyOpenSSL and cryptography out of a server that serves no TLS.

    Twisted's TCP module loads them whenever they are installed; they are
    13 MB of the server's 50 MB at rest.  Only the twistd/twist entry point
    does this, before the reactor is imported, so an application that embeds
    PassengerService keeps its TLS.
    """
    if "OpenSSL" in sys.modules or any(d.lstrip().lower().startswith(TLS_ENDPOINTS) for d in listen):
        return
    if "twisted.internet.tcp" in sys.modules:
        return  # too late to make a difference
    sys.modules["OpenSSL"] = None  # type: ignore[assignment]


def _read_page(path: str | None) -> bytes | None:
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            return f.read(1024 * 1024)
    except OSError as e:
        raise ConfigError(f"--custom-error-page {path!r}: {e.strerror}") from None


def _check_listen(description: str) -> None:
    """Reject unparseable endpoints and TCP ports that are already taken."""
    from twisted.internet import endpoints

    try:
        endpoint = endpoints.serverFromString(None, description)
    except IndexError:
        raise ConfigError(f"--listen {description!r}: systemd passed no socket at that index "
                          "(see LISTEN_FDS, LISTEN_FDNAMES, LISTEN_PID)") from None
    except OSError as e:
        raise ConfigError(f"--listen {description!r}: {e.strerror}: {e.filename}") from None
    except (ValueError, TypeError, KeyError) as e:
        raise ConfigError(f"--listen {description!r}: {e}") from None
    port = getattr(endpoint, "_port", None)
    interface = getattr(endpoint, "_interface", "")
    if not isinstance(port, int) or port == 0:
        return
    if port > 65535:
        raise ConfigError(f"--listen {description!r}: port {port} is above 65535")
    family = socket.AF_INET6 if ":" in interface else socket.AF_INET
    probe = socket.socket(family, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((interface or "", port))
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise ConfigError(f"cannot listen on {interface or '*'}:{port}: the port is already in use") from None
        if e.errno == errno.EACCES:
            raise ConfigError(f"cannot listen on {interface or '*'}:{port}: permission denied") from None
        raise ConfigError(f"cannot listen on {interface or '*'}:{port}: {e.strerror}") from None
    finally:
        probe.close()


def makeService(options: Options) -> IService:
    """Build the service tree; nothing is bound or spawned until it starts."""
    from passenger.service import PassengerService

    return PassengerService(options["config"])

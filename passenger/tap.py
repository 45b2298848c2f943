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
import tempfile
from typing import Any

from twisted.application.service import IService
from twisted.python import usage

from passenger.config import ConfigError, ServerConfig
from passenger.loader import build_config
from passenger.options import SETTINGS, Setting


class ConfigExit(SystemExit):
    """A bad option value: exit 1 with one line, before twistd daemonizes.

    twistd answers a UsageError by printing the whole --help first, which buries
    the one line that matters; SystemExit prints just the message.
    """

    def __init__(self, message: str) -> None:
        super().__init__(f"passenger: {message}")
        self.message = message


def _help(setting: Setting) -> str:
    shown = setting.default
    if shown is None or shown in ((), {}) or setting.is_flag or "[default:" in setting.help:
        return setting.help
    return f"{setting.help} [default: {shown}]"


#: Settings whose default depends on others, so that the command line can also turn them off: --no-<option>.
OFF_FLAGS = {
    "friendly_error_pages": "Never show the detailed spawn error page.",
    "buffer_upload": "Stream request bodies to the app as they arrive, even with a known concurrency.",
}


class Options(usage.Options):
    """Every setting of ``options.py`` as an option; values stay raw until postOptions converts them."""

    synopsis = "[options]"
    longdesc = (
        "Spawn processes of any web app with --app-start-command (which gets its "
        "port in $PORT), keep a pool of them, and reverse-proxy HTTP to the least busy one. "
        "Several apps: --config FILE (TOML); options given here override the file."
    )

    optParameters: list[list[Any]] = [
        ["config", None, None, "TOML file declaring the server and its apps ([[app]] tables)."],
        *([s.option[2:], None, None, _help(s)] for s in SETTINGS if not s.is_flag and not s.repeatable),
    ]
    optFlags: list[list[Any]] = [
        *([s.option[2:], None, _help(s)] for s in SETTINGS if s.is_flag),
        *(["no-" + key.replace("_", "-"), None, help] for key, help in OFF_FLAGS.items()),
    ]

    def __init__(self) -> None:
        super().__init__()
        for setting in SETTINGS:
            if setting.repeatable:
                self[setting.option[2:]] = []

    def opt_listen(self, description: str) -> None:
        """Endpoint to serve HTTP on (repeatable; replaces --address/--port):
        tcp:PORT, unix:PATH, ssl:PORT:privateKey=KEY:certKey=CERT, systemd:domain=INET:index=0."""
        self["listen"].append(description)

    def opt_envvar(self, assignment: str) -> None:
        """NAME=VALUE to set in the app's environment (repeatable)."""
        self["envvar"].append(assignment)

    def opt_trusted_proxy(self, network: str) -> None:
        """A proxy (address or CIDR) whose X-Forwarded-* and Forwarded headers are trusted and extended (repeatable)."""
        self["trusted-proxy"].append(network)

    def opt_server_name(self, name: str) -> None:
        """Host name the app answers (repeatable; '*.example.com' and '*' allowed). [default: every host]"""
        self["server-name"].append(name)

    def opt_admin_listen(self, description: str) -> None:
        """Also serve the admin API, metrics and dashboard here, with basic auth (repeatable;
        e.g. tcp:3001:interface=127.0.0.1). [default: only the instance directory's Unix socket]"""
        self["admin-listen"].append(description)

    def opt_hook(self, assignment: str) -> None:
        """EVENT=COMMAND: run COMMAND (by /bin/sh) on attached_process, detached_process, spawn_failed or
        queue_full_error, with PASSENGER_* variables describing it (repeatable)."""
        self["hook"].append(assignment)

    def opt_app_support_kuria_protocol(self) -> None:
        """Alias of --app-supports-kuria-protocol (Passenger Standalone's spelling)."""
        self["app-supports-kuria-protocol"] = True

    def opt_force_max_concurrent_requests_per_process(self, value: str) -> None:
        """Alias of --concurrency (Passenger's name)."""
        self["concurrency"] = value

    def given(self) -> dict[str, Any]:
        """The settings given on the command line, raw, by setting key."""
        values: dict[str, Any] = {}
        for setting in SETTINGS:
            value = self[setting.option[2:]]
            if setting.is_flag:
                value = setting.flag_value if value else None
            elif setting.repeatable and not value:
                value = None
            values[setting.key] = value
        for key in OFF_FLAGS:
            option = key.replace("_", "-")
            if self["no-" + option]:
                if values[key]:
                    raise ConfigError(f"--{option} and --no-{option} contradict each other")
                values[key] = False
        return values

    def parseOptions(self, options: Any = None) -> None:
        """An unknown option or a missing value: one line (twistd would print the whole --help)."""
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            raise ConfigExit(f"{e} (see twistd passenger --help)") from None

    def postOptions(self) -> None:
        path = self["config"]
        if path is not None:
            path = os.path.abspath(path)  # twistd may chdir (--rundir) before a SIGHUP reads it again
        self["config-file"] = path
        try:
            self["config"] = config = self._build(path)
            parent = getattr(self, "parent", None)
            if parent is not None and os.geteuid() == 0 and parent.get("uid") is not None:
                _check_directories_as(config, parent["uid"], parent.get("gid"))
        except ConfigError as e:
            raise ConfigExit(str(e)) from None

    def _build(self, path: str | None) -> ServerConfig:
        config = build_config(self.given(), path, os.environ)
        skip_tls_stack_unless_needed(config.listen)
        bound: dict[int, tuple[str, str]] = {}
        for option, descriptions in (("--listen", config.listen), ("--admin-listen", config.admin_listen)):
            for description in descriptions:
                found = _check_listen(description, option)
                if found is None:
                    continue
                interface, port = found
                other = bound.get(port)
                if other is not None and (other[1] == interface or "" in (other[1], interface)
                                          or {other[1], interface} & {"0.0.0.0", "::"}):
                    raise ConfigError(f"{option} {description!r} and {other[0]} both want port {port}")
                bound[port] = (f"{option} {description!r}", interface)
        return config


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


def _check_listen(description: str, option: str = "--listen") -> tuple[str, int] | None:
    """Reject unparseable endpoints and TCP ports that are already taken; the TCP (interface, port), if any."""
    from twisted.internet import endpoints

    try:
        endpoint = endpoints.serverFromString(None, description)
    except IndexError:
        raise ConfigError(f"{option} {description!r}: systemd passed no socket at that index "
                          "(see LISTEN_FDS, LISTEN_FDNAMES, LISTEN_PID)") from None
    except OSError as e:
        raise ConfigError(f"{option} {description!r}: {e.strerror}: {e.filename}") from None
    except (ValueError, TypeError, KeyError) as e:
        raise ConfigError(f"{option} {description!r}: {e}") from None
    if isinstance(endpoint, endpoints.AdoptedStreamServerEndpoint):
        _check_adopted(description, endpoint.fileno, endpoint.addressFamily, option)
        return None
    unix_path = getattr(endpoint, "_address", None)
    if isinstance(endpoint, endpoints.UNIXServerEndpoint) and isinstance(unix_path, str):
        directory = os.path.dirname(os.path.abspath(unix_path))
        if not os.path.isdir(directory):
            raise ConfigError(f"{option} {description!r}: no such directory {directory}")
        if not os.access(directory, os.W_OK | os.X_OK):
            raise ConfigError(f"{option} {description!r}: cannot create a socket in {directory} (permission denied)")
        return None
    port = getattr(endpoint, "_port", None)
    interface = getattr(endpoint, "_interface", "")
    if not isinstance(port, int) or port == 0:
        return None
    if port > 65535:
        raise ConfigError(f"{option} {description!r}: port {port} is above 65535")
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
    return interface, port


def _check_directories_as(config: ServerConfig, uid: int, gid: int | None) -> None:
    """The directories the server writes to after twistd drops to --uid/--gid must be writable by that account.

    The settings' own checks ran as root; without this, the failure comes after
    the fork, as a cut-off traceback instead of a line on the terminal.
    """
    from passenger.admin.instance import registry_dir

    wanted = [("--instance-registry-dir", str(registry_dir(config.instance_registry_dir))),
              ("--data-buffer-dir", config.data_buffer_dir or tempfile.gettempdir())]
    saved_gid = os.getegid()
    try:
        if gid is not None:
            os.setegid(gid)
        os.seteuid(uid)
        refused = [(option, path) for option, path in wanted
                   if not os.access(path, os.W_OK | os.X_OK, effective_ids=True)]
    finally:
        os.seteuid(0)
        os.setegid(saved_gid)
    if refused:
        option, path = refused[0]
        raise ConfigError(f"{option} {path!r}: the account the server runs as (--uid {uid}) cannot write there")


def _check_adopted(description: str, fileno: int, family: socket.AddressFamily, option: str = "--listen") -> None:
    """A socket systemd passed must be the family ``domain=`` says (else client addresses come out garbled)."""
    try:
        with socket.socket(fileno=os.dup(fileno)) as passed:
            actual = passed.family
    except OSError as e:
        raise ConfigError(f"{option} {description!r}: descriptor {fileno} is not a socket ({e.strerror})") from None
    if actual != family:
        names = {socket.AF_INET: "INET", socket.AF_INET6: "INET6", socket.AF_UNIX: "UNIX"}
        raise ConfigError(f"{option} {description!r}: systemd passed an {names.get(actual, actual)} socket; "
                          f"use domain={names.get(actual, actual)} (ListenStream=0.0.0.0:PORT gives an INET socket, "
                          "a bare port an INET6 one)")


def makeService(options: Options) -> IService:
    """Build the service tree; nothing is bound or spawned until it starts."""
    from passenger.reactor import install_unless_chosen
    from passenger.service import PassengerService

    install_unless_chosen()  # twistd has not installed one unless --reactor was given

    config_file, given = options["config-file"], options.given()
    return PassengerService(options["config"], load_config=lambda: build_config(given, config_file, os.environ),
                            handle_signals=True)

"""Every setting, once: its key, its scope, how its value is checked, its help.

The command line, the TOML config file (``--config``) and an app's
``Passengerfile.json`` are three sources of the same settings.  Each value,
whatever its source, goes through its setting's converter, and an error names
where the value came from (``--min-instances`` or ``passenger.toml: app 'api':
min_instances``), so every mistake is one line the user can act on.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from passenger.config import ConfigError

Converter = Callable[[str, object], Any]

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: RFC 6265 cookie-name: an HTTP token.
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
#: A host name as in server_names: labels, optionally a leading "*." or a lone "*" (no port: as nginx's
#: server_name, a name matches the Host header whatever its port).
_LABEL = r"[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?"
_SERVER_NAME = re.compile(rf"^(\*|(\*\.)?{_LABEL}(\.{_LABEL})*)$")


def _shown(raw: object) -> str:
    return repr(raw) if isinstance(raw, str) else str(raw).lower() if isinstance(raw, bool) else str(raw)


def _number(label: str, raw: object, integer: bool, what: str) -> float:
    if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
        raise ConfigError(f"{label} {_shown(raw)}: expected {what}")
    if isinstance(raw, str):
        try:
            value = int(raw.strip()) if integer else float(raw.strip())
        except ValueError:
            raise ConfigError(f"{label} {raw!r}: expected {what}") from None
    elif integer and isinstance(raw, float):
        if not raw.is_integer():
            raise ConfigError(f"{label} {raw}: expected {what}")
        value = int(raw)
    else:
        value = raw
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{label} {raw}: expected {what}")
    return value


def whole(minimum: int = 0) -> Converter:
    """A whole number, at least ``minimum``."""

    def convert(label: str, raw: object) -> int:
        value = int(_number(label, raw, True, "a whole number"))
        if value < minimum:
            raise ConfigError(f"{label} {value}: must not be negative" if minimum == 0
                              else f"{label} {value}: must be at least {minimum}")
        return value

    return convert


def microseconds(maximum: int) -> Converter:
    """A whole number of microseconds, from 0 to ``maximum``."""

    def convert(label: str, raw: object) -> int:
        value = int(_number(label, raw, True, "a whole number of microseconds"))
        if not 0 <= value <= maximum:
            raise ConfigError(f"{label} {value}: must be from 0 to {maximum} microseconds")
        return value

    return convert


def seconds(zero_means: str | None = None) -> Converter:
    """A number of seconds, positive (or 0 when ``zero_means`` says what 0 does)."""

    def convert(label: str, raw: object) -> float:
        value = float(_number(label, raw, False, "a number of seconds"))
        if value < 0 or (value == 0 and zero_means is None):
            rule = "0 or more (0 " + zero_means + ")" if zero_means else "a positive number of seconds"
            raise ConfigError(f"{label} {_shown(raw)}: must be {rule}")
        return value

    return convert


#: Signals an app may be asked to stop with.
STOP_SIGNALS = ("TERM", "INT", "QUIT", "HUP", "USR1", "USR2", "KILL")


def stop_signal(label: str, raw: object) -> str:
    name = text(label, raw).upper().removeprefix("SIG")
    if name not in STOP_SIGNALS:
        raise ConfigError(f"{label} {raw!r}: expected one of {', '.join(STOP_SIGNALS)}")
    return name


def status(label: str, raw: object) -> int:
    value = int(_number(label, raw, True, "an HTTP status"))
    if not 100 <= value <= 599:
        raise ConfigError(f"{label} {value}: not an HTTP status (100-599)")
    return value


def port(label: str, raw: object) -> int:
    value = int(_number(label, raw, True, "a port number"))
    if not 0 <= value <= 65535:
        raise ConfigError(f"{label} {value}: must be a port number (0-65535)")
    return value


def flag(label: str, raw: object) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.strip().lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
        return raw.strip().lower() in ("true", "yes", "on", "1")
    raise ConfigError(f"{label} {_shown(raw)}: expected true or false")


def text(label: str, raw: object) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise ConfigError(f"{label} {_shown(raw)}: expected a non-empty string")
    return raw


def command(label: str, raw: object) -> str:
    if not isinstance(raw, str):
        raise ConfigError(f"{label} {_shown(raw)}: expected a string, the command that starts the app "
                          "(run by /bin/sh, e.g. 'node server.js')")
    if not raw.strip():
        raise ConfigError(f"{label} is empty: give the command that starts the app, e.g. 'node server.js'")
    return raw


def directory(label: str, raw: object) -> str:
    path = text(label, raw)
    if not os.path.isdir(path):
        raise ConfigError(f"{label} {path!r}: no such directory")
    return os.path.abspath(path)


def path_or_off(label: str, raw: object) -> str:
    """A path, or "" (or false) to switch the feature off."""
    if raw is False or raw == "":
        return ""
    return text(label, raw)


def writable_directory(label: str, raw: object) -> str:
    path = text(label, raw)
    if not (os.path.isdir(path) and os.access(path, os.W_OK | os.X_OK)):
        raise ConfigError(f"{label} {path!r}: not a directory the server can write to")
    return path


def page_file(label: str, raw: object) -> bytes:
    """An HTML file, read now (at most 1 MiB): a page that cannot be read is a config error, not a 500 later."""
    path = text(label, raw)
    try:
        with open(path, "rb") as f:
            return f.read(1024 * 1024)
    except OSError as e:
        raise ConfigError(f"{label} {path!r}: {e.strerror}") from None


def concurrency(label: str, raw: object) -> int | None:
    """N, 0 for unlimited, or unknown (None; also -1 as in Passenger)."""
    if isinstance(raw, str) and raw.strip().lower() in ("", "unknown", "-1"):
        return None
    if isinstance(raw, int) and not isinstance(raw, bool) and raw == -1:
        return None
    value = int(_number(label, raw, True, "a whole number, 0 (unlimited) or unknown"))
    if value < 0:
        raise ConfigError(f"{label} {value}: must be a whole number, 0 (unlimited) or unknown")
    return value


def health_path(label: str, raw: object) -> str:
    path = text(label, raw)
    if not path.startswith("/") or any(c in path for c in " \r\n\t"):
        raise ConfigError(f"{label} {path!r}: must start with / and contain no spaces")
    return path


def base_uri(label: str, raw: object) -> str:
    """A path prefix such as ``/blog``: starts with /, no trailing slash (except ``/`` itself)."""
    path = text(label, raw)
    if not path.startswith("/") or any(c in path for c in " \r\n\t?#"):
        raise ConfigError(f"{label} {path!r}: must be a path starting with / (no spaces, ? or #)")
    return path.rstrip("/") or "/"


def cookie_name(label: str, raw: object) -> str:
    name = text(label, raw)
    if not _TOKEN.match(name):
        raise ConfigError(f"{label} {name!r}: not a valid cookie name")
    return name


def header_value(label: str, raw: object) -> str:
    value = raw if isinstance(raw, str) else None
    if value is None or any(c in value for c in "\r\n\0"):
        raise ConfigError(f"{label} {_shown(raw)}: expected a string without line breaks")
    return value


def _strings(label: str, raw: object) -> list[str]:
    if isinstance(raw, str):
        return [part for part in re.split(r"[\s,]+", raw) if part]
    if isinstance(raw, (list, tuple)) and all(isinstance(item, str) for item in raw):
        return list(raw)
    raise ConfigError(f"{label} {_shown(raw)}: expected a list of strings")


def server_names(label: str, raw: object) -> tuple[str, ...]:
    names = []
    for name in _strings(label, raw):
        if not _SERVER_NAME.match(name):
            raise ConfigError(f"{label} {name!r}: not a host name (a name without port, '*.example.com' or '*')")
        names.append(name.lower())
    return tuple(names)


def listen_list(label: str, raw: object) -> tuple[str, ...]:
    if isinstance(raw, str):
        raw = [raw]
    descriptions = _strings(label, raw) if not isinstance(raw, str) else [raw]
    if not descriptions:
        raise ConfigError(f"{label}: give at least one endpoint, e.g. 'tcp:3000'")
    return tuple(descriptions)


def endpoint_list(label: str, raw: object) -> tuple[str, ...]:
    """Endpoints, or none at all (an empty list switches the feature off)."""
    if raw == [] or raw == ():
        return ()
    return listen_list(label, raw)


_SIZE = re.compile(r"^\s*(\d+)\s*([kmg]?)b?\s*$", re.I)


def size(label: str, raw: object) -> int:
    """Bytes, with an optional k, m or g suffix (1024-based): 10m, 1g, 65536."""
    if isinstance(raw, int) and not isinstance(raw, bool) and raw >= 0:
        return raw
    found = _SIZE.match(raw) if isinstance(raw, str) else None
    if found is None:
        raise ConfigError(f"{label} {_shown(raw)}: expected a size in bytes, e.g. 65536, 512k, 10m or 1g")
    return int(found.group(1)) * 1024 ** " kmg".index(found.group(2).lower() or " ")


def networks(label: str, raw: object) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """CIDRs such as 10.0.0.0/8 or 127.0.0.1 (a single address)."""
    found = []
    for text_value in _strings(label, raw):
        try:
            found.append(ipaddress.ip_network(text_value, strict=False))
        except ValueError:
            raise ConfigError(f"{label} {text_value!r}: not an address or network (e.g. 10.0.0.0/8)") from None
    return tuple(found)


def parse_envvar(label: str, assignment: str) -> tuple[str, str]:
    """Split ``NAME=VALUE`` as given to ``--envvar``."""
    name, sep, value = assignment.partition("=")
    if not sep or not _ENV_NAME.match(name):
        raise ConfigError(f"{label} {assignment!r}: expected NAME=VALUE with NAME a valid variable name")
    return name, value


def envvars(label: str, raw: object) -> dict[str, str]:
    """A table of NAME = "value" (file), or NAME=VALUE strings (command line)."""
    if isinstance(raw, (list, tuple)):
        return dict(parse_envvar(label, str(item)) for item in raw)
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{label} {_shown(raw)}: expected a table of NAME = \"value\"")
    result = {}
    for name, value in raw.items():
        if not isinstance(name, str) or not _ENV_NAME.match(name):
            raise ConfigError(f"{label}: {name!r} is not a valid variable name")
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ConfigError(f"{label}.{name}: expected a string")
        result[name] = str(value)
    return result


#: The events a --hook script can run on (Passenger's core hooks).
HOOK_EVENTS = ("attached_process", "detached_process", "spawn_failed", "queue_full_error")


def hooks(label: str, raw: object) -> dict[str, str]:
    """A table of EVENT = "command" (file), or EVENT=COMMAND strings (command line)."""
    if isinstance(raw, (list, tuple)):
        pairs = []
        for item in raw:
            name, sep, command_line = str(item).partition("=")
            if not sep:
                raise ConfigError(f"{label} {str(item)!r}: expected EVENT=COMMAND, e.g. spawn_failed=/usr/local/bin/alert")
            pairs.append((name.strip(), command_line))
    elif isinstance(raw, Mapping):
        pairs = list(raw.items())
    else:
        raise ConfigError(f"{label} {_shown(raw)}: expected a table of EVENT = \"command\"")
    result = {}
    for name, command_line in pairs:
        if name not in HOOK_EVENTS:
            raise ConfigError(f"{label}: {name!r} is not a hook event; choose from {', '.join(HOOK_EVENTS)}")
        if not isinstance(command_line, str) or not command_line.strip():
            raise ConfigError(f"{label}.{name}: expected the command to run (by /bin/sh)")
        result[name] = command_line
    return result


#: In the reference: no Passenger equivalent, or no default.
NONE = "\N{EN DASH}"
#: The longest busy_poll: past a few milliseconds it only burns CPU.
BUSY_POLL_MAX_US = 100_000


@attrs.frozen
class Setting:
    """One setting; ``key`` is its name in files and its field in AppConfig/ServerConfig."""

    key: str
    convert: Converter
    default: Any
    help: str
    scope: str = "app"
    #: The command-line option, if it is not ``--`` + key with dashes ("" for none).
    cli: str | None = None
    #: Also accepted in files under these names (Passenger's spellings).
    aliases: tuple[str, ...] = ()
    #: The field of AppConfig/ServerConfig, if it is not the key.
    field: str | None = None
    #: On the command line this is a flag (no value).
    is_flag: bool = False
    #: Repeatable on the command line; the values are collected in a list.
    repeatable: bool = False
    #: The value a flag gives when it is on the command line (False for a --no-... flag).
    flag_value: bool = True
    # For the configuration reference (docs/configuration.md, generated by ``python -m passenger.reference``):
    #: Passenger's equivalent, in Markdown: its name, where it comes from, how it differs (NONE when it has none).
    passenger: str = ""
    #: What the setting does, in Markdown, when ``help`` is too short for the reference.
    details: str = ""
    #: The value's name on the command line, when its converter does not say it (NAME, FILE, ADDR, ...).
    metavar: str = ""
    #: The default as the reference shows it, when neither the value nor help's "[default: ...]" says it well.
    shown_default: str = ""

    @property
    def option(self) -> str:
        return "--" + (self.cli if self.cli is not None else self.key.replace("_", "-"))

    @property
    def attribute(self) -> str:
        return self.field or self.key


_APP = "app"
_SERVER = "server"


def _on_by_default(key: str, help: str, **rest: Any) -> Setting:
    """A switch that is on unless ``--no-<key>`` (or ``<key> = false`` in a file) turns it off."""
    return Setting(key, flag, True, help, cli="no-" + key.replace("_", "-"), is_flag=True, flag_value=False, **rest)


SETTINGS: tuple[Setting, ...] = (
    # Which app, where it is, how it starts.
    Setting("name", text, None, "Name of the app in logs, status and errors. [default: the app root's directory name]",
            cli="app-name",
            passenger="`passenger_app_group_name` (nginx)", metavar="NAME",
            details="Name of the app in logs, status, hooks and errors; unique among the apps."),
    Setting("root", directory, None, "Directory of the app; the command runs there. [default: current directory]",
            cli="app-root", aliases=("app_root",),
            passenger="`app_root`", metavar="DIR",
            details="The app's directory; its processes start there. In a config file, relative to the file."),
    Setting("start_command", command, None, "Command that starts one app process listening on 127.0.0.1:$PORT.",
            cli="app-start-command", aliases=("app_start_command",),
            passenger="`app_start_command`", metavar="CMD", shown_default="(required)",
            details="Starts one process; it must listen on `127.0.0.1:$PORT`. Run as `/bin/sh -c \"exec CMD\"` in the "
            "app root, so `$PORT` and other shell syntax work."),
    Setting("environment", text, "production", "Sets PASSENGER_APP_ENV, RAILS_ENV, RACK_ENV, WSGI_ENV and NODE_ENV.",
            passenger="`environment` (Standalone's default is `development`)", metavar="NAME",
            details="Sets `PASSENGER_APP_ENV`, `RAILS_ENV`, `RACK_ENV`, `WSGI_ENV` and `NODE_ENV`; `development` also "
            "turns on the friendly error pages."),
    Setting("envvars", envvars, {}, "NAME=VALUE to set in the app's environment (repeatable).", cli="envvar",
            repeatable=True,
            passenger="`envvars`", shown_default=NONE,
            details="Repeatable; set in the app's environment, last, so it can override the defaults."),
    Setting("app_supports_kuria_protocol", flag, False,
            "The app speaks SpawningKit's Kuria protocol: no $PORT; it writes response/finish and properties.json.",
            field="kuria", is_flag=True,
            passenger="`app_supports_kuria_protocol` (Passengerfile.json), "
            "`app_support_kuria_protocol` (command line)",
            details="The app speaks SpawningKit's Kuria protocol: no `PORT`; it writes `1` to `response/finish` and "
            "lists its sockets in `response/properties.json`. See `spawning.md`."),
    Setting("load_shell_envvars", flag, False,
            "Start the command through the user's login shell (bash -lc ...), so its profile sets the environment.",
            is_flag=True,
            passenger="`load_shell_envvars`",
            details="Start the command through the account's login shell (`bash -lc …`; also zsh, ksh and dash), so its "
            "profile sets the environment."),
    Setting("user", text, None,
            "When run as root: the account app processes run as. [default: the app root's owner; never root: nobody then]",
            passenger="`passenger_user` (nginx; Standalone's `user` is the account the server itself drops to)",
            metavar="NAME", shown_default="the app root's owner (never root: `nobody`)",
            details="Only when the server runs as root: the account app processes run as, with its supplementary "
            "groups and `HOME`, `USER`, `LOGNAME`, `SHELL`."),
    Setting("group", text, None, "When run as root: the group app processes run as. [default: the user's group]",
            passenger="`passenger_group` (nginx)", metavar="NAME",
            details="Only when the server runs as root: the group app processes run as."),
    # Which requests go to it.
    Setting("server_names", server_names, (), "Host names this app answers (repeatable; '*.example.com' and '*' "
            "allowed). [default: every host]", cli="server-name", repeatable=True,
            passenger="`server_names`", metavar="HOST",
            details="Repeatable; the hosts this app answers (`example.com`, `*.example.com`, `*`), without port. "
            "See [Which app answers a request](#which-app-answers-a-request)."),
    Setting("base_uri", base_uri, "/", "Path prefix the app is mounted at (it gets PASSENGER_BASE_URI).",
            passenger="`base_uri`",
            details="The path prefix the app answers; it gets `PASSENGER_BASE_URI` (and `RACK_BASE_URI`, "
            "`RAILS_RELATIVE_URL_ROOT`) when it is not `/`."),
    Setting("buffer_upload", flag, None, "Read each request body in full (memory, then a temp file) before an app "
            "process is chosen, so slow uploads never hold a process. [default: on for apps with a known concurrency]",
            is_flag=True,
            passenger="`passenger_request_buffering` (nginx)",
            shown_default="on when `concurrency` is known (N > 0)",
            details="Read each request body in full (64 KiB in memory, the rest in an unnamed temp file) before a "
            "process is chosen, so slow uploads never hold a process; the app gets it with `Content-Length`."),
    Setting("static_files_dir", path_or_off, None, "Directory of files the server serves itself for GET and HEAD, "
            "relative to the app root; \"\" for none. [default: public, when it exists]",
            passenger="`static_files_dir` (nginx engine)", metavar="DIR",
            shown_default="`public`, when it exists",
            details="Files the server serves itself for GET and HEAD (relative to the app root); `\"\"` for none. "
            "See `http.md`."),
    # How many processes.
    Setting("min_instances", whole(), 1, "Processes of the app to keep running at all times.",
            passenger="`min_instances`",
            details="Processes spawned at start and kept running. Together they must fit in `max_pool_size`."),
    Setting("max_instances", whole(), 0, "Most processes of the app (0: only --max-pool-size limits it).",
            passenger="`max_instances` (Enterprise; `max_instances_per_app` in nginx)",
            details="Most processes of this app; `0`: only `max_pool_size` limits it."),
    Setting("concurrency", concurrency, None,
            "Requests one process can take at once: N, 0 for unlimited, or unknown. [default: unknown]",
            aliases=("force_max_concurrent_requests_per_process",),
            passenger="`force_max_concurrent_requests_per_process`",
            details="Requests a process takes at once: N, `0` = unlimited, or `unknown` (also `-1`, as in Passenger). "
            "The app may also declare it in `properties.json`."),
    Setting("max_spawns_in_parallel", whole(1), 1, "Processes of the app that may be starting at the same time.",
            passenger=NONE,
            details="Processes of the app starting at once (more scales a cold burst faster)."),
    # Queueing.
    Setting("max_request_queue_size", whole(), 100, "Requests that may wait for a process; beyond that 503. 0 = unbounded.",
            passenger="`max_request_queue_size`",
            details="Requests that may wait for a process; more get 503 (`request_queue_overflow_status_code`) at "
            "once. `0` = unbounded."),
    Setting("max_request_queue_time", seconds("= no limit"), 0.0,
            "Seconds a request may wait for a process; beyond that 504. 0 = no limit.",
            passenger="`max_request_queue_time` (Enterprise)",
            details="A request that waited longer for a process gets 504. `0` = no limit."),
    Setting("request_queue_overflow_status_code", status, 503, "HTTP status of the answer when the queue is full.",
            cli="request-queue-overflow-status",
            passenger="`passenger_request_queue_overflow_status_code` (nginx)",
            details="Status of the answer when the queue is full."),
    # Recycling.
    Setting("pool_idle_time", seconds("= never"), 300.0,
            "Seconds an idle process is kept before it is stopped (never below --min-instances). 0 = forever.",
            passenger="`pool_idle_time`",
            details="An idle process is stopped after this long, never below `min_instances`. `0` = never."),
    Setting("max_requests", whole(), 0, "Replace a process after it has served this many requests. 0 = never.",
            passenger="`max_requests`",
            details="A process is replaced, gracefully, after this many requests. `0` = never."),
    Setting("memory_limit", whole(), 0, "Replace a process whose memory (RSS) is above this many MB. 0 = no limit.",
            passenger="`memory_limit` (Enterprise)", metavar="MB",
            details="A process above this RSS in MB (checked every 5 s) finishes its requests and is replaced. "
            "`0` = no limit."),
    Setting("max_request_time", seconds("= no limit"), 0.0,
            "Seconds a request may run; beyond that 504 and its process is replaced. 0 = no limit.",
            passenger="`max_request_time` (Enterprise)",
            details="A request running longer gets 504 and its process is replaced at once. If the response had "
            "begun, what was sent arrives and the connection then closes short of it. `0` = no limit."),
    # Sticky sessions.
    Setting("sticky_sessions", flag, False, "Send a client back to the process that served it before (a cookie).",
            is_flag=True,
            passenger="`sticky_sessions`",
            details="Send a client back to the process that served it (a cookie)."),
    Setting("sticky_sessions_cookie_name", cookie_name, "_passenger_route", "Name of the sticky-session cookie.",
            passenger="`sticky_sessions_cookie_name`", metavar="NAME",
            details="The cookie's name."),
    Setting("sticky_sessions_cookie_attributes", header_value, "SameSite=Lax; Secure;",
            "Attributes added to the sticky-session cookie.",
            passenger="`sticky_sessions_cookie_attributes`", metavar="A",
            details="Added to the cookie (it is not HttpOnly, so that WebSocket handshakes carry it, as in Passenger)."),
    # Starting and stopping processes.
    Setting("start_timeout", seconds(), 90.0, "Seconds a process may take to start listening before it is killed.",
            passenger="`start_timeout`",
            details="A process not ready by then (listening; for a Kuria app, `1` written to `response/finish`; with "
            "`--health-check-path`, answering it) is killed (SIGKILL) and the spawn fails."),
    Setting("stop_signal", stop_signal, "TERM", "Signal that asks an app process to stop (after its stdin is closed).",
            passenger=f"{NONE} (Passenger sends TERM to generic apps)",
            details="Sent to a process to stop it, after its stdin is closed."),
    Setting("shutdown_timeout", seconds(), 30.0, "Seconds between the stop signal and KILL when an app process is stopped.",
            passenger=f"{NONE} (Passenger: 60 s, fixed)",
            details="How long a process gets between the stop signal and KILL."),
    _on_by_default("abort_websockets_on_process_shutdown",
            "Keep WebSockets (and other upgraded connections) of a stopping process open until they close or the drain "
            "timeout passes, instead of aborting them (Passenger's default).",
            passenger="`abort_websockets_on_process_shutdown`",
            shown_default="on (abort)",
            details="Off: a stopping process's WebSockets (and other upgraded connections) stay open until they close "
            "or `drain_timeout` passes."),
    # Restarts.
    Setting("restart_dir", text, None, "Where tmp/restart.txt and always_restart.txt are looked for. [default: APP_ROOT/tmp]",
            passenger="`restart_dir`", metavar="DIR", shown_default="`<root>/tmp`",
            details="Where `restart.txt` and `always_restart.txt` are watched (relative: to the app root). See "
            "`restarts.md`."),
    Setting("rolling_restarts", flag, False,
            "Restart one process at a time, new ones taking requests first, instead of all at once.", is_flag=True,
            passenger="`rolling_restarts` (Enterprise)",
            details="Restart one process at a time, the new one taking requests first."),
    Setting("resist_deployment_errors", flag, False,
            "In a rolling restart, keep the old processes serving if a new one fails to start.", is_flag=True,
            passenger="`resist_deployment_errors` (Enterprise)",
            details="In a rolling restart, if a new process fails to start, keep the old ones serving and stop the "
            "restart."),
    Setting("spawn_dir", writable_directory, None, "Where spawn work directories are made. [default: $TMPDIR or /tmp]",
            passenger="`spawn_dir`", shown_default="`$TMPDIR` or `/tmp`",
            details="Where each spawn's work directory is made, and failed spawns' reports "
            "(`passenger-error-<id>.html`) are saved."),
    Setting("debug_spawn_dir", flag, False, "Keep every spawn's work directory (for debugging the handshake).",
            is_flag=True,
            passenger="`debugWorkDir` (SpawningKit)",
            details="Keep the work directories after successful spawns."),
    # Spawn errors.
    Setting("spawn_error_status", status, 500, "HTTP status of the answer when the app cannot be started.",
            passenger="`passenger_spawn_exception_status_code` (nginx)",
            details="Status of the answer when the app cannot start."),
    Setting("friendly_error_pages", flag, None,
            "Show the detailed spawn error page (default: only with --environment development).", is_flag=True,
            passenger="`friendly_error_pages`", shown_default="only with `--environment development`",
            details="The detailed spawn error page (journey, output, environment with secrets masked)."),
    Setting("custom_error_page", page_file, None,
            "HTML file served instead of the error page when the app cannot be started.",
            passenger="`custom_error_page`", metavar="FILE",
            details="An HTML file (read at start, at most 1 MiB) served instead of the error page when the app "
            "cannot start."),
    # Health.
    Setting("health_check_path", health_path, None, "GET this path: a process is ready only when it answers 2xx/3xx, "
            "and is replaced when it fails it --health-check-failures times in a row.",
            passenger=NONE,
            details="A process is ready only when `GET PATH` answers 2xx/3xx, and is replaced when it fails "
            "`--health-check-failures` checks in a row."),
    Setting("health_check_interval", seconds(), 10.0, "Seconds between health checks of a running process.",
            passenger=NONE, details="Between checks of a running process."),
    Setting("health_check_timeout", seconds(), 5.0, "Seconds a health check may take.",
            passenger=NONE, details="How long one check may take."),
    Setting("health_check_failures", whole(1), 3, "Failed health checks in a row after which a process is replaced.",
            passenger=NONE, details="Failed checks in a row before a process is replaced."),
    # The server.
    Setting("listen", listen_list, (), "Endpoint to serve HTTP on (repeatable; replaces --address/--port): tcp:PORT, "
            "unix:PATH, ssl:PORT:privateKey=KEY:certKey=CERT, systemd:domain=INET:index=0.", scope=_SERVER,
            repeatable=True,
            passenger=f"{NONE} (`address`, `port`, `socket_file`)", shown_default=NONE,
            details="Repeatable; replaces `--address`/`--port`. `tcp:8080`, `unix:/run/app.sock`, "
            "`ssl:443:privateKey=key.pem:certKey=cert.pem`, `systemd:domain=INET:index=0`."),
    Setting("address", text, "0.0.0.0", "Address to listen on for HTTP.", scope=_SERVER,
            passenger="`address`", metavar="ADDR", details="Address of the HTTP listener."),
    Setting("port", port, 3000, "Port to listen on for HTTP.", scope=_SERVER,
            passenger="`port`", details="Port of the HTTP listener."),
    Setting("ssl", flag, False, "Serve HTTPS on --address/--port (or on --ssl-port, HTTP staying on --port) with "
            "--ssl-certificate and --ssl-certificate-key.", scope=_SERVER, is_flag=True,
            passenger="`ssl`",
            details="Serve HTTPS on `--address`/`--port` (or on `--ssl-port`, HTTP staying on `--port`), through "
            "pyOpenSSL with Twisted's secure defaults; apps get `X-Forwarded-Proto: https`."),
    Setting("ssl_certificate", text, None, "PEM file: the server's certificate, then its chain.", scope=_SERVER,
            passenger="`ssl_certificate`", metavar="FILE",
            details="PEM: the certificate, then its chain."),
    Setting("ssl_certificate_key", text, None, "PEM file: the certificate's private key.", scope=_SERVER,
            passenger="`ssl_certificate_key`", metavar="FILE", details="PEM: its private key."),
    Setting("ssl_port", port, None, "Serve HTTPS on this port as well as HTTP on --port.", scope=_SERVER,
            passenger="`ssl_port`", details="HTTPS on this port as well as HTTP on `--port`."),
    Setting("max_pool_size", whole(1), 6, "Most processes to run, all apps together.", scope=_SERVER,
            passenger="`max_pool_size`", details="Most processes of all apps together."),
    Setting("max_body_size", size, 1024**3, "Largest request body; a larger one gets 413 before any app process "
            "sees it (k, m, g suffixes).", scope=_SERVER,
            passenger="`client_max_body_size` (1024m in Passenger Standalone)",
            details="A larger request body gets 413 before any app process sees it (`k`, `m`, `g` suffixes)."),
    Setting("allow_underscore_headers", flag, False, "Pass request headers whose names contain '_' to apps "
            "(dropped by default: they can spoof other headers, Passenger's CVE-2015-7519 rule).", scope=_SERVER,
            is_flag=True,
            passenger="`underscores_in_headers` (nginx)",
            details="Pass request headers whose names contain `_` (others outside `[A-Za-z0-9-]` are always "
            "dropped)."),
    Setting("trusted_proxies", networks, (), "A proxy (address or CIDR) in front of this server whose X-Forwarded-* "
            "and Forwarded headers are kept and extended (repeatable). [default: none: clients' are replaced]",
            scope=_SERVER, cli="trusted-proxy", repeatable=True,
            passenger="`set_real_ip_from` (nginx)", shown_default="none",
            details="Repeatable; a proxy in front whose `X-Forwarded-*` and `Forwarded` headers are kept and "
            "extended."),
    Setting("show_version_in_header", flag, False, "Add X-Powered-By: passenger/VERSION to responses.",
            scope=_SERVER, is_flag=True,
            passenger="`show_version_in_header` (on in Passenger)",
            details="Add `X-Powered-By: passenger/VERSION` to responses."),
    Setting("request_head_timeout", seconds(), 30.0, "Seconds a client has to send a request head; then 408 and "
            "the connection is closed (slowloris).", scope=_SERVER,
            passenger="`client_header_timeout` (nginx)",
            details="A client has this long to send a request head; then 408 and the connection closes "
            "(slowloris)."),
    Setting("request_body_timeout", seconds(), 60.0, "Seconds a client may pause while sending a request body; "
            "then 408 and the connection is closed.", scope=_SERVER,
            passenger="`client_body_timeout` (nginx)",
            details="The longest pause while a client sends a body; then 408. Pauses the server causes "
            "(back-pressure) do not count."),
    Setting("keepalive_timeout", seconds(), 75.0, "Seconds an idle keep-alive connection is kept open.", scope=_SERVER,
            passenger="`keepalive_timeout` (nginx)",
            details="An idle keep-alive connection is closed after this long."),
    Setting("socket_backlog", whole(1), 2048, "Connections the kernel queues for the server to accept (listen "
            "backlog; added to tcp:, ssl: and unix: endpoints that do not set backlog=).", scope=_SERVER,
            passenger="`socket_backlog`",
            details="The listen backlog, added to `tcp:`, `ssl:` and `unix:` endpoints that set no `backlog=` "
            "(Twisted's own default of 50 drops connections in a burst)."),
    Setting("max_connections", whole(), 10000, "Client connections open at once; more are closed at once "
            "(0: no limit).", scope=_SERVER,
            passenger="`worker_connections` (nginx)",
            details="Client connections open at once; more are closed as soon as they are accepted. `0` = no limit."),
    Setting("data_buffer_dir", writable_directory, None, "Where request bodies past 64 KiB and responses past 128 "
            "KiB held for slow clients are spooled (deleted files). [default: $TMPDIR or /tmp]", scope=_SERVER,
            passenger="`data_buffer_dir`", shown_default="`$TMPDIR` or `/tmp`",
            details="Where buffered request bodies past 64 KiB, and responses past 128 KiB held for slow clients, "
            "are spooled (deleted files)."),
    Setting("response_buffer_high_watermark", size, 128 * 1024**2, "Bytes of a response held for a slow client "
            "(memory, then data_buffer_dir) before the app connection is paused; the process is free once its "
            "response is held (0: no limit).", scope=_SERVER,
            passenger="`response_buffer_high_watermark`",
            details="A slow client's response is held (128 KiB in memory, the rest in `data_buffer_dir`) so the app "
            "process is freed as soon as its response is complete; past this many held bytes the app connection is "
            "paused instead. `0` = no limit."),
    Setting("send_timeout", seconds(), 60.0, "Seconds a client may go without reading any of its response; then "
            "the connection is closed.", scope=_SERVER,
            passenger="`send_timeout` (nginx)",
            details="A client that reads none of its response for this long is disconnected (its held response is "
            "dropped)."),
    Setting("access_log", path_or_off, "", "Where to log each request (combined format, request id, upstream "
            "time): a file, or - for standard output. [default: no access log]", scope=_SERVER,
            passenger="`access_log` (nginx)", metavar="FILE", shown_default="none",
            details="One line per request (combined format, then `rid=` request id and `upstream=` seconds) to a "
            "file, or `-` for standard output. Held in memory and written every second or every 64 KiB, whichever "
            "comes first; if a write fails (a full disk), those lines are lost and one warning is logged until "
            "writes work again; reopened on SIGUSR1."),
    Setting("busy_poll", microseconds(BUSY_POLL_MAX_US), 0, "Microseconds the server keeps polling instead of "
            "sleeping after it handled events: lower tail latency on virtual machines, for more CPU. 0 = off.",
            scope=_SERVER, metavar="USEC",
            passenger=f"{NONE} (HAProxy: `busy-polling`, which never sleeps)",
            details="After a burst of work the server polls for more without sleeping, for at most this many "
            "microseconds, before it sleeps until the next event. On a virtual machine every wake-up of a "
            "sleeping process costs tens of microseconds, on both sides; under steady load this takes them off "
            "the request path (at half of the maximum rate, `bench/compare_bench.py` measured the p99 0.05 to 0.15 ms "
            "lower with `500`, and no lower in runs where the machine was busier; 0.4 to 0.6 ms before the server "
            "began giving way to the apps on its CPU, see `operations.md`). It costs CPU while "
            "traffic comes in bursts: up to this long after each "
            "one. An idle server sleeps at once. Needs the server's own reactor (`twistd passenger` installs "
            "it); with another, the setting is ignored with a warning."),
    _on_by_default("io_uring", "Send what the server writes in one pass of its event loop with a system call "
            "per socket, instead of all of it in one call through an io_uring.", scope=_SERVER,
            passenger=NONE, shown_default="on (where the kernel allows it)",
            details="At the end of each pass of its event loop the server sends what it wrote to its clients and "
            "to the apps. One system call per socket handed the CPU to each peer it woke on the server's CPU "
            "(a client, an app process) as that call returned, so the peer took its responses one at a time "
            "between the server's sends; through an io_uring they all leave before the call returns "
            "(`bench/compare_bench.py`'s latency scenario: p99 0.03 to 0.15 ms and p50 0.04 to 0.05 ms lower at half the "
            "maximum rate, the same CPU at full load). Where the kernel refuses io_uring (older than 5.18, a seccomp profile, "
            "`kernel.io_uring_disabled`) the server logs why once and sends one call per socket. `--no-io-uring` "
            "(`io_uring = false`) turns it off. Needs the server's own reactor (`twistd passenger` installs it)."),
    _on_by_default("loopback_reno", "Leave TCP connections within this host (to the apps, from a proxy on "
            "the same machine) to the system's congestion control, instead of Reno.", scope=_SERVER,
            passenger=NONE, shown_default="on",
            details="A TCP connection between two addresses of this host (every connection to an app process, "
            "and a client on a loopback address, such as a proxy in front on the same machine) uses Reno "
            "congestion control. Linux gives each socket the system's choice "
            "(`net.ipv4.tcp_congestion_control`); BBR, a common one, paces every send with a timer, and on a "
            "connection that never leaves the machine that pacing only costs the sender CPU "
            "(`bench/compare_bench.py`'s 1 MiB responses under BBR: 350 µs of the server's CPU per response "
            "and 1,900 responses a second with the system's choice, 190 µs and 2,700 with Reno). Reno never "
            "paces, and every process may choose it. Connections to and from other hosts keep the system's "
            "choice. `--no-loopback-reno` (`loopback_reno = false`) leaves every connection to the system."),
    Setting("instance_registry_dir", writable_directory, None, "Where the server makes its private instance "
            "directory (properties, admin passwords, the admin socket) that passenger-status and passenger-config "
            "find. [default: $TMPDIR or /tmp]", scope=_SERVER,
            passenger="`instance_registry_dir`", shown_default="`$TMPDIR` or `/tmp`",
            details="Where the server makes its instance directory (`passenger.XXXXXXXX`, mode 0700: properties, "
            "admin passwords, the admin socket), which `passenger-status` and `passenger-config` look for. See "
            "`admin.md`."),
    Setting("admin_listen", endpoint_list, (), "Also serve the admin API, metrics and dashboard on this endpoint, "
            "with basic auth (repeatable; e.g. tcp:3001:interface=127.0.0.1). [default: only the instance "
            "directory's Unix socket]", scope=_SERVER, repeatable=True,
            passenger="`admin_addresses` (Standalone)", shown_default="none",
            details="Repeatable; also serve the admin API, `/metrics` and the dashboard on this endpoint (e.g. "
            "`tcp:3001:interface=127.0.0.1`), with basic auth. Without it, only the instance directory's Unix "
            "socket."),
    Setting("hooks", hooks, {}, "EVENT=COMMAND: run COMMAND (by /bin/sh) on attached_process, detached_process, "
            "spawn_failed or queue_full_error, with PASSENGER_* variables describing it (repeatable).",
            scope=_SERVER, cli="hook", repeatable=True,
            passenger="`--ctls hook_<event>=COMMAND` (nginx: `passenger_ctl`)", shown_default="none",
            details="Repeatable; run COMMAND by `/bin/sh` on `attached_process`, `detached_process`, `spawn_failed` or "
            "`queue_full_error`, with `PASSENGER_*` variables. See `admin.md`."),
    Setting("drain_timeout", seconds(), 60.0, "Seconds in-flight requests get to finish when the server stops or a "
            "process leaves; then they get 504 and the process is stopped anyway.", scope=_SERVER,
            passenger=f"{NONE} (Passenger waits forever)",
            details="How long in-flight requests get to finish when the server stops or a process leaves; then they "
            "get 504 and the process is stopped anyway."),
)

BY_KEY: dict[str, Setting] = {s.key: s for s in SETTINGS}
for _setting in SETTINGS:
    for _alias in _setting.aliases:
        BY_KEY[_alias] = _setting
APP_SETTINGS = tuple(s for s in SETTINGS if s.scope == _APP)
SERVER_SETTINGS = tuple(s for s in SETTINGS if s.scope == _SERVER)

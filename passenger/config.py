"""Validated, frozen configuration values.

Everything a user can get wrong is checked here, once, before anything is
spawned or daemonized; every problem becomes a one-line :class:`ConfigError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

#: Passenger's "unknown" concurrency: the app never said how many requests a
#: process can take at once.
UNKNOWN_CONCURRENCY = None


class ConfigError(ValueError):
    """A configuration value is unusable; the message is one line for the user."""


@attrs.frozen
class AppConfig:
    """One application: how to start it, which requests it gets, how many of it to run.

    The meaning and default of each field is in ``passenger/options.py``.
    """

    name: str
    root: str
    start_command: str
    environment: str = "production"
    envvars: Mapping[str, str] = attrs.field(factory=dict)
    #: The app speaks SpawningKit's Kuria protocol: no $PORT; it reports its sockets.
    kuria: bool = False
    load_shell_envvars: bool = False
    user: str | None = None
    group: str | None = None
    #: Host names (lower case; "*.example.com", "*") and the path prefix it answers.
    server_names: tuple[str, ...] = ()
    base_uri: str = "/"
    #: Read request bodies in full before choosing a process (None: when the concurrency is known).
    buffer_upload: bool | None = None
    #: Files the server serves itself (None: <root>/public if it exists; "": none).
    static_files_dir: str | None = None
    min_instances: int = 1
    #: 0: only the pool's max_pool_size limits it.
    max_instances: int = 0
    #: None: unknown (Passenger's default); 0: unlimited; N: at most N at once.
    concurrency: int | None = UNKNOWN_CONCURRENCY
    max_spawns_in_parallel: int = 1
    max_request_queue_size: int = 100
    #: Seconds a request may wait in the queue (0: no limit).
    max_request_queue_time: float = 0.0
    request_queue_overflow_status_code: int = 503
    #: Seconds an idle process is kept above min_instances (0: forever).
    pool_idle_time: float = 300.0
    #: Recycle a process after this many requests (0: never).
    max_requests: int = 0
    #: Recycle a process whose RSS is above this many MB (0: no limit).
    memory_limit: int = 0
    #: Seconds a request may run before it gets 504 and its process is replaced (0: no limit).
    max_request_time: float = 0.0
    sticky_sessions: bool = False
    sticky_sessions_cookie_name: str = "_passenger_route"
    sticky_sessions_cookie_attributes: str = "SameSite=Lax; Secure;"
    start_timeout: float = 90.0
    #: The signal that asks a process to stop; KILL follows after shutdown_timeout.
    stop_signal: str = "TERM"
    shutdown_timeout: float = 30.0
    #: Abort a stopping process's upgraded connections (WebSockets) at once, as Passenger.
    abort_websockets_on_process_shutdown: bool = True
    #: Where restart.txt and always_restart.txt are watched (None: <root>/tmp).
    restart_dir: str | None = None
    rolling_restarts: bool = False
    resist_deployment_errors: bool = False
    #: Where spawn work directories go (None: $TMPDIR or /tmp).
    spawn_dir: str | None = None
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

    @property
    def instance_limit(self) -> int | None:
        """The most processes this app may have on its own account (None: no limit but the pool's)."""
        return self.max_instances or None


@attrs.frozen
class ServerConfig:
    """The whole server: where it listens, the apps it runs, the limits they share."""

    apps: tuple[AppConfig, ...]
    listen: tuple[str, ...] = ("tcp:3000:interface=0.0.0.0",)
    #: Most processes of all apps together.
    max_pool_size: int = 6
    #: Seconds in-flight requests get to finish when the server stops or a process leaves.
    drain_timeout: float = 60.0
    #: Largest request body in bytes (413 beyond).
    max_body_size: int = 1024**3
    allow_underscore_headers: bool = False
    #: Proxies whose forwarding headers are trusted (ip_network objects).
    trusted_proxies: tuple[Any, ...] = ()
    show_version_in_header: bool = False
    #: Client deadlines, in seconds: the request head, a pause in a body, an idle keep-alive connection.
    request_head_timeout: float = 30.0
    request_body_timeout: float = 60.0
    keepalive_timeout: float = 75.0
    #: Client connections open at once (0: no limit).
    max_connections: int = 10000
    #: The listen backlog of tcp:, ssl: and unix: endpoints (Passenger's socket_backlog).
    socket_backlog: int = 2048
    #: Where buffered request bodies and held responses are spooled (None: the temp directory).
    data_buffer_dir: str | None = None
    #: Response bytes held for a slow client before the app connection is paused (0: no limit).
    response_buffer_high_watermark: int = 128 * 1024**2
    #: Seconds a client may go without reading any of its response.
    send_timeout: float = 60.0
    #: Microseconds to poll without sleeping after handling events (0: off; PassengerEPollReactor only).
    busy_poll: int = 0
    #: Send the writes of a reactor pass through an io_uring, in one system call (PassengerEPollReactor only).
    io_uring: bool = True
    #: TCP connections within this host (apps, a local proxy) use Reno instead of the system's congestion control.
    loopback_reno: bool = True
    #: Where the instance directory is made (None: the temp directory).
    instance_registry_dir: str | None = None
    #: Extra endpoints for the admin API (basic auth).
    admin_listen: tuple[str, ...] = ()
    #: Scripts to run on pool events, by event name.
    hooks: Mapping[str, str] = attrs.field(factory=dict)
    #: The access log: a path, "-" for standard output, "" for none.
    access_log: str = ""

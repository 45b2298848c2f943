"""Spawning one app process and performing its startup handshake (passenger-gls.md §1.2).

Preparation (work directory, port, environment), the fork, then the handshake:
a generic app is ready at the first TCP connect to its ``$PORT``; a Kuria app
when it writes ``1`` to ``response/finish`` and lists its sockets in
``properties.json``.  Every way this can fail ends in one SpawnReport that
says what happened, with the journey, the app's output and its environment.
The process's life after that belongs to its lifecycle machine and its group.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterable
from typing import Any

from twisted.logger import Logger
from twisted.python.failure import Failure

from passenger import __version__
from passenger.config import AppConfig, ConfigError
from passenger.pool.process import AppProcess, ProcessObserver, describe_exit
from passenger.spawn import journey as steps
from passenger.spawn.environment import app_argv, app_environment
from passenger.spawn.finish import FinishSignal
from passenger.spawn.health import HealthResult, check_http
from passenger.spawn.journey import Journey
from passenger.spawn.ports import NoFreePort, PortAllocator
from passenger.spawn.probe import PortProbe
from passenger.spawn.properties import PropertiesError, parse_properties, process_concurrency
from passenger.spawn.protocol import AppProcessProtocol
from passenger.spawn.report import CATEGORIES, JourneyStep, SpawnReport, default_texts, new_error_id
from passenger.spawn.sockets import describe_wrong_listen, listening_ports, not_exec_yet
from passenger.spawn.users import AppUser, login_shell, resolve_app_user, unreachable
from passenger.spawn.workdir import PROPERTIES_CAP, WorkDir, user_info_text

#: Lines of the app's output a report shows.
REPORT_OUTPUT_LINES = 50
#: While a generic app starts, how often to look for it listening somewhere else than $PORT.
WRONG_PORT_FIRST_CHECK = 0.2
WRONG_PORT_INTERVAL = 0.25
#: Between readiness health checks.
HEALTH_RETRY = 0.1


class SpawnError(RuntimeError):
    """The process could not be started at all; ``report`` (when there is one) says why."""

    def __init__(self, report: SpawnReport | str) -> None:
        if isinstance(report, str):
            super().__init__(report)
            self.report: SpawnReport | None = None
        else:
            super().__init__(report.summary)
            self.report = report


def _gupid() -> str:
    """Passenger's process id string: minutes since the epoch in hex, a dash, 10 random characters."""
    return f"{int(time.time() // 60):x}-{secrets.token_urlsafe(8)[:10]}"


class Handshake:
    """Waits for one process to be ready, or builds the report of why it is not."""

    log = Logger()

    def __init__(self, reactor: Any, app: AppConfig, process: AppProcess, workdir: WorkDir, journey: Journey,
                 protocol: AppProcessProtocol, env: dict[str, str], forked_at: float, app_uid: int) -> None:
        self._reactor = reactor
        self._app = app
        self._process = process
        self._workdir = workdir
        self._journey = journey
        self._protocol = protocol
        self._env = env
        self._forked_at = forked_at
        #: Unix sockets the app reports must belong to it (no traffic hijack by another account).
        self._app_uid = app_uid
        self._probe: PortProbe | None = None
        self._finish: FinishSignal | None = None
        self._timer: Any = None
        self.last_health: HealthResult | None = None
        self.done = False

    def start(self) -> None:
        self._journey.begin(steps.HANDSHAKE)
        self._process.arm(self._app.start_timeout, self._timed_out)
        if self._app.kuria:
            self._finish = FinishSignal(self._reactor, self._workdir.finish_fifo, self._finish_written)
            self._finish.start()
        else:
            self._probe = PortProbe(self._reactor, self._reactor, self._process.port, self._port_open)
            self._probe.start()
            self._later(WRONG_PORT_FIRST_CHECK, self._check_wrong_port)

    def _later(self, seconds: float, action: Any) -> None:
        self._timer = self._reactor.callLater(seconds, action)

    def _stop_watching(self) -> None:
        if self._probe is not None:
            self._probe.stop()
        if self._finish is not None:
            self._finish.stop()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _check_wrong_port(self) -> None:
        """Passenger waits out the whole start timeout for an app on the wrong port (#2563); we say so at once."""
        self._timer = None
        pid = self._process.pid
        if self.done or pid is None:
            return
        if not_exec_yet(pid, os.getpid()):  # still a copy of the server, with the server's listening sockets
            self._later(WRONG_PORT_INTERVAL, self._check_wrong_port)
            return
        message = describe_wrong_listen(self._process.port, listening_ports(pid))
        if message is not None:
            return self._fail("INTERNAL_ERROR", f"Process {pid} listens on the wrong address: {message}.")
        self._later(WRONG_PORT_INTERVAL, self._check_wrong_port)

    # Outcomes.
    def _port_open(self) -> None:
        """A generic app listens on $PORT; it may also have described itself in properties.json."""
        if self.done:
            return
        data = self._workdir.read("response/properties.json", PROPERTIES_CAP)
        if data is not None:
            try:
                self._adopt(parse_properties(data, self._app_uid, require_http=False))
            except PropertiesError as e:
                return self._fail("INTERNAL_ERROR", f"The application wrote an invalid properties.json: {e}")
        self._ready_if_healthy()

    def _finish_written(self, data: bytes) -> None:
        if self.done:
            return
        if data == b"1":
            raw = self._workdir.read("response/properties.json", PROPERTIES_CAP)
            if raw is None:
                return self._fail("INTERNAL_ERROR",
                                  "The application reported success but wrote no response/properties.json")
            try:
                self._adopt(parse_properties(raw, self._app_uid, require_http=True))
            except PropertiesError as e:
                return self._fail("INTERNAL_ERROR", f"The application wrote an invalid properties.json: {e}")
            return self._ready_if_healthy()
        if data == b"0":
            return self._fail("INTERNAL_ERROR",
                              f"The web application (process {self._process.pid}) aborted with an error during startup.",
                              from_app=True)
        self._fail("INTERNAL_ERROR", f"The application wrote {data!r} to response/finish; expected '1' or '0'.")

    def _adopt(self, sockets: list[Any]) -> None:
        http = [s for s in sockets if s.accept_http]
        if http:
            kind, where, port = http[0].endpoint
            if kind == "unix":
                self._process.unix_path = where
            else:
                self._process.host, self._process.port = where, port
            if self._app.concurrency is None:
                self._process.concurrency = process_concurrency(sockets)

    def _ready_if_healthy(self) -> None:
        """With --health-check-path, listening is not enough: the check must pass too."""
        if self._probe is not None:
            self._probe.stop()
        if self._app.health_check_path is None or self._process.unix_path is not None:
            return self._succeed()
        checking = check_http(self._reactor, self._process.host, self._process.port, self._app.health_check_path,
                              self._app.health_check_timeout)
        checking.addCallback(self._health_answered)

    def _health_answered(self, result: HealthResult) -> None:
        if self.done:
            return
        if result.ok:
            return self._succeed()
        self.last_health = result
        self._later(HEALTH_RETRY, self._ready_if_healthy)

    def _succeed(self) -> None:
        self.done = True
        self._stop_watching()
        now = time.time()
        self._journey.read_app_side(self._workdir, self._forked_at)
        for name in (steps.APP_START, steps.LISTEN):
            if self._journey.steps[name].state != steps.PERFORMED:
                self._journey.performed(name, now)
        self._journey.performed(steps.HANDSHAKE, now)
        self._journey.performed(steps.FINISH, now)
        if not self._app.debug_spawn_dir:
            self._workdir.remove()
        self._process.listening()

    def _timed_out(self) -> None:
        if self.done:
            return
        health = self.last_health
        why = (f"its health check {self._app.health_check_path} did not pass ({health.detail})"
               if health is not None else "it was not ready")
        self._fail("TIMEOUT_ERROR", f"A timeout occurred while spawning application process {self._process.pid}: "
                   f"{why} within the start timeout of {self._app.start_timeout:g}s; killed.",
                   timeout=True)

    def exited(self, reason: Failure) -> None:
        """The process ended; if the handshake was still going on, that is the failure."""
        if not self.done:
            self._report("INTERNAL_ERROR",
                         f"The application process {self._process.pid} exited prematurely ({describe_exit(reason)}).",
                         from_app=True)

    def _fail(self, category: str, summary: str, from_app: bool = False, timeout: bool = False) -> None:
        self._report(category, summary, from_app)
        if timeout:
            self._process.start_timed_out()
        else:
            self._process.handshake_failed()

    def _report(self, category: str, summary: str, from_app: bool = False) -> None:
        self.done = True
        self._stop_watching()
        journey = self._journey
        journey.read_app_side(self._workdir, self._forked_at)
        failed = journey.in_progress()
        if failed is not None:
            journey.errored(failed.name)
        app_error = self._workdir.app_error() if from_app else {}
        if app_error.get("summary"):
            summary = f"{summary} {app_error['summary']}"
        if app_error.get("category") in CATEGORIES:
            category = app_error["category"]
        problem, solution = default_texts(category, failed.name if failed else None)
        problem = app_error.get("problem_description.html") or _escape(app_error.get("problem_description.txt")) or problem
        solution = (app_error.get("solution_description.html") or _escape(app_error.get("solution_description.txt"))
                    or solution)
        self._process.failure = SpawnReport(
            app=self._app.name,
            app_root=self._app.root,
            error_id=new_error_id(),
            category=category,
            summary=summary,
            problem_html=problem,
            solution_html=solution,
            advanced=app_error.get("advanced_problem_details", ""),
            journey=tuple(JourneyStep(name, state, seconds) for name, state, seconds in journey.rows()),
            output=tuple(self._protocol.tail)[-REPORT_OUTPUT_LINES:],
            envvars=self._env,
            user_info=self._workdir.read_text("envdump/user_info") or "",
            ulimits=self._workdir.read_text("envdump/ulimits") or "",
            annotations=self._workdir.annotations(),
            pid=self._process.pid,
        )
        if not self._app.debug_spawn_dir:
            self._workdir.remove()


def _escape(text: str | None) -> str:
    import html

    return "" if not text else "<p>" + html.escape(text).replace("\n", "<br>") + "</p>"


class Spawner:
    log = Logger()

    def __init__(self, reactor: Any, ports: PortAllocator | None = None) -> None:
        self._reactor = reactor
        self._ports = ports or PortAllocator()
        #: (app root, uid, gid) whose reach was checked (``_check_reach``): warned about once.
        self._reach_checked: set[tuple[str, int, int]] = set()

    def spawn(self, app: AppConfig, number: int, observer: ProcessObserver,
              ports_in_use: Iterable[int] = ()) -> AppProcess:
        began = time.monotonic()
        journey = Journey()
        journey.begin(steps.PREPARATION)
        try:
            if not os.path.isdir(app.root) or not os.access(app.root, os.R_OK | os.X_OK):
                raise OSError(f"the app root {app.root} does not exist or cannot be entered")
            port = None if app.kuria else self._ports.allocate(set(ports_in_use))
            workdir = WorkDir.create(app.spawn_dir or _default_spawn_dir())
        except (OSError, NoFreePort) as e:
            journey.errored(steps.PREPARATION)
            raise SpawnError(self._early_report(app, journey, str(e) if not isinstance(e, OSError) or not e.strerror
                                                else e.strerror)) from None
        process = AppProcess(
            app=app.name,
            number=number,
            port=port or 0,
            concurrency=app.concurrency,
            clock=self._reactor,
            observer=observer,
            shutdown_timeout=app.shutdown_timeout,
            stop_signal=app.stop_signal,
            started_monotonic=began,
        )
        user = self._user(app)
        if user is not None:
            self._check_reach(app, user)
        env = app_environment(app, port)
        if user is not None:
            env.update(user.environment())
            env.update(app.envvars)  # the user's own values still come last
        env["PASSENGER_SPAWN_WORK_DIR"] = workdir.path
        try:
            workdir.prepare(self._args(app, port), env,
                            user_info_text(user.uid, user.gid) if user else user_info_text())
            if user is not None:
                workdir.chown(user.uid, user.gid)  # only now: nothing is written after it is handed over
        except OSError as e:
            workdir.remove()
            journey.errored(steps.PREPARATION)
            raise SpawnError(self._early_report(app, journey, f"cannot prepare the spawn work directory: {e}")) from None
        journey.performed(steps.PREPARATION)

        handshake: Handshake | None = None

        def ended(reason: Failure) -> None:
            try:
                if handshake is not None:
                    handshake.exited(reason)
            except Exception:  # a report that could not be made must not keep the process from ending
                self.log.failure("Could not report the end of process {pid} of {app}", pid=process.pid, app=app.name)
            process.exited(reason)

        protocol = AppProcessProtocol(app.name, ended)
        process.log_tail = lambda: list(protocol.tail)
        journey.begin(steps.FORK)
        forked_at = time.time()
        try:
            shell = (login_shell(user) if app.load_shell_envvars else None) or "/bin/sh"
            transport = self._reactor.spawnProcess(
                protocol, shell, app_argv(app, steps.shell_prologue(), shell), env=env, path=app.root,
                childFDs={0: "w", 1: "r", 2: "r"},
                uid=user.uid if user else None, gid=user.gid if user else None,
            )
        except OSError as e:
            workdir.remove()
            journey.errored(steps.FORK)
            raise SpawnError(self._early_report(app, journey, f"could not start /bin/sh in {app.root}: {e.strerror}")) from None
        process.attach(transport)
        journey.performed(steps.FORK)
        journey.begin(steps.BEFORE_EXEC, forked_at)
        # Which account it runs as, when the server switches (as root): "Permission denied" from an app
        # run as nobody is otherwise a puzzle to an operator who started the server as root.
        self.log.info("Spawning process {pid} of {app} {where}{account}", pid=process.pid, app=app.name,
                      where="(Kuria protocol)" if app.kuria else f"on port {port}",
                      account=f" as {user.name}" if user is not None else "")
        handshake = Handshake(self._reactor, app, process, workdir, journey, protocol, env, forked_at,
                              user.uid if user is not None else os.getuid())
        handshake.start()
        return process

    def _check_reach(self, app: AppConfig, user: AppUser) -> None:
        """Warn, once per app root and account, when the account cannot get to the app root."""
        key = (app.root, user.uid, user.gid)
        if key in self._reach_checked:
            return
        self._reach_checked.add(key)
        why = unreachable(user, app.root)
        if why is not None:
            self.log.warn("Processes of {app} run as {user}, who cannot reach {root}: {why}. They will fail to "
                          "open files there; chown the app root to the account that should run it, or set "
                          "user (--user)", app=app.name, user=user.name, root=app.root, why=why)

    def _user(self, app: AppConfig) -> AppUser | None:
        try:
            return resolve_app_user(app)
        except ConfigError as e:
            raise SpawnError(f"cannot choose the account to run {app.name} as: {e}") from None

    def _args(self, app: AppConfig, port: int | None) -> dict[str, Any]:
        """args.json, as Passenger's SpawningKit writes it (secrets included: the directory is private)."""
        args: dict[str, Any] = {
            "passenger_version": __version__,
            "integration_mode": "standalone",
            "gupid": _gupid(),
            "UNIX_PATH_MAX": 108,
            "app_group_name": app.name,
            "app_root": app.root,
            "app_env": app.environment,
            "app_type": "",
            "generic_app": not app.kuria,
            "starts_using_wrapper": False,
            "spawn_method": "direct",
            "start_command": app.start_command,
            "environment_variables": dict(app.envvars),
            "log_level": 3,
            "user": _user_name(os.getuid()),
        }
        if port is not None:
            args["expected_start_port"] = port
        return args

    def _early_report(self, app: AppConfig, journey: Journey, why: str) -> SpawnReport:
        failed = journey.in_progress()
        category = "FILE_SYSTEM_ERROR" if "root" in why or "directory" in why else "OPERATING_SYSTEM_ERROR"
        problem, solution = default_texts(category, failed.name if failed else steps.PREPARATION)
        return SpawnReport(
            app=app.name, app_root=app.root, error_id=new_error_id(), category=category,
            summary=f"Could not start a process of {app.name}: {why}",
            problem_html=problem, solution_html=solution,
            journey=tuple(JourneyStep(n, s, d) for n, s, d in journey.rows()),
            envvars=app_environment(app, None), user_info=user_info_text(),
        )


def _default_spawn_dir() -> str:
    return os.environ.get("TMPDIR") or "/tmp"


def _user_name(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)

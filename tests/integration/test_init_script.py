"""conf/init.d/passenger and conf/logrotate.d/passenger, run for real as root.

1. The init script drives ``twistd`` with a pidfile: status 3 → start → status
   0 → served → reload (SIGHUP; the log shows it) → restart (a new server) →
   stop → status 3; start twice; a stale pidfile (status 1, and start still
   works); a stop that outlasts STOP_TIMEOUT reports failure; USER/GROUP run
   the server as nobody, and stop still removes its pidfile.
2. The real ``logrotate -f`` on a copy of the shipped config, its paths pointed
   at the test's files: the logs are moved to ``*.log.1``, and the server's next
   lines go to fresh files (it reopened them on SIGUSR1), as root and as nobody.

Settings reach the script through a defaults file (PASSENGER_DEFAULTS, in
place of /etc/default/passenger).  Waiting polls with a deadline.
"""

from __future__ import annotations

import http.client
import os
import pwd
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.config_files import q, write_toml
from tests.integration.conftest import (
    APP_PYTHON,
    APPS,
    RUNNING_AS_ROOT,
    TWISTD,
    RawRequest,
    free_port,
    kill_pids,
    pid_alive,
    world_dir,
)
from tests.polling import wait_for

pytestmark = pytest.mark.skipif(not RUNNING_AS_ROOT, reason="the init script and logrotate run as root")

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "conf" / "init.d" / "passenger"
LOGROTATE_CONF = ROOT / "conf" / "logrotate.d" / "passenger"
PASSENGER_STATUS = str(Path(sys.executable).parent / "passenger-status")
#: LSB status codes.
RUNNING, DEAD_WITH_PIDFILE, NOT_RUNNING, UNKNOWN = 0, 1, 3, 4


def fetch(port: int, path: str = "/pid") -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path, headers={"Connection": "close"})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def served_by(port: int) -> int:
    status, body = fetch(port)
    assert status == 200, (status, body)
    return int(body)


class Service:
    """An installation of the init script: its defaults file, config, pidfile and logs, all in a test directory."""

    def __init__(self, user: str = "", group: str = "", stop_timeout: int = 60) -> None:
        # The log directory must be reachable by the server once it runs as USER.
        self.home = world_dir("service", 0o755)
        self.port = free_port()
        self.pidfile = self.home / "run" / "passenger.pid"
        self.logdir = self.home / "log"
        self.logfile = self.logdir / "passenger.log"
        self.access_log = self.logdir / "access.log"
        self.registry = world_dir("registry", 0o1777)
        self.tmpdir = world_dir("tmp", 0o1777)
        self.config = self.home / "passenger.toml"
        self.write_config()
        self.defaults = self.home / "defaults"
        self.defaults.write_text(
            f"TWISTD={TWISTD}\nCONFIG={self.config}\nPIDFILE={self.pidfile}\nLOGFILE={self.logfile}\n"
            f"USER={user}\nGROUP={group}\nSTOP_TIMEOUT={stop_timeout}\n")
        self.seen_pids: set[int] = set()

    def write_config(self, envvars: str = "{}") -> None:
        write_toml(self.config, f"""\
            listen = [{q(f"tcp:{self.port}:interface=127.0.0.1")}]
            instance_registry_dir = {q(self.registry)}
            access_log = {q(self.access_log)}

            [[app]]
            name = "echo"
            root = {q(APPS)}
            start_command = {q(f"{APP_PYTHON} echo_app.py")}
            envvars = {envvars}
            """)

    def run(self, action: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        # USER in the environment must not make the server switch users: only the defaults file says.
        env = {**os.environ, "PASSENGER_DEFAULTS": str(self.defaults), "TMPDIR": str(self.tmpdir), "USER": "daemon"}
        result = subprocess.run([str(SCRIPT), action], capture_output=True, text=True, timeout=timeout, env=env)
        pid = self.pid()
        if pid and action in ("start", "restart") and result.returncode == 0:
            self.seen_pids.add(pid)  # the servers it started, for the cleanup (not whatever a pidfile names)
        return result

    def pid(self) -> int | None:
        try:
            text = self.pidfile.read_text().strip()
        except OSError:
            return None
        return int(text) if text.isdigit() else None

    def log(self, path: Path | None = None) -> str:
        try:
            return (path or self.logfile).read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_log(self, pattern: str, path: Path | None = None, count: int = 1, timeout: float = 20.0) -> None:
        wait_for(lambda: len(re.findall(pattern, self.log(path))) >= count, timeout,
                 what=f"{pattern!r} x{count} in {path or self.logfile}:\n{self.log(path)}")

    def wait_ready(self, count: int = 1) -> None:
        self.wait_log(r"Process \d+ of echo is ready", count=count)

    def app_pids(self) -> list[int]:
        logs = "".join(self.log(p) for p in sorted(self.logdir.glob("passenger.log*")) if p.suffix != ".gz")
        return [int(pid) for pid in re.findall(r"Spawning process (\d+)", logs)]

    def kill(self) -> None:
        kill_pids([*self.seen_pids, *self.app_pids()])


@pytest.fixture
def services() -> Iterator[list[Service]]:
    made: list[Service] = []
    yield made
    for service in made:
        if service.pid() and pid_alive(service.pid() or 0):
            service.run("stop", timeout=60)
        service.kill()


@pytest.fixture
def service(services: list[Service]) -> Service:
    made = Service()
    services.append(made)
    return made


def ok(result: subprocess.CompletedProcess[str], code: int = 0) -> str:
    output = result.stdout + result.stderr
    assert result.returncode == code, f"exit {result.returncode}, wanted {code}:\n{output}"
    return output


def test_the_script_is_an_executable_lsb_init_script() -> None:
    assert os.access(SCRIPT, os.X_OK), f"{SCRIPT} is not executable"
    text = SCRIPT.read_text()
    assert text.startswith("#!/bin/bash\n") or text.startswith("#!/bin/sh\n")
    header = text[text.index("### BEGIN INIT INFO"):text.index("### END INIT INFO")]
    for field in ("Provides:", "Required-Start:", "Required-Stop:", "Default-Start:", "Default-Stop:",
                  "Short-Description:"):
        assert f"# {field}" in header, field
    assert "start-stop-daemon" not in text.replace("# ", ""), "the script must run without start-stop-daemon"
    assert "init-functions" not in text
    syntax = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr


def test_status_start_reload_restart_stop(service: Service) -> None:
    assert "not running" in ok(service.run("status"), NOT_RUNNING)

    ok(service.run("start"))
    pid = service.pid()
    assert pid is not None and pid_alive(pid)
    assert f"running (pid {pid})" in ok(service.run("status"), RUNNING)
    service.wait_ready()
    first_app = served_by(service.port)
    assert first_app in service.app_pids()
    # Found by the tools where the config puts it.
    status = subprocess.run([PASSENGER_STATUS, "--instance-registry-dir", str(service.registry)],
                            capture_output=True, text=True, timeout=30)
    assert status.returncode == 0 and f"PID: {first_app} " in status.stdout, status.stdout + status.stderr

    # reload: SIGHUP reads the file again; a changed app is restarted, and the log says so.
    service.write_config(envvars='{ GREETING = "reloaded" }')
    ok(service.run("reload"))
    service.wait_log(r"Reload: the settings of echo changed; restarting it")
    service.wait_ready(count=2)
    assert service.pid() == pid, "reload must not restart the server"
    ok(service.run("force-reload"))
    wait_for(lambda: served_by(service.port) != first_app, 20, what="the restarted app to serve")

    ok(service.run("restart"))
    new_pid = service.pid()
    assert new_pid is not None and new_pid != pid and pid_alive(new_pid)
    assert not pid_alive(pid), "the old server still runs after restart"
    wait_for(lambda: fetch(service.port)[0] == 200, 20, what="the restarted server to serve")

    apps = service.app_pids()
    assert "stopped" in ok(service.run("stop"))
    assert not pid_alive(new_pid)
    assert not service.pidfile.exists()
    assert not [p for p in apps if pid_alive(p)], "app processes left after stop"
    assert list(service.registry.glob("passenger.*")) == [], "the instance directory was left"
    assert "not running" in ok(service.run("status"), NOT_RUNNING)
    assert "not running" in ok(service.run("stop"))  # stopping a stopped service succeeds (LSB)


def test_start_twice_says_already_running(service: Service) -> None:
    ok(service.run("start"))
    pid = service.pid()
    assert "already running" in ok(service.run("start"))
    assert service.pid() == pid
    service.wait_ready()
    served_by(service.port)
    ok(service.run("stop"))


def test_a_stale_pidfile_is_status_1_and_start_still_works(service: Service) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    service.pidfile.parent.mkdir(parents=True, exist_ok=True)
    service.pidfile.write_text(f"{gone.pid}\n")
    assert "dead" in ok(service.run("status"), DEAD_WITH_PIDFILE)
    ok(service.run("start"))
    pid = service.pid()
    assert pid is not None and pid != gone.pid and pid_alive(pid)
    service.wait_ready()
    served_by(service.port)
    ok(service.run("stop"))
    assert "not running" in ok(service.run("status"), NOT_RUNNING)


def test_a_pidfile_naming_another_process_is_not_the_server(service: Service) -> None:
    """A pid reused by an unrelated process: status 1, and start starts the server rather than believing it runs."""
    service.pidfile.parent.mkdir(parents=True, exist_ok=True)
    service.pidfile.write_text(f"{os.getpid()}\n")
    ok(service.run("status"), DEAD_WITH_PIDFILE)
    ok(service.run("start"))
    assert service.pid() != os.getpid()
    service.wait_ready()
    served_by(service.port)
    ok(service.run("stop"))


def test_an_unreadable_pidfile_is_status_unknown(service: Service) -> None:
    service.pidfile.mkdir(parents=True)  # a directory where the pidfile should be
    ok(service.run("status"), UNKNOWN)


def test_reload_and_unknown_actions_when_not_running(service: Service) -> None:
    for action in ("reload", "force-reload", "reopen-logs"):
        assert "not running" in ok(service.run(action), 7)  # LSB: program is not running
    usage = ok(service.run("frobnicate"), 2)
    assert "Usage:" in usage


def test_a_stop_that_outlasts_the_timeout_reports_failure(services: list[Service]) -> None:
    service = Service(stop_timeout=1)
    services.append(service)
    ok(service.run("start"))
    pid = service.pid()
    assert pid is not None
    service.wait_ready()
    request = RawRequest(service.port, "/sleep?ms=4000")  # in flight: the server drains it before exiting
    try:
        wait_for(request.server_has_read, 10, what="the server to read the request")
        stopping = service.run("stop")
        assert stopping.returncode == 1, stopping.stdout + stopping.stderr
        assert "still running after 1s" in stopping.stdout, stopping.stdout
        assert pid_alive(pid), "the script must not kill the server itself"
        assert request.response(timeout=20).status == 200  # the drain finished the request
    finally:
        request.close()
    wait_for(lambda: not pid_alive(pid), 30, what="the server to finish its drain and exit")
    assert "not running" in ok(service.run("status"), NOT_RUNNING)


def test_user_and_group_run_the_server_as_that_account(services: list[Service]) -> None:
    service = Service(user="nobody", group="nogroup")
    services.append(service)
    ok(service.run("start"))
    pid = service.pid()
    assert pid is not None
    service.wait_ready()
    nobody = pwd.getpwnam("nobody")
    with open(f"/proc/{pid}/status") as f:
        status = dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
    assert status["Uid"].split() == [str(nobody.pw_uid)] * 4, status["Uid"]
    assert status["Gid"].split() == [str(nobody.pw_gid)] * 4, status["Gid"]
    served_by(service.port)
    assert f"running (pid {pid})" in ok(service.run("status"), RUNNING)
    # twistd, now nobody, cannot remove its root-made pidfile; stop does.
    ok(service.run("stop"))
    assert not pid_alive(pid)
    assert not service.pidfile.exists()
    assert "not running" in ok(service.run("status"), NOT_RUNNING)


def test_environment_user_does_not_switch_the_server(service: Service) -> None:
    """USER is in every shell's environment: the script takes it only from its defaults file."""
    ok(service.run("start"))  # run() puts USER=daemon in the environment
    pid = service.pid()
    assert pid is not None
    with open(f"/proc/{pid}/status") as f:
        uid_line = next(line for line in f if line.startswith("Uid:"))
    assert uid_line.split()[1:] == ["0"] * 4, uid_line
    ok(service.run("stop"))


def test_reload_of_an_unchanged_config_shows_in_the_log(service: Service) -> None:
    """An operator checks the log after `reload`: it must say the file was read, even when nothing changed."""
    ok(service.run("start"))
    service.wait_ready()
    before = service.log()
    ok(service.run("reload"))
    served_by(service.port)  # the signal has been handled by the time a request is answered after it
    wait_for(lambda: re.search(r"(?i)reload", service.log()[len(before):]) is not None, 5,
             what=f"a line about the reload in the log:\n{service.log()[len(before):]}")
    ok(service.run("stop"))


# logrotate.

def logrotate() -> str:
    found = shutil.which("logrotate") or next((p for p in ("/usr/sbin/logrotate", "/sbin/logrotate")
                                               if os.access(p, os.X_OK)), None)
    if found is None:
        reason = "logrotate is not installed (apt-get install logrotate)"
        if os.environ.get("PASSENGER_REQUIRE_LOGROTATE"):  # set by .ci/run, which installs it
            pytest.fail(f"{reason}, and PASSENGER_REQUIRE_LOGROTATE is set")
        pytest.skip(reason)
    return found


def test_logrotate_config_says_what_operators_expect() -> None:
    text = LOGROTATE_CONF.read_text()
    assert "/var/log/passenger/*.log {" in text
    for directive in ("daily", "compress", "delaycompress", "missingok", "notifempty", "postrotate", "endscript"):
        assert re.search(rf"^\s*{directive}\b", text, re.M), directive
    assert "USR1" in text and "/run/passenger.pid" in text
    assert "copytruncate" not in text


@pytest.mark.parametrize("user", ["", "nobody"])
def test_logrotate_moves_the_logs_and_the_server_reopens_them(services: list[Service], tmp_path: Path,
                                                              user: str) -> None:
    service = Service(user=user, group="nogroup" if user else "")
    services.append(service)
    if user:
        # As docs/operations.md says: with USER, the access log is made for it once; logrotate's `create` keeps that.
        service.logdir.mkdir(parents=True)
        service.access_log.touch()
        account = pwd.getpwnam(user)
        os.chown(service.access_log, account.pw_uid, account.pw_gid)
    ok(service.run("start"))
    service.wait_ready()
    served_by(service.port)
    service.wait_log(r'"GET /pid HTTP/1.1" 200', path=service.access_log, timeout=10)  # flushed each second

    config = tmp_path / "logrotate.conf"
    text = LOGROTATE_CONF.read_text()
    text = text.replace("/var/log/passenger/", f"{service.logdir}/").replace("/run/passenger.pid", str(service.pidfile))
    config.write_text(text)
    config.chmod(0o644)
    rotation = subprocess.run([logrotate(), "-f", "-s", str(tmp_path / "state"), str(config)],
                              capture_output=True, text=True, timeout=60)
    assert rotation.returncode == 0, rotation.stdout + rotation.stderr

    rotated_log = service.logdir / "passenger.log.1"
    rotated_access = service.logdir / "access.log.1"
    assert "Process" in service.log(rotated_log), "the old log was not moved to passenger.log.1"
    assert "GET /pid" in service.log(rotated_access), "the old access log was not moved to access.log.1"
    assert not (service.logdir / "passenger.log.1.gz").exists(), "delaycompress: the newest rotation stays plain"

    # The server reopened both files at their paths (logrotate sent USR1) and writes its next lines there.
    service.wait_log(r"Reopened the log file", timeout=10)
    served = served_by(service.port)
    wait_for(lambda: "GET /pid" in service.log(service.access_log), 10,
             what=f"the next request in the new access log:\n{service.log(service.access_log)}")
    assert "Reopened the log file" not in service.log(rotated_log), "the log file reopen was logged to the old file"
    assert f"Process {served} " not in service.log(), "the new log has lines from before the rotation"
    size = len(service.log(rotated_log))
    ok(service.run("stop"))
    assert "passenger stopped" in service.log()
    assert len(service.log(rotated_log)) == size, "the server still wrote to the rotated log"

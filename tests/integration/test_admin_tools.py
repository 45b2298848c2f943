"""passenger-status and passenger-config against real servers, as a user runs them.

1. passenger-status: the header and the pool text parsed back and checked
   against pool.json; --show=json, xml and requests (a slow request seen in
   flight); --verbose, --no-header; finding the server (the only one, $TMPDIR,
   --instance by name or pid, several servers, none).
2. passenger-config on a server of two apps: restart-app by path prefix, ``.``,
   ``/`` and --name, blocking and rolling; apps that do not match;
   detach-process; list-instances (and stale instance directories);
   reopen-logs; api-call.
3. The client against a fake admin API: which account it authenticates as,
   and one-line errors for whatever the server answers.

The tools run as real subprocesses (the console scripts next to this Python)
and, where many calls are made (polling), in-process through ``main()``.
Synchronisation never sleeps: tests poll the API with a deadline.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import socket
import socketserver
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest

from passenger import __version__
from passenger.admin import instance
from passenger.tools import config_command, status
from tests.integration.conftest import (
    APP_PYTHON,
    APPS,
    ECHO_GROUP,
    RawRequest,
    Server,
    echo_app_args,
    in_thread,
    pid_alive,
    start_server,
    wait_for,
    world_dir,
)

Serve = Callable[..., Server]
BIN = Path(sys.executable).parent
APP = ECHO_GROUP
#: Seconds a tool may take (each takes well under one).
TOOL_TIMEOUT = 20


# --------------------------------------------------------------------------------------
# Helpers.
# --------------------------------------------------------------------------------------

def tool(name: str, *args: str, cwd: Path | None = None,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the installed console script ``name`` (passenger-status, passenger-config)."""
    return subprocess.run([str(BIN / name), *args], capture_output=True, text=True, timeout=TOOL_TIMEOUT,
                          cwd=cwd, env=env)


@dataclass
class Ran:
    code: int
    out: str
    err: str


def call(capsys: pytest.CaptureFixture[str], main: Callable[[list[str]], int], *args: str) -> Ran:
    """Run a tool's ``main`` in this process."""
    capsys.readouterr()
    code = main(list(args))
    captured = capsys.readouterr()
    return Ran(code, captured.out, captured.err)


def one_line(text: str) -> str:
    lines = text.strip("\n").splitlines()
    assert len(lines) == 1, text
    return lines[0]


def api(registry: Path, path: str, name: str | None = None) -> Any:
    """GET ``path`` from the admin API, with a raw socket (independently of the tools under test)."""
    target = instance.find(registry, name)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(target.socket_path))
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n".encode())
        data = b""
        while piece := s.recv(65536):
            data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200") or head.startswith(b"HTTP/1.1 200"), data[:300]
    return json.loads(body)


def pids_of(pool: dict[str, Any], app: str | None = None) -> list[int]:
    return sorted(p["pid"] for g in pool["groups"] if app in (None, g["name"]) for p in g["processes"])


def settled(registry: Path, name: str | None = None) -> dict[str, list[int]] | None:
    """The pids of each app once every process is alive and serving and nothing restarts; else None."""
    pool = api(registry, "/pool.json", name)
    result = {}
    for group in pool["groups"]:
        processes = group["processes"]
        if (group["restarting"] or group["spawning"] or not processes
                or any(p["life_status"] != "alive" or p["enabled"] != "enabled" for p in processes)):
            return None
        result[group["name"]] = sorted(p["pid"] for p in processes)
    return result


def instance_dir(registry: Path) -> instance.Instance:
    return instance.find(registry)


def get(server: Server, path: str) -> bytes:
    with urllib.request.urlopen(server.url + path, timeout=10) as reply:
        body: bytes = reply.read()
        return body


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


PID_LINE = re.compile(r"^  \* PID: (\d+)\s+Sessions: (\d+)\s+Processed: (\d+)\s+Uptime: (\S.*)$", re.M)
CPU_LINE = re.compile(r"^    CPU: (\d+%|\?)\s+Memory  : (\d+M|\?)\s+Last used: (.+ ago)$", re.M)


def general(text: str) -> dict[str, int]:
    """The numbers of the General information section."""
    fields = {}
    for key, label in (("max", "Max pool size"), ("groups", "App groups"), ("processes", "Processes"),
                       ("queue", "Requests in top-level queue")):
        found = re.search(rf"^{re.escape(label)}\s*: (\d+)$", text, re.M)
        assert found, (label, text)
        fields[key] = int(found.group(1))
    return fields


def processed(text: str) -> dict[int, int]:
    return {int(m.group(1)): int(m.group(3)) for m in PID_LINE.finditer(text)}


# --------------------------------------------------------------------------------------
# 1. passenger-status, on a server of one app with two processes.
# --------------------------------------------------------------------------------------

@dataclass
class Pool:
    server: Server
    registry: Path

    def args(self, *more: str) -> list[str]:
        return ["--instance-registry-dir", str(self.registry), *more]


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    registry = world_dir("registry", 0o755)
    server = start_server(tmp_path_factory.mktemp("tools"), echo_app_args(
        "--min-instances", "2", "--instance-registry-dir", str(registry)), ready=2)
    try:
        wait_for(lambda: settled(registry), 10, what="both processes alive")
        yield Pool(server, registry)
    finally:
        try:
            server.stop(timeout=15)
        finally:
            server.kill()


def test_status_prints_the_header_and_the_pool_text_that_pool_json_agrees_with(pool: Pool) -> None:
    result = tool("passenger-status", *pool.args())
    assert result.returncode == 0, result
    assert result.stderr == ""
    target = instance_dir(pool.registry)
    lines = result.stdout.splitlines()
    assert lines[0] == f"Version : {__version__}"
    assert re.fullmatch(r"Date    : \d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4}", lines[1]), lines[1]
    assert lines[2] == f"Instance: {target.name} (passenger/{__version__})"
    assert lines[3] == ""
    assert lines[4] == "----------- General information -----------"
    state = api(pool.registry, "/pool.json")
    numbers = general(result.stdout)
    assert numbers == {"max": state["max"], "groups": 1, "processes": 2, "queue": 0}
    assert f"{APP}:\n  App root: {APPS}\n  Requests in queue: 0\n" in result.stdout
    pid_lines = PID_LINE.findall(result.stdout)
    assert sorted(int(pid) for pid, *_ in pid_lines) == pids_of(state)
    assert len(CPU_LINE.findall(result.stdout)) == 2, result.stdout
    assert "URL" not in result.stdout  # only with --verbose


def test_status_processed_grows_with_the_requests_served(pool: Pool, capsys: pytest.CaptureFixture[str]) -> None:
    before = processed(call(capsys, status.main, *pool.args("--no-header")).out)
    assert len(before) == 2
    served = {int(get(pool.server, "/pid")) for _ in range(6)}
    assert served <= set(before)

    def grown() -> dict[int, int] | None:
        now = processed(call(capsys, status.main, *pool.args("--no-header")).out)
        return now if sum(now.values()) >= sum(before.values()) + 6 else None

    after = wait_for(grown, 10, what="Processed to count the 6 requests")
    assert set(after) == set(before)
    assert sum(after.values()) == sum(before.values()) + 6
    for pid in served:
        assert after[pid] > before[pid]


def test_status_verbose_shows_each_process_address_and_no_header_leaves_the_header_out(pool: Pool) -> None:
    result = tool("passenger-status", "--verbose", "--no-header", *pool.args())
    assert result.returncode == 0, result
    assert result.stdout.startswith("----------- General information -----------\n")
    state = api(pool.registry, "/pool.json")
    addresses = re.findall(r"^    URL     : (\S+)$", result.stdout, re.M)
    assert sorted(addresses) == sorted(p["address"] for g in state["groups"] for p in g["processes"])
    assert len(re.findall(r"^    Generation: \d+ +Concurrency: (\d+|unknown|unlimited)$", result.stdout, re.M)) == 2


def test_status_json_is_the_pool_state(pool: Pool) -> None:
    result = tool("passenger-status", "--show=json", *pool.args())
    assert result.returncode == 0, result
    shown = json.loads(result.stdout)  # nothing but JSON: no header
    assert shown["groups"][0]["name"] == APP
    assert shown["groups"][0]["app_root"] == str(APPS)
    assert pids_of(shown) == pids_of(api(pool.registry, "/pool.json"))


def test_status_xml_is_passengers_pool_xml(pool: Pool) -> None:
    result = tool("passenger-status", "--show=xml", *pool.args())
    assert result.returncode == 0, result
    root = ElementTree.fromstring(result.stdout.encode())
    assert root.tag == "info"
    assert root.findtext("passenger_version") == __version__
    assert [e.text for e in root.iterfind("supergroups/supergroup/name")] == [APP]
    pids = sorted(int(e.text or "") for e in root.iterfind("supergroups/supergroup/group/processes/process/pid"))
    assert pids == pids_of(api(pool.registry, "/pool.json"))


def test_status_requests_shows_a_slow_request_in_flight(pool: Pool, capsys: pytest.CaptureFixture[str]) -> None:
    path = "/sleep?ms=1500"
    request = RawRequest(pool.server.port, path)
    response = in_thread(request.response)

    def in_flight() -> dict[str, Any] | None:
        ran = call(capsys, status.main, "--show=requests", *pool.args())
        assert ran.code == 0, ran
        shown = json.loads(ran.out)
        return next((r for r in shown["requests"] if r["path"] == path and r["state"] == "waiting for app"), None)

    seen = wait_for(in_flight, 5, what=f"{path} in --show=requests")
    assert seen["method"] == "GET"
    assert seen["app"] == APP
    assert seen["pid"] in pids_of(api(pool.registry, "/pool.json"))
    # The installed script says the same while the request still runs.
    result = tool("passenger-status", "--show=requests", *pool.args())
    assert result.returncode == 0, result
    assert any(r["path"] == path for r in json.loads(result.stdout)["requests"]), result.stdout
    assert response(10).status == 200


def test_status_finds_the_server_in_tmpdir_by_default(pool: Pool) -> None:
    result = tool("passenger-status", "--show=json", env={**os.environ, "TMPDIR": str(pool.registry)})
    assert result.returncode == 0, result
    assert pids_of(json.loads(result.stdout)) == pids_of(api(pool.registry, "/pool.json"))


def test_status_with_no_server_running_exits_2_with_a_clear_message(capsys: pytest.CaptureFixture[str]) -> None:
    empty = world_dir("empty-registry", 0o755)
    result = tool("passenger-status", "--instance-registry-dir", str(empty))
    assert result.returncode == 2, result
    assert result.stdout == ""
    line = one_line(result.stderr)
    assert line.startswith(f"passenger-status: No passenger server is running (no instance directory in {empty})")
    assert "--instance-registry-dir" in line
    for command in (["restart-app", "/"], ["detach-process", "123"], ["reopen-logs"], ["api-call", "GET", "/"]):
        ran = call(capsys, config_command.main, *command, "--instance-registry-dir", str(empty))
        assert ran.code == 2, (command, ran)
        assert "No passenger server is running" in one_line(ran.err), ran
    ignored = call(capsys, config_command.main, "restart-app", "/", "--ignore-passenger-not-running",
                   "--instance-registry-dir", str(empty))
    assert ignored.code == 0, ignored


def test_status_with_an_unknown_instance_exits_2(pool: Pool, capsys: pytest.CaptureFixture[str]) -> None:
    ran = call(capsys, status.main, "--instance", "passenger.nosuch00", *pool.args())
    assert ran.code == 2, ran
    assert "There is no passenger instance named 'passenger.nosuch00'" in ran.err
    assert instance_dir(pool.registry).name in ran.err  # the ones that do run


def test_status_when_the_server_does_not_answer_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    registry = world_dir("mute-registry", 0o755)
    made = instance.create(registry, {"listen": []})  # alive (our pid) but nothing listens on its socket
    try:
        ran = call(capsys, status.main, "--instance-registry-dir", str(registry))
        assert ran.code == 2, ran
        line = one_line(ran.err)
        assert f"the passenger server {made.name} (pid {os.getpid()}) is not answering on {made.socket_path}" in line
    finally:
        instance.remove(made)


def test_status_says_when_the_admin_socket_path_is_too_long(capsys: pytest.CaptureFixture[str]) -> None:
    registry = world_dir("long-registry", 0o755) / ("x" * 80)  # the server would only warn and not listen there
    made = instance.create(registry, {"listen": []})
    try:
        ran = call(capsys, status.main, "--instance-registry-dir", str(registry))
        assert ran.code == 1, ran
        assert "is too long for a Unix socket" in one_line(ran.err)
    finally:
        instance.remove(made)


def test_two_servers_need_instance_which_picks_one(pool: Pool, serve: Serve,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    first = instance_dir(pool.registry)
    other = serve(echo_app_args("--instance-registry-dir", str(pool.registry)))
    assert other.proc is not None
    other_pid = other.proc.pid
    second = wait_for(lambda: next((i for i in instance.running(pool.registry) if i.pid == other_pid), None),
                      10, what="the second server's instance directory")
    try:
        result = tool("passenger-status", *pool.args())
        assert result.returncode == 1, result
        assert result.stdout == ""
        assert "Several passenger servers are running; choose one with --instance NAME" in result.stderr
        assert first.name in result.stderr and second.name in result.stderr

        result = tool("passenger-status", "--instance", second.name, *pool.args())
        assert result.returncode == 0, result
        assert f"Instance: {second.name} (passenger/{__version__})" in result.stdout
        assert processed(result.stdout).keys() == set(pids_of(api(pool.registry, "/pool.json", second.name)))

        # By the server's pid, and as Passenger's positional argument.
        by_pid = call(capsys, status.main, "--show=json", "--instance", str(first.pid), *pool.args())
        assert by_pid.code == 0, by_pid
        assert pids_of(json.loads(by_pid.out)) == pids_of(api(pool.registry, "/pool.json", first.name))
        positional = call(capsys, status.main, first.name, *pool.args())
        assert positional.code == 0 and f"Instance: {first.name} " in positional.out, positional

        listed = call(capsys, config_command.main, "list-instances", *pool.args())
        assert listed.code == 0, listed
        assert first.name in listed.out and second.name in listed.out
        assert f"tcp:{other.port}:interface=127.0.0.1" in listed.out
    finally:
        assert other.stop(timeout=15) == 0
    assert [i.name for i in instance.running(pool.registry)] == [first.name]  # removed at its clean stop


def test_list_instances_shows_the_server(pool: Pool) -> None:
    result = tool("passenger-config", "list-instances", *pool.args())
    assert result.returncode == 0, result
    target = instance_dir(pool.registry)
    assert pool.server.proc is not None and target.pid == pool.server.proc.pid
    header, rule, row = result.stdout.splitlines()
    assert header.split() == ["Name", "PID", "Listening", "on", "Created"]
    assert set(rule) == {"-"}
    assert row.split()[:3] == [target.name, str(target.pid), f"tcp:{pool.server.port}:interface=127.0.0.1"]
    as_json = tool("passenger-config", "list-instances", "--json", *pool.args())
    assert as_json.returncode == 0, as_json
    [listed] = json.loads(as_json.stdout)
    assert (listed["name"], listed["pid"], listed["path"]) == (target.name, target.pid, str(target.path))


def test_list_instances_removes_a_stale_instance_directory(capsys: pytest.CaptureFixture[str]) -> None:
    registry = world_dir("stale-registry", 0o755)
    live = instance.create(registry, {"listen": ["tcp:1:interface=127.0.0.1"]})  # our pid: alive
    stale = instance.create(registry, {"listen": ["tcp:2:interface=127.0.0.1"]})
    properties = json.loads((stale.path / instance.PROPERTIES).read_text())
    properties["pid"] = dead_pid()
    (stale.path / instance.PROPERTIES).write_text(json.dumps(properties))
    ran = call(capsys, config_command.main, "list-instances", "--instance-registry-dir", str(registry))
    assert ran.code == 0, ran
    assert not stale.path.exists()
    assert one_line(ran.err) == f"Removed the stale instance directory {stale.path} (its server is gone)."
    assert live.name in ran.out and stale.name not in ran.out
    instance.remove(live)
    ran = call(capsys, config_command.main, "list-instances", "--instance-registry-dir", str(registry))
    assert (ran.code, ran.out) == (0, f"No passenger server is running (no instance directory in {registry}).\n")


def test_reopen_logs(pool: Pool) -> None:
    result = tool("passenger-config", "reopen-logs", *pool.args())
    assert result.returncode == 0, result
    target = instance_dir(pool.registry)
    assert result.stdout == f"Reopened the log files of {target.name} (pid {target.pid}).\n"
    pool.server.wait_log(r"Reopened the log file ")


def test_api_call_get_prints_the_answer_and_an_error_status_exits_1(pool: Pool) -> None:
    result = tool("passenger-config", "api-call", "GET", "/pool.json", *pool.args())
    assert result.returncode == 0, result
    assert pids_of(json.loads(result.stdout)) == pids_of(api(pool.registry, "/pool.json"))
    result = tool("passenger-config", "api-call", "get", "version.json", *pool.args())
    assert result.returncode == 0, result
    assert json.loads(result.stdout)["program_version"] == __version__
    missing = tool("passenger-config", "api-call", "GET", "/nosuch.json", *pool.args())
    assert missing.returncode == 1, missing
    assert json.loads(missing.stdout) == {"error": "no such endpoint: /nosuch.json"}
    assert one_line(missing.stderr) == ("passenger-config: no such endpoint: /nosuch.json "
                                        "[GET /nosuch.json: 404 Not Found]")
    bad = tool("passenger-config", "api-call", "POST", "/pool/detach_process.json", "-d", "{nope", *pool.args())
    assert bad.returncode == 1, bad
    assert "not valid JSON" in one_line(bad.stderr)


def test_usage_errors_exit_1_and_every_command_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    bad = call(capsys, status.main, "--show=bogus")
    assert bad.code == 1 and "invalid choice: 'bogus'" in bad.err, bad
    nothing = call(capsys, config_command.main)
    assert nothing.code == 1 and "restart-app" in nothing.err, nothing
    unknown = call(capsys, config_command.main, "frobnicate")
    assert unknown.code == 1 and "invalid choice" in unknown.err, unknown
    not_a_pid = call(capsys, config_command.main, "detach-process", "abc")
    assert not_a_pid.code == 1 and "'abc' is not a process id" in not_a_pid.err, not_a_pid
    both = call(capsys, config_command.main, "restart-app", "/", "--name", "x", "--instance-registry-dir", "/")
    assert both.code == 1 and "not both" in both.err, both
    helped = call(capsys, status.main, "--help")
    assert helped.code == 0 and "--show" in helped.out and "--instance-registry-dir" in helped.out, helped
    for command in ("restart-app", "detach-process", "list-instances", "reopen-logs", "api-call"):
        helped = call(capsys, config_command.main, command, "--help")
        assert helped.code == 0, (command, helped)
        assert "--instance NAME" in helped.out and "--instance-registry-dir DIR" in helped.out, helped.out
    assert "--rolling-restart" in call(capsys, config_command.main, "restart-app", "--help").out
    result = tool("passenger-config", "--version")
    assert (result.returncode, result.stdout) == (0, f"passenger-config {__version__}\n")


def test_the_tools_do_not_load_twisted() -> None:
    code = ("import sys, passenger.tools.status, passenger.tools.config_command; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'twisted'))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=TOOL_TIMEOUT)
    assert (result.returncode, result.stdout) == (0, "[]\n"), result


# --------------------------------------------------------------------------------------
# 2. passenger-config on a server of two apps (alpha and beta, each in a root of its own).
# --------------------------------------------------------------------------------------

@dataclass
class Apps:
    server: Server
    registry: Path
    roots: dict[str, Path]

    def args(self, *more: str) -> list[str]:
        return [*more, "--instance-registry-dir", str(self.registry)]

    def settled(self) -> dict[str, list[int]]:
        return wait_for(lambda: settled(self.registry), 15, what="every process alive and serving")


def app_root(name: str) -> Path:
    root = world_dir(f"{name}-root", 0o755)
    shutil.copy(APPS / "echo_app.py", root / "echo_app.py")
    os.chmod(root / "echo_app.py", 0o644)
    return root


@pytest.fixture(scope="module")
def apps(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Apps]:
    tmp = tmp_path_factory.mktemp("tools-apps")
    registry = world_dir("registry", 0o755)
    roots = {"alpha": app_root("alpha"), "beta": app_root("beta")}
    config = tmp / "passenger.toml"
    config.write_text(f"instance_registry_dir = {json.dumps(str(registry))}\nmin_instances = 1\n" + "".join(
        f"\n[[app]]\nname = {json.dumps(name)}\nroot = {json.dumps(str(root))}\n"
        f"start_command = {json.dumps(f'{APP_PYTHON} echo_app.py')}\nbase_uri = \"/{name}\"\n"
        for name, root in roots.items()))
    server = start_server(tmp, ["--config", str(config)], ready=2)
    try:
        yield Apps(server, registry, roots)
    finally:
        try:
            server.stop(timeout=15)
        finally:
            server.kill()


def replaced(apps: Apps, before: dict[str, list[int]], changed: set[str]) -> dict[str, list[int]]:
    """Wait until the apps in ``changed`` run only new processes (and the old ones exited); the others unchanged."""
    def done() -> dict[str, list[int]] | None:
        now = settled(apps.registry)
        if now is None or any(set(now[name]) & set(before[name]) for name in changed):
            return None
        return now

    after = wait_for(done, 15, what=f"new processes of {sorted(changed)}")
    for name in set(before) - changed:
        assert after[name] == before[name], (name, before, after)
    old = [pid for name in changed for pid in before[name]]
    wait_for(lambda: not any(pid_alive(pid) for pid in old), 15, what=f"the old processes {old} to exit")
    return after


def test_restart_app_by_path_prefix_restarts_the_matching_apps_blocking(apps: Apps) -> None:
    before = apps.settled()
    result = tool("passenger-config", *apps.args("restart-app", str(apps.roots["alpha"])))
    assert (result.returncode, result.stdout, result.stderr) == (0, "Restarting alpha\n", ""), result
    apps.server.wait_log(r"Admin API: restarting alpha \(blocking\)")
    replaced(apps, before, {"alpha"})
    # A plain string prefix, as Passenger's: part of the root's last name matches too.
    before = apps.settled()
    partial = str(apps.roots["beta"])[:-3]
    result = tool("passenger-config", *apps.args("restart-app", partial))
    assert (result.returncode, result.stdout) == (0, "Restarting beta\n"), result
    replaced(apps, before, {"beta"})


def test_restart_app_dot_is_the_current_directory(apps: Apps) -> None:
    before = apps.settled()
    result = tool("passenger-config", *apps.args("restart-app", "."), cwd=apps.roots["beta"])
    assert (result.returncode, result.stdout) == (0, "Restarting beta\n"), result
    replaced(apps, before, {"beta"})


def test_restart_app_by_name(apps: Apps, capsys: pytest.CaptureFixture[str]) -> None:
    before = apps.settled()
    ran = call(capsys, config_command.main, *apps.args("restart-app", "--name", "alpha"))
    assert (ran.code, ran.out) == (0, "Restarting alpha\n"), ran
    replaced(apps, before, {"alpha"})


def test_restart_app_slash_rolling_restarts_every_app(apps: Apps) -> None:
    before = apps.settled()
    result = tool("passenger-config", *apps.args("restart-app", "/", "--rolling-restart"))
    assert (result.returncode, result.stdout) == (0, "Restarting alpha\nRestarting beta\n"), result
    apps.server.wait_log(r"Admin API: restarting alpha \(rolling\)")
    apps.server.wait_log(r"Admin API: restarting beta \(rolling\)")
    replaced(apps, before, {"alpha", "beta"})


def test_restart_app_that_matches_nothing_exits_1_unless_ignored(apps: Apps,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    before = apps.settled()
    nowhere = str(world_dir("nowhere"))
    result = tool("passenger-config", *apps.args("restart-app", nowhere))
    assert result.returncode == 1 and result.stdout == "", result
    first, *listing = result.stderr.splitlines()
    assert first.startswith(f"passenger-config: There is no app whose root starts with {nowhere} in passenger.")
    assert listing == [f"  alpha (app root {apps.roots['alpha']})", f"  beta (app root {apps.roots['beta']})"]
    ignored = tool("passenger-config", *apps.args("restart-app", nowhere, "--ignore-app-not-running"))
    assert (ignored.returncode, ignored.stdout) == (0, ""), ignored
    assert "ignored: --ignore-app-not-running" in ignored.stderr
    by_name = call(capsys, config_command.main, *apps.args("restart-app", "--name", "gamma"))
    assert by_name.code == 1 and "There is no app named 'gamma'" in by_name.err, by_name
    by_name = call(capsys, config_command.main, *apps.args("restart-app", "--name", "gamma",
                                                           "--ignore-app-not-running"))
    assert by_name.code == 0, by_name
    assert settled(apps.registry) == before  # nothing was restarted


def test_restart_app_without_an_app_lists_the_apps(apps: Apps, capsys: pytest.CaptureFixture[str]) -> None:
    ran = call(capsys, config_command.main, *apps.args("restart-app"))
    assert ran.code == 1 and ran.out == "", ran
    assert "say which app to restart" in ran.err
    assert f"  alpha (app root {apps.roots['alpha']})" in ran.err
    assert f"  beta (app root {apps.roots['beta']})" in ran.err


def test_detach_process_replaces_it_and_an_unknown_pid_exits_1(apps: Apps) -> None:
    before = apps.settled()
    [pid] = before["alpha"]
    result = tool("passenger-config", *apps.args("detach-process", str(pid)))
    assert result.returncode == 0, result
    assert result.stdout == f"Process {pid} of alpha detached: it finishes its requests, then stops.\n"
    after = replaced(apps, before, {"alpha"})
    assert pid not in after["alpha"]
    again = tool("passenger-config", *apps.args("detach-process", str(pid)))
    assert again.returncode == 1, again
    assert one_line(again.stderr) == f"passenger-config: Could not detach process {pid}: no process with pid {pid} " \
                                     "in the pool"


def test_api_call_post_detaches_a_process(apps: Apps) -> None:
    before = apps.settled()
    [pid] = before["beta"]
    result = tool("passenger-config", *apps.args("api-call", "POST", "/pool/detach_process.json",
                                                 "-d", json.dumps({"pid": pid})))
    assert result.returncode == 0, result
    assert json.loads(result.stdout) == {"detached": True, "pid": pid, "app": "beta"}
    replaced(apps, before, {"beta"})


# --------------------------------------------------------------------------------------
# 3. The client against a fake admin API.
# --------------------------------------------------------------------------------------

class FakeAPI:
    """An admin API socket in a fabricated instance directory that answers what the test says."""

    def __init__(self) -> None:
        self.registry = world_dir("fake-registry", 0o755)
        self.instance = instance.create(self.registry, {"listen": []})
        self.status = 200
        self.body = b"{}"
        self.content_type = "application/json"
        self.garbage = False
        self.authorizations: list[str | None] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                fake.authorizations.append(self.headers.get("Authorization"))
                if fake.garbage:
                    self.wfile.write(b"no HTTP here\r\n\r\n")
                    return
                self.send_response(fake.status)
                self.send_header("Content-Type", fake.content_type)
                self.send_header("Content-Length", str(len(fake.body)))
                self.end_headers()
                self.wfile.write(fake.body)

        self.server = socketserver.ThreadingUnixStreamServer(str(self.instance.socket_path), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def args(self, *more: str) -> list[str]:
        return [*more, "--instance-registry-dir", str(self.registry)]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        instance.remove(self.instance)


@pytest.fixture
def fake() -> Iterator[FakeAPI]:
    api = FakeAPI()
    yield api
    api.close()


def basic(user: str, password: str | None) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_client_authenticates_as_admin_else_ro_admin_else_by_peer_credentials(
        fake: FakeAPI, capsys: pytest.CaptureFixture[str]) -> None:
    full = fake.instance.password(full=True)
    read_only = fake.instance.password(full=False)
    assert call(capsys, status.main, *fake.args("--show=json")).code == 0
    (fake.instance.path / instance.FULL_PASSWORD).unlink()
    assert call(capsys, status.main, *fake.args("--show=json")).code == 0
    (fake.instance.path / instance.READ_ONLY_PASSWORD).unlink()
    assert call(capsys, status.main, *fake.args("--show=json")).code == 0
    assert fake.authorizations == [basic("admin", full), basic("ro_admin", read_only), None]


@pytest.mark.parametrize(("status_code", "content_type", "body", "expected"), [
    (500, "application/json", b'{"error": "internal error; see the server log"}',
     "passenger-status: internal error; see the server log [GET /pool.txt: 500 Internal Server Error]"),
    (503, "text/plain", b"the server\nis starting\n",
     "passenger-status: the server is starting [GET /pool.txt: 503 Service Unavailable]"),
    (401, "application/json", b'{"error": "Wrong user name or password"}',
     "passenger-status: Wrong user name or password [GET /pool.txt: 401 Unauthorized] (run this as root or as "
     "the server's user, or as a user who may read the admin passwords in the instance directory)"),
], ids=["500-json", "503-text", "401"])
def test_client_turns_an_error_status_into_one_line(fake: FakeAPI, capsys: pytest.CaptureFixture[str],
                                                    status_code: int, content_type: str, body: bytes,
                                                    expected: str) -> None:
    fake.status, fake.content_type, fake.body = status_code, content_type, body
    ran = call(capsys, status.main, *fake.args())
    assert (ran.code, ran.out, one_line(ran.err)) == (1, "", expected)


def test_client_reports_an_answer_that_is_not_http_or_not_json(fake: FakeAPI,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    fake.body = b"<html>"
    ran = call(capsys, status.main, *fake.args("--show=json"))
    assert ran.code == 1 and "the server's answer is not JSON" in one_line(ran.err), ran
    fake.garbage = True
    ran = call(capsys, status.main, *fake.args())
    assert ran.code == 1 and "sent no valid HTTP answer to GET /pool.txt" in one_line(ran.err), ran

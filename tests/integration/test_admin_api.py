"""The admin side of a real ``twistd -n passenger``: instance directory, admin API, authorization.

1. The instance directory: made at start under ``--instance-registry-dir`` (0700,
   properties.json, 0600 passwords, the API socket), removed at a clean stop,
   and a stale one (its server gone) removed by the next server.
2. Every endpoint over the instance directory's Unix socket, where root is a
   full administrator by its peer credentials.
3. Authorization on ``--admin-listen`` (basic auth: ``ro_admin`` may look,
   ``admin`` may act) and the API's error answers; a non-root user cannot even
   reach the Unix socket.
4. Acting: restarting an app group (blocking and rolling), detaching a process,
   reopening the logs.

The helpers at the top (``Admin``, ``find_instance``, ``pool_pids``) are also
used by test_metrics.py and test_hooks.py.  Synchronisation never sleeps: tests
poll the API or the log with a deadline (tests/polling.py).
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import signal
import socket
import stat
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest
from prometheus_client.parser import text_string_to_metric_families

from passenger import __version__
from passenger.admin import instance
from passenger.tools.client import UnixHTTPConnection
from tests.integration.conftest import (
    APP_PYTHON,
    ECHO_GROUP,
    RawRequest,
    Server,
    echo_app_args,
    free_port,
    in_thread,
    pid_alive,
    start_server,
    wait_for,
    world_dir,
)

Serve = Callable[..., Server]
APP = ECHO_GROUP
NOBODY = 65534


# --------------------------------------------------------------------------------------
# Helpers (shared with test_metrics.py and test_hooks.py).
# --------------------------------------------------------------------------------------

@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        assert self.headers.get("content-type") == "application/json", self
        return json.loads(self.body)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@dataclass
class Admin:
    """An admin API client: over a Unix socket (``target`` a path) or TCP (``target`` a port)."""

    target: str | int
    authorization: str | None = None

    def call(self, method: str, path: str, body: bytes | str | dict[str, Any] | None = None,
             headers: dict[str, str] | None = None, timeout: float = 10.0) -> Reply:
        sent = dict(headers or {})
        if self.authorization is not None and "Authorization" not in sent:
            sent["Authorization"] = self.authorization
        if isinstance(body, dict):
            body = json.dumps(body)
            sent.setdefault("Content-Type", "application/json")
        if isinstance(body, str):
            body = body.encode()
        if isinstance(self.target, int):
            connection = http.client.HTTPConnection("127.0.0.1", self.target, timeout=timeout)
        else:
            connection = UnixHTTPConnection(self.target, timeout)
        try:
            connection.request(method, path, body=body, headers=sent)
            response = connection.getresponse()
            data = response.read()
            return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, data)
        finally:
            connection.close()

    def get(self, path: str, **kwargs: Any) -> Reply:
        return self.call("GET", path, **kwargs)

    def post(self, path: str, body: bytes | str | dict[str, Any] | None = None, **kwargs: Any) -> Reply:
        return self.call("POST", path, body, **kwargs)

    def pool(self) -> dict[str, Any]:
        reply = self.get("/pool.json")
        assert reply.status == 200, reply
        return reply.json()  # type: ignore[no-any-return]

    def metrics(self) -> dict[str, float]:
        """A scrape of /metrics: every sample, keyed ``name{label="value",...}`` (labels sorted)."""
        reply = self.get("/metrics")
        assert reply.status == 200, reply
        samples = {}
        for family in text_string_to_metric_families(reply.body.decode()):
            for sample in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                samples[f"{sample.name}{{{labels}}}"] = sample.value
        return samples


def find_instance(registry: Path, server: Server, timeout: float = 10.0) -> Path:
    """The instance directory of ``server`` (the one whose properties.json has its pid)."""
    assert server.proc is not None

    def found() -> Path | None:
        for path in registry.iterdir():
            try:
                properties = json.loads((path / "properties.json").read_text())
            except (OSError, ValueError):
                continue
            if properties.get("pid") == server.proc.pid:  # type: ignore[union-attr]
                return path
        return None

    return wait_for(found, timeout, what=f"the instance directory of server {server.proc.pid} in {registry}")


def unix_admin(registry: Path, server: Server) -> Admin:
    return Admin(str(find_instance(registry, server) / "agents.s" / "core_api"))


def pool_pids(admin: Admin, app: str = APP, alive_only: bool = True) -> list[int]:
    """The pids of the app's processes in pool.json (only those serving, by default)."""
    for group in admin.pool()["groups"]:
        if group["name"] == app:
            return [p["pid"] for p in group["processes"] if not alive_only or p["life_status"] == "alive"]
    raise AssertionError(f"no group {app} in pool.json")


def app_get(server: Server, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
    """GET through the server's front end: (status, body); error statuses are answers too."""
    try:
        with urllib.request.urlopen(server.url + path, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


# --------------------------------------------------------------------------------------
# One server for the tests that only look (or act without changing the pool).
# --------------------------------------------------------------------------------------

@dataclass
class Running:
    server: Server
    registry: Path
    directory: Path
    admin_port: int
    started_at: float
    read_only_password: str
    full_password: str

    @property
    def unix(self) -> Admin:
        return Admin(str(self.directory / "agents.s" / "core_api"))

    def tcp(self, authorization: str | None = None) -> Admin:
        return Admin(self.admin_port, authorization)

    @property
    def ro_admin(self) -> Admin:
        return self.tcp(basic("ro_admin", self.read_only_password))

    @property
    def admin(self) -> Admin:
        return self.tcp(basic("admin", self.full_password))


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    registry = world_dir("registry", 0o755)
    admin_port = free_port()
    started_at = time.time()
    server = start_server(tmp_path_factory.mktemp("admin"), echo_app_args(
        "--max-instances", "1", "--instance-registry-dir", str(registry),
        "--admin-listen", f"tcp:{admin_port}:interface=127.0.0.1"))
    try:
        directory = find_instance(registry, server)
        yield Running(server, registry, directory, admin_port, started_at,
                      (directory / "read_only_admin_password.txt").read_text().strip(),
                      (directory / "full_admin_password.txt").read_text().strip())
    finally:
        try:
            server.stop(timeout=15)
        finally:
            server.kill()


def the_app_pid(server: Server) -> int:
    status, body = app_get(server, "/pid")
    assert status == 200
    return int(body)


# --------------------------------------------------------------------------------------
# 1. The instance directory.
# --------------------------------------------------------------------------------------

def test_instance_directory_is_private_and_describes_the_server(running: Running) -> None:
    directory = running.directory
    assert instance.NAME.fullmatch(directory.name), directory.name
    assert directory.parent == running.registry
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700

    properties = json.loads((directory / "properties.json").read_text())
    assert properties["instance_id"] == directory.name
    assert properties["pid"] == running.server.proc.pid  # type: ignore[union-attr]
    assert properties["version"] == __version__
    assert properties["listen"] == [f"tcp:{running.server.port}:interface=127.0.0.1"]
    assert properties["admin_listen"] == [f"tcp:{running.admin_port}:interface=127.0.0.1"]
    assert running.started_at - 1 <= properties["created_at"] <= time.time()
    assert (directory / "server.pid").read_text().strip() == str(running.server.proc.pid)  # type: ignore[union-attr]

    passwords = []
    for name in ("read_only_admin_password.txt", "full_admin_password.txt"):
        path = directory / name
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, name
        assert path.stat().st_uid == os.geteuid()
        passwords.append(path.read_text().strip())
        assert len(passwords[-1]) >= 24, name
    assert passwords[0] != passwords[1]

    api_socket = directory / "agents.s" / "core_api"
    assert stat.S_ISSOCK(api_socket.stat().st_mode)
    assert stat.S_IMODE((directory / "agents.s").stat().st_mode) == 0o700

    # The tools' view of it: the one running instance of this registry.
    found = instance.find(running.registry)
    assert found.path == directory and found.alive()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGQUIT], ids=lambda s: signal.Signals(s).name)
def test_instance_directory_is_removed_after_a_clean_stop(serve: Serve, sig: int) -> None:
    registry = world_dir("registry", 0o755)
    server = serve(echo_app_args("--instance-registry-dir", str(registry)))
    directory = find_instance(registry, server)
    assert Admin(str(directory / "agents.s" / "core_api")).get("/ping.json").status == 200
    server.stop(sig, timeout=15)
    assert not directory.exists()
    assert list(registry.iterdir()) == []


def test_a_stale_instance_directory_is_removed_when_a_server_starts(serve: Serve) -> None:
    registry = world_dir("registry", 0o755)
    # One whose server is gone (made as a server makes it, then its pid is a dead one's) ...
    stale = instance.create(registry, {"version": __version__, "listen": []}).path
    properties = json.loads((stale / "properties.json").read_text())
    properties["pid"] = dead_pid()
    (stale / "properties.json").write_text(json.dumps(properties))
    # ... one whose server is alive (this process) ...
    alive = instance.create(registry, {"version": __version__, "listen": []}).path
    # ... one half made by a server that died while starting a while ago, and one being made right now ...
    half_made = registry / "passenger.halfmade"
    (half_made / "agents.s").mkdir(parents=True)
    old = time.time() - 2 * instance.HALF_MADE_AGE
    os.utime(half_made, (old, old))
    being_made = registry / "passenger.makingit"
    (being_made / "agents.s").mkdir(parents=True)
    # ... and a spawn work directory, which only shares the prefix.
    work_dir = registry / "passenger.spawn.abcdef12"
    work_dir.mkdir()

    server = serve(echo_app_args("--instance-registry-dir", str(registry)))
    own = find_instance(registry, server)

    assert not stale.exists()
    assert not half_made.exists()
    assert alive.exists() and being_made.exists() and work_dir.exists()
    assert sorted(p.name for p in registry.iterdir()) == sorted(
        p.name for p in (own, alive, being_made, work_dir))


def test_a_killed_servers_directory_is_removed_by_the_next_server(serve: Serve) -> None:
    registry = world_dir("registry", 0o755)
    first = serve(echo_app_args("--instance-registry-dir", str(registry)))
    left_behind = find_instance(registry, first)
    first.kill()  # SIGKILL: no chance to clean up
    assert left_behind.exists()
    second = serve(echo_app_args("--instance-registry-dir", str(registry)))
    own = find_instance(registry, second)
    assert not left_behind.exists()
    assert [p.name for p in registry.iterdir()] == [own.name]


# --------------------------------------------------------------------------------------
# 2. Every endpoint, over the Unix socket (root: a full administrator by its peer credentials).
# --------------------------------------------------------------------------------------

def test_security_headers_on_every_answer(running: Running) -> None:
    for path in ("/ping.json", "/pool.txt", "/nope"):
        reply = running.unix.get(path)
        assert reply.headers.get("cache-control") == "no-store", path
        assert reply.headers.get("x-content-type-options") == "nosniff", path


def test_ping_and_version(running: Running) -> None:
    ping = running.unix.get("/ping.json")
    assert ping.status == 200 and ping.json() == {"status": "ok"}
    version = running.unix.get("/version.json")
    assert version.status == 200
    assert version.json() == {"program_name": "passenger", "program_version": __version__,
                              "core_version": __version__}


def test_pool_json(running: Running) -> None:
    pid = the_app_pid(running.server)
    pool = running.unix.pool()
    assert pool["max"] == 6
    assert pool["process_count"] == pool["capacity_used"] == 1
    assert pool["app_group_count"] == 1
    assert pool["get_wait_list_size"] == 0 and pool["waiting_app_groups"] == []
    [group] = pool["groups"]
    assert group["name"] == APP
    assert group["app_type"] == "generic"
    assert group["environment"] == "production"
    assert group["start_command"] == f"{APP_PYTHON} echo_app.py"
    assert group["enabled_process_count"] == 1
    assert group["min_instances"] == 1 and group["max_instances"] == 1
    assert group["spawn_failures"] == 0 and group["last_spawn_error"] is None
    [process] = group["processes"]
    assert process["pid"] == pid
    assert process["life_status"] == "alive" and process["enabled"] == "enabled"
    assert process["sessions"] == 0
    assert process["processed"] >= 1
    assert process["address"] == f"http://127.0.0.1:{process['port']}"
    assert process["spawn_start_time"] <= process["spawn_end_time"] <= process["last_used"] <= time.time()
    assert process["last_used_desc"].endswith(" ago")
    assert process["rss"] > 0 and process["real_memory"] > 0


def test_pool_json_counts_what_a_process_served(running: Running) -> None:
    before = running.unix.pool()["groups"][0]["processes"][0]["processed"]
    for _ in range(3):
        assert app_get(running.server, "/pid")[0] == 200
    assert running.unix.pool()["groups"][0]["processes"][0]["processed"] == before + 3


def test_pool_txt_lists_the_processes(running: Running) -> None:
    pid = the_app_pid(running.server)
    reply = running.unix.get("/pool.txt")
    assert reply.status == 200
    assert reply.headers["content-type"] == "text/plain; charset=utf-8"
    text = reply.body.decode()
    assert "----------- General information -----------" in text
    assert "Max pool size : 6\n" in text
    assert "Processes     : 1\n" in text
    assert f"{APP}:\n" in text
    assert f"  * PID: {pid} " in text
    assert "URL     :" not in text
    verbose = running.unix.get("/pool.txt?verbose=1").body.decode()
    assert "    URL     : http://127.0.0.1:" in verbose


def test_pool_xml_parses(running: Running) -> None:
    pid = the_app_pid(running.server)
    reply = running.unix.get("/pool.xml")
    assert reply.status == 200
    assert reply.headers["content-type"] == "application/xml"
    root = ElementTree.fromstring(reply.body)
    assert root.tag == "info"
    assert root.findtext("process_count") == "1"
    assert root.findtext("passenger_version") == __version__
    [supergroup] = root.findall("supergroups/supergroup")
    assert supergroup.findtext("name") == APP
    assert supergroup.findtext("group/name") == APP
    assert [p.findtext("pid") for p in supergroup.findall("group/processes/process")] == [str(pid)]
    assert supergroup.findtext("group/processes/process/life_status") == "alive"


def test_server_json_shows_a_request_in_flight(running: Running) -> None:
    pid = the_app_pid(running.server)
    idle = running.unix.get("/server.json")
    assert idle.status == 200
    assert idle.json()["requests"] == [] and idle.json()["requests_in_flight"] == 0

    sleeper = RawRequest(running.server.port, "/sleep?ms=1500")
    try:
        def in_flight() -> dict[str, Any] | None:
            state = running.unix.get("/server.json").json()
            mine = [r for r in state["requests"] if r["path"] == "/sleep?ms=1500"]
            return state if mine and mine[0]["state"] == "waiting for app" and mine[0]["age"] >= 0.2 else None

        state = wait_for(in_flight, 5, what="the /sleep request in server.json")
        assert state["requests_in_flight"] == 1
        assert state["connections"] >= 1
        [request] = state["requests"]
        assert request["method"] == "GET"
        assert request["app"] == APP
        assert request["pid"] == pid
        assert request["host"] == f"127.0.0.1:{running.server.port}"
        assert 0.2 <= request["age"] < 5
        assert request["client"].startswith("127.0.0.1")
        assert request["request_id"]
        response = sleeper.response(10)
        assert response.status == 200
        assert response.headers.get("x-request-id") == request["request_id"]
    finally:
        sleeper.close()
    wait_for(lambda: running.unix.get("/server.json").json()["requests"] == [], 5, what="no request in flight")


def test_server_json_shows_a_queued_request(serve: Serve) -> None:
    registry = world_dir("registry", 0o755)
    server = serve(echo_app_args("--instance-registry-dir", str(registry), "--concurrency", "1",
                                 "--max-instances", "1"))
    admin = unix_admin(registry, server)
    [pid] = pool_pids(admin)
    holder = RawRequest(server.port, "/sleep?ms=1000")
    waiter = None
    try:
        wait_for(lambda: admin.get("/server.json").json()["requests_in_flight"] == 1, 5, what="the first request")
        waiter = RawRequest(server.port, "/pid")

        def both() -> list[dict[str, Any]] | None:
            requests = admin.get("/server.json").json()["requests"]
            return requests if len(requests) == 2 else None

        first, second = wait_for(both, 5, what="two requests in server.json")  # oldest first
        assert (first["path"], first["state"], first["pid"]) == ("/sleep?ms=1000", "waiting for app", pid)
        assert (second["path"], second["state"], second["pid"], second["app"]) == ("/pid", "queued", None, APP)
        assert first["age"] >= second["age"]
        assert holder.response(10).status == 200
        assert waiter.response(10).body == str(pid).encode()
    finally:
        holder.close()
        if waiter is not None:
            waiter.close()


def test_metrics(running: Running) -> None:
    reply = running.unix.get("/metrics")
    assert reply.status == 200
    assert reply.headers["content-type"].startswith("text/plain; version=")
    names = {f.name for f in text_string_to_metric_families(reply.body.decode())}
    assert {"passenger_requests", "passenger_processes", "passenger_open_connections"} <= names


def test_dashboard(running: Running) -> None:
    page = running.unix.get("/")
    assert page.status == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
    dashboard = running.unix.get("/dashboard.json")
    assert dashboard.status == 200
    assert dashboard.json()["pool"]["groups"][0]["name"] == APP


def test_a_trailing_slash_and_head_requests(running: Running) -> None:
    assert running.unix.get("/ping.json/").json() == {"status": "ok"}
    head = running.unix.call("HEAD", "/ping.json")
    assert head.status == 200 and head.body == b""


# --------------------------------------------------------------------------------------
# 3. Authorization (on --admin-listen: basic auth) and the API's error answers.
# --------------------------------------------------------------------------------------

def assert_refused(reply: Reply, status: int) -> str:
    """``reply`` is a JSON error with ``status``; returns its reason."""
    assert reply.status == status, reply
    reason = reply.json()["error"]
    assert isinstance(reason, str) and reason
    if status == 401:
        assert reply.headers.get("www-authenticate") == 'Basic realm="passenger admin"'
    else:
        assert "www-authenticate" not in reply.headers
    return reason


def test_no_credentials_on_tcp_is_401(running: Running) -> None:
    for path in ("/pool.json", "/ping.json", "/metrics", "/"):
        reason = assert_refused(running.tcp().get(path), 401)
        assert "basic auth" in reason.lower()
    # Nothing of the pool leaks in a refusal.
    assert str(the_app_pid(running.server)).encode() not in running.tcp().get("/pool.json").body


@pytest.mark.parametrize("authorization", [
    pytest.param(lambda r: basic("admin", "wrong"), id="admin-wrong-password"),
    pytest.param(lambda r: basic("ro_admin", "wrong"), id="ro_admin-wrong-password"),
    pytest.param(lambda r: basic("ro_admin", r.full_password), id="ro_admin-with-the-full-password"),
    pytest.param(lambda r: basic("admin", r.read_only_password), id="admin-with-the-read-only-password"),
    pytest.param(lambda r: basic("root", r.full_password), id="unknown-user"),
    pytest.param(lambda r: basic("admin", ""), id="empty-password"),
    pytest.param(lambda r: basic("admin", r.full_password + "x"), id="password-with-a-suffix"),
    pytest.param(lambda r: basic("admin", r.full_password[:-1]), id="password-prefix"),
])
def test_wrong_credentials_are_401(running: Running, authorization: Callable[[Running], str]) -> None:
    reason = assert_refused(running.tcp(authorization(running)).get("/pool.json"), 401)
    assert "wrong" in reason.lower()


@pytest.mark.parametrize("authorization", [
    pytest.param(lambda r: "Bearer " + r.full_password, id="bearer"),
    pytest.param(lambda r: "Digest username=admin", id="digest"),
    pytest.param(lambda r: "Basic", id="basic-without-credentials"),
    pytest.param(lambda r: "Basic !!!not-base64!!!", id="not-base64"),
    pytest.param(lambda r: "Basic " + base64.b64encode(b"admin" + r.full_password.encode()).decode(),
                 id="no-colon"),
    pytest.param(lambda r: "Basic " + base64.b64encode(b"admin:\xff\xfe").decode(), id="not-utf8"),
    pytest.param(lambda r: r.full_password, id="bare-password"),
])
def test_non_basic_or_malformed_authorization_is_401(running: Running,
                                                     authorization: Callable[[Running], str]) -> None:
    assert_refused(running.tcp(authorization(running)).get("/pool.json"), 401)


def test_ro_admin_may_look_but_not_act(running: Running) -> None:
    ro_admin = running.ro_admin
    pool = ro_admin.get("/pool.json")
    assert pool.status == 200 and pool.json()["groups"][0]["name"] == APP
    for path in ("/pool.txt", "/pool.xml", "/server.json", "/metrics", "/version.json", "/dashboard.json"):
        assert ro_admin.get(path).status == 200, path
    restarts_before = running.unix.pool()["groups"][0]["restarts"]
    for path, body in (("/pool/restart_app_group.json", {"name": APP}),
                       ("/pool/detach_process.json", {"pid": the_app_pid(running.server)}),
                       ("/reopen_logs.json", {})):
        reason = assert_refused(ro_admin.post(path, body), 403)
        assert "read-only" in reason, path
    assert running.unix.pool()["groups"][0]["restarts"] == restarts_before


def test_the_basic_scheme_is_case_insensitive(running: Running) -> None:
    credentials = basic("admin", running.full_password).split(" ", 1)[1]
    assert running.tcp("basic " + credentials).get("/ping.json").status == 200
    assert running.tcp("BASIC " + credentials).get("/ping.json").status == 200


def test_admin_may_act(running: Running) -> None:
    reply = running.admin.post("/reopen_logs.json", {})
    assert reply.status == 200 and reply.json() == {"status": "ok"}
    # And may look, like ro_admin.
    assert running.admin.get("/pool.json").json()["groups"][0]["name"] == APP


def test_post_needs_a_json_content_type(running: Running) -> None:
    admin = running.admin
    for headers in ({}, {"Content-Type": "text/plain"}, {"Content-Type": "application/x-www-form-urlencoded"}):
        reason = assert_refused(admin.post("/reopen_logs.json", '{"name": "apps"}', headers=headers), 415)
        assert "application/json" in reason
    ok = admin.post("/reopen_logs.json", "{}", headers={"Content-Type": "Application/JSON; charset=utf-8"})
    assert ok.status == 200


@pytest.mark.parametrize(("path", "body"), [
    ("/pool/restart_app_group.json", "{not json"),
    ("/pool/restart_app_group.json", "[1, 2]"),
    ("/pool/restart_app_group.json", "{}"),
    ("/pool/restart_app_group.json", '{"name": 3}'),
    ("/pool/restart_app_group.json", '{"name": "apps", "restart_method": "sideways"}'),
    ("/pool/detach_process.json", "{not json"),
    ("/pool/detach_process.json", "{}"),
    ("/pool/detach_process.json", '{"pid": "abc"}'),
    ("/pool/detach_process.json", '{"pid": true}'),
    ("/pool/detach_process.json", '{"pid": 1.5}'),
])
def test_bad_request_bodies_are_400(running: Running, path: str, body: str) -> None:
    restarts_before = running.unix.pool()["groups"][0]["restarts"]
    assert_refused(running.admin.post(path, body, headers={"Content-Type": "application/json"}), 400)
    assert running.unix.pool()["groups"][0]["restarts"] == restarts_before


def test_too_large_a_body_is_413(running: Running) -> None:
    body = '{"name": "' + "x" * 70000 + '"}'
    assert_refused(running.admin.post("/pool/restart_app_group.json", body,
                                      headers={"Content-Type": "application/json"}), 413)


def test_an_unauthenticated_upload_is_refused_before_its_body(running: Running) -> None:
    """No credentials, a body of 1 GB announced: the answer is a refusal at once, not after reading (and
    spooling to disk) a gigabyte from someone who is not even allowed to ask."""
    head = (b"POST /pool/restart_app_group.json HTTP/1.1\r\nHost: admin\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000000000\r\n\r\n")
    with socket.create_connection(("127.0.0.1", running.admin_port), timeout=10) as client:
        client.sendall(head + b"x" * 65536)
        client.settimeout(3)
        try:
            answer = client.recv(65536)
        except TimeoutError:
            answer = b""
    assert answer.split(b" ", 2)[1:2] in ([b"401"], [b"413"]), answer[:200]


def test_unknown_app_and_unknown_pid_are_404(running: Running) -> None:
    reason = assert_refused(running.admin.post("/pool/restart_app_group.json", {"name": "no-such-app"}), 404)
    assert "no-such-app" in reason
    not_in_pool = running.server.proc.pid  # type: ignore[union-attr]  # the server itself: alive, not an app process
    reason = assert_refused(running.admin.post("/pool/detach_process.json", {"pid": not_in_pool}), 404)
    assert str(not_in_pool) in reason
    assert_refused(running.admin.post("/pool/detach_process.json", {"pid": str(dead_pid())}), 404)


def test_wrong_method_is_405_and_unknown_path_404(running: Running) -> None:
    admin = running.admin
    reply = admin.get("/pool/restart_app_group.json")
    assert_refused(reply, 405)
    assert reply.headers["allow"] == "POST"
    reply = admin.post("/pool.json", {})
    assert_refused(reply, 405)
    assert reply.headers["allow"] == "GET"
    assert_refused(admin.call("DELETE", "/reopen_logs.json"), 405)
    assert "no such endpoint" in assert_refused(admin.get("/no/such/thing.json"), 404)
    assert_refused(running.unix.get("/pool.jsonx"), 404)


def test_basic_auth_over_the_unix_socket_is_not_needed_by_root(running: Running) -> None:
    # Root's peer credentials make it a full administrator whatever it sends.
    assert running.unix.get("/pool.json").status == 200
    wrong = Admin(running.unix.target, basic("admin", "wrong"))
    assert wrong.post("/reopen_logs.json", {}).status == 200


NOBODY_CONNECT = """
import errno, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    s.connect(sys.argv[1])
except OSError as e:
    print(errno.errorcode[e.errno])
else:
    print("connected")
for name in sys.argv[2:]:
    try:
        open(name).read()
    except OSError as e:
        print(errno.errorcode[e.errno])
    else:
        print("read")
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as nobody")
def test_another_user_cannot_reach_the_socket_or_the_passwords(running: Running) -> None:
    directory = running.directory
    result = subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", APP_PYTHON, "-c", NOBODY_CONNECT,
         str(directory / "agents.s" / "core_api"), str(directory / "full_admin_password.txt"),
         str(directory / "read_only_admin_password.txt"), str(directory / "properties.json")],
        capture_output=True, text=True, timeout=20, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["EACCES", "EACCES", "EACCES", "EACCES"]


# --------------------------------------------------------------------------------------
# 4. Acting: restart, detach, reopen logs (each on a server of its own).
# --------------------------------------------------------------------------------------

@pytest.fixture
def acting(serve: Serve) -> tuple[Server, Admin]:
    registry = world_dir("registry", 0o755)
    server = serve(echo_app_args("--instance-registry-dir", str(registry)))
    return server, unix_admin(registry, server)


@pytest.mark.parametrize("method", ["blocking", "rolling"])
def test_restart_app_group_replaces_the_process(acting: tuple[Server, Admin], method: str) -> None:
    server, admin = acting
    [old] = pool_pids(admin)
    reply = admin.post("/pool/restart_app_group.json", {"name": APP, "restart_method": method})
    assert reply.status == 200
    assert reply.json() == {"restarted": True, "name": APP, "restart_method": method}

    def replaced() -> list[int] | None:
        pids = pool_pids(admin, alive_only=False)
        return pids if len(pids) == 1 and pids[0] != old and pool_pids(admin) == pids else None

    [new] = wait_for(replaced, 15, what=f"a new process instead of {old} in pool.json")
    wait_for(lambda: not pid_alive(old), 15, what=f"the old process {old} to exit")
    assert the_app_pid(server) == new
    group = admin.pool()["groups"][0]
    assert group["restarts"] == 1
    assert group["processes"][0]["generation"] == 1
    server.wait_log(rf"Restarting {APP} \({method}\): asked through the admin API")


def test_restart_app_group_without_a_method_is_blocking(acting: tuple[Server, Admin]) -> None:
    server, admin = acting
    [old] = pool_pids(admin)
    reply = admin.post("/pool/restart_app_group.json", {"name": APP})
    assert reply.json()["restart_method"] == "blocking"
    wait_for(lambda: (pids := pool_pids(admin)) and old not in pids, 15, what="a new process")
    server.wait_log(rf"Restarting {APP} \(blocking\)")


def test_detach_process_replaces_it(acting: tuple[Server, Admin]) -> None:
    server, admin = acting
    [old] = pool_pids(admin)
    reply = admin.post("/pool/detach_process.json", {"pid": old})
    assert reply.status == 200
    assert reply.json() == {"detached": True, "pid": old, "app": APP}

    [new] = wait_for(lambda: (pids := pool_pids(admin, alive_only=False)) and old not in pids and pids, 15,
                     what=f"{old} to leave pool.json")
    wait_for(lambda: pool_pids(admin) == [new], 15, what=f"the replacement {new} to be ready")
    wait_for(lambda: not pid_alive(old), 15, what=f"the detached process {old} to exit")
    assert the_app_pid(server) == new
    # It is gone: a second detach finds nothing.
    assert_refused(admin.post("/pool/detach_process.json", {"pid": old}), 404)
    # A pid given as a string works too.
    assert admin.post("/pool/detach_process.json", {"pid": str(new)}).status == 200
    wait_for(lambda: (pids := pool_pids(admin)) and new not in pids, 15, what="a third process")


def test_detach_waits_for_the_request_in_flight(acting: tuple[Server, Admin]) -> None:
    server, admin = acting
    [old] = pool_pids(admin)
    sleeper = RawRequest(server.port, "/sleep?ms=800")
    try:
        wait_for(lambda: admin.pool()["groups"][0]["processes"][0]["sessions"] == 1, 5, what="the request on it")
        assert admin.post("/pool/detach_process.json", {"pid": old}).status == 200
        response = sleeper.response(10)
        assert response.status == 200 and response.body == b"slept"
        assert response.headers["x-pid"] == str(old)
    finally:
        sleeper.close()
    wait_for(lambda: not pid_alive(old), 15, what=f"the detached process {old} to exit")


def test_reopen_logs_reopens_the_log_file(acting: tuple[Server, Admin]) -> None:
    server, admin = acting
    rotated = server.log_path.with_suffix(".log.1")
    server.log_path.rename(rotated)  # as logrotate does
    reply = admin.post("/reopen_logs.json", {})
    assert reply.status == 200 and reply.json() == {"status": "ok"}
    wait_for(lambda: server.log_path.exists() and f"Reopened the log file {server.log_path}" in server.log_path.read_text(),
             10, what="the reopen, in the new file")  # server.log() reads rotated files too
    # What the server logs now goes to the new file, not the rotated one.
    assert admin.post("/pool/restart_app_group.json", {"name": APP}).status == 200
    server.wait_log(r"Restarting apps \(blocking\)")
    assert "Restarting apps" not in rotated.read_text()


def test_the_api_answers_while_a_request_is_slow(acting: tuple[Server, Admin]) -> None:
    server, admin = acting
    slow = in_thread(lambda: RawRequest(server.port, "/sleep?ms=1000").response(10))
    wait_for(lambda: admin.get("/server.json").json()["requests_in_flight"] == 1, 5, what="the slow request")
    started = time.monotonic()
    assert admin.get("/pool.json").status == 200
    assert time.monotonic() - started < 0.5
    assert slow(15).status == 200

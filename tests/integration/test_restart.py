"""App restarts with real apps and real sockets, under load, through the real ``twistd -n passenger``.

Restarts are triggered as a user does: by touching ``<app root>/tmp/restart.txt``
(each test copies the test apps into a root of its own), by ``tmp/always_restart.txt``,
or by sending SIGUSR2 to the server (a rolling restart of every app).  Meanwhile
a few client threads (``Load``) send GETs until told to stop, some on kept-alive
connections and some on fresh ones, and count every status and every exception.

1. a blocking restart (the default) under load: only 2xx, new pids, old ones exit;
2. a rolling restart under load: the old processes replaced one at a time;
3. recycling (``max_requests``) under load;
4. a slow request on the old process finishes (200) before that process exits;
5. ``drain_timeout``: a request still running on a leaving process gets 504;
6. ``resist_deployment_errors``: a broken deploy leaves the old processes serving;
7. upgraded connections (WebSockets) on a restart: aborted, or kept open (until
   the drain timeout);
8. ``tmp/always_restart.txt``; 9. SIGUSR2;
10. touch(1) creating restart.txt restarts once;
11. ``stop_signal`` and ``shutdown_timeout`` for the old processes;
12. ``restart_dir``.

Synchronisation never sleeps: tests wait (with a deadline) for a log line, for
the load to have served some more requests, or for a process to be gone.  The
apps run with ``--announce-stop`` where the order of events matters: they print
``app <pid> got SIGTERM`` when the server stops them, which lands in the
server's log in order with its own lines.
"""

from __future__ import annotations

import collections
import http.client
import os
import re
import shutil
import signal
import socket
import subprocess
import textwrap
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.integration.conftest import APP_PYTHON, APPS, Reply, Server, fetch, pid_exists, world_dir
from tests.polling import wait_for

Serve = Callable[..., Server]

READY = r"Process (\d+) of {app} is ready"


# Small helpers.

def app_root(prefix: str = "app") -> Path:
    """A root of the test's own: the test apps and tmp/restart.txt, readable by the apps' account.

    restart.txt exists from the start, as after a first deploy: touching it then
    changes its mtime once (creating it with touch(1) changes it twice, see test 10).
    """
    root = world_dir(prefix, 0o755)
    for name in ("echo_app.py", "life_app.py", "upgrade_app.py"):
        shutil.copy(APPS / name, root / name)
        os.chmod(root / name, 0o644)
    (root / "tmp").mkdir()
    os.chmod(root / "tmp", 0o755)
    restart_txt = root / "tmp" / "restart.txt"
    restart_txt.write_text("")
    os.chmod(restart_txt, 0o644)
    os.utime(restart_txt, (time.time() - 3600,) * 2)
    return root


def touch_restart(root: Path) -> float:
    """Touch ``tmp/restart.txt`` as a deploy does (a new mtime, in one step); returns when (monotonic)."""
    os.utime(root / "tmp" / "restart.txt")
    return time.monotonic()


def app_args(root: Path, name: str, command: str, *extra: str) -> list[str]:
    return ["--app-root", str(root), "--app-name", name, "--app-start-command", command, *extra]


def ready_pids(server: Server, app: str) -> list[int]:
    """Every process of ``app`` that became ready, in order."""
    return [int(pid) for pid in re.findall(READY.format(app=re.escape(app)), server.log())]


def spawned(server: Server, app: str) -> list[int]:
    return [int(pid) for pid in re.findall(rf"Spawning process (\d+) of {re.escape(app)} ", server.log())]


def spawned_before_restart(server: Server, app: str) -> list[int]:
    """The processes of ``app`` spawned before its first restart."""
    log = server.log()
    restart = position(log, rf"Restarting {re.escape(app)} ")
    return [int(m.group(1)) for m in re.finditer(rf"Spawning process (\d+) of {re.escape(app)} ", log)
            if m.start() < restart]


def position(log: str, pattern: str) -> int:
    """Where ``pattern`` first matches in the log (it must)."""
    match = re.search(pattern, log)
    assert match, f"{pattern!r} is not in the log:\n{log}"
    return match.start()


def all_gone(pids: list[int]) -> bool:
    return not any(pid_exists(pid) for pid in pids)


def fetch_in_thread(server: Server, path: str, timeout: float = 15.0) -> Callable[[], Reply]:
    """Start ``fetch`` in a thread now; the returned callable joins it and returns its reply."""
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["reply"] = fetch(server.port, path, timeout=timeout)
        except BaseException as e:  # handed to the test thread
            box["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def join() -> Reply:
        thread.join(timeout + 5)
        assert not thread.is_alive(), f"GET {path} still running"
        if "error" in box:
            raise box["error"]  # type: ignore[misc]
        reply = box["reply"]
        assert isinstance(reply, Reply)
        return reply

    return join


# The load.

@dataclass
class Hit:
    started: float
    status: int | None
    pid: int | None
    error: str | None = None


@dataclass
class Load:
    """Client threads sending GETs to ``paths`` until stopped: half keep their connection alive.

    Every response and every exception is recorded.  Bounded: the threads give up
    after ``limit`` seconds even if the test never stops them.
    """

    server: Server
    paths: tuple[str, ...] = ("/pid",)
    threads: int = 4
    limit: float = 30.0
    hits: list[Hit] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _workers: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Load:
        for index in range(self.threads):
            worker = threading.Thread(target=self._run, args=(index,), daemon=True)
            self._workers.append(worker)
            worker.start()
        return self

    def _run(self, index: int) -> None:
        keep_alive = index % 2 == 0
        deadline = time.monotonic() + self.limit
        connection: http.client.HTTPConnection | None = None
        number = 0
        while not self._stop.is_set() and time.monotonic() < deadline:
            path = self.paths[number % len(self.paths)]
            number += 1
            if connection is None:
                connection = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=10)
            started = time.monotonic()
            try:
                connection.request("GET", f"{path}{'&' if '?' in path else '?'}t={index}-{number}")
                response = connection.getresponse()
                body = response.read()
                pid = response.getheader("X-Pid")
                hit = Hit(started, response.status, int(pid) if pid else None)
                if response.status != 200:
                    hit.error = body[:300].decode(errors="replace")
                if not keep_alive or response.will_close:
                    connection.close()
                    connection = None
            except Exception as e:
                hit = Hit(started, None, None, f"{'kept-alive' if keep_alive else 'fresh'} connection: {e!r}")
                if connection is not None:
                    connection.close()
                connection = None
            with self._lock:
                self.hits.append(hit)
        if connection is not None:
            connection.close()

    def count(self) -> int:
        with self._lock:
            return len(self.hits)

    def serve_more(self, count: int = 20, timeout: float = 10.0) -> None:
        """Wait until the load has had ``count`` more answers (or errors) than now."""
        target = self.count() + count
        wait_for(lambda: self.count() >= target, timeout, what=f"{count} more requests of the load")

    def stop(self) -> list[Hit]:
        self._stop.set()
        for worker in self._workers:
            worker.join(15)
        assert not any(worker.is_alive() for worker in self._workers), "a load thread is stuck"
        return list(self.hits)


def assert_all_2xx(hits: list[Hit], server: Server) -> None:
    statuses = collections.Counter(hit.status for hit in hits)
    bad = [hit for hit in hits if hit.status is None or not 200 <= hit.status < 300]
    assert not bad, (f"{len(bad)} of {len(hits)} requests failed ({dict(statuses)}); first ones: {bad[:5]}\n"
                     f"{server.log()}")
    assert len(hits) >= 40, f"the load sent only {len(hits)} requests"


# 1. Blocking restart (the default) under load.

def test_blocking_restart_under_load_only_2xx_and_every_process_replaced(serve: Serve) -> None:
    root = app_root()
    server = serve(app_args(root, "blocking", f"{APP_PYTHON} echo_app.py --announce-stop",
                            "--min-instances", "2", "--max-instances", "2"), ready=2)
    old = server.app_pids()
    assert len(old) == 2
    load = Load(server).start()
    try:
        load.serve_more(30)
        touch_restart(root)
        server.wait_log(r"Restarting blocking \(blocking\): \S+restart.txt was touched")
        wait_for(lambda: all_gone(old), 10, what=f"the old processes {old} to exit")
        server.wait_ready(3)  # a new process (max_instances 2: the pool did not grow before)
        after_restart = time.monotonic()
        load.serve_more(30)
    finally:
        hits = load.stop()
    assert_all_2xx(hits, server)

    assert spawned_before_restart(server, "blocking") == old
    new = [pid for pid in server.app_pids() if pid not in old]
    assert new, server.log()
    late = {hit.pid for hit in hits if hit.started >= after_restart}
    assert late and late <= set(new), f"after the restart, requests went to {late}; new processes: {new}"
    for _ in range(5):
        reply = fetch(server.port, "/pid")
        assert reply.status == 200 and reply.pid in new, reply
    log = server.log()
    assert log.count("Restarting blocking") == 1, log
    for pid in old:  # each was stopped by the server (TERM), not lost
        assert position(log, r"Restarting blocking") < position(log, rf"App {pid} stdout: app {pid} got SIGTERM")
    assert not re.search(r"removed from the pool", log), log


# 2. Rolling restart under load: one process at a time, the new one ready first.

def test_rolling_restart_under_load_replaces_processes_one_at_a_time(serve: Serve) -> None:
    root = app_root()
    server = serve(app_args(root, "rolling", f"{APP_PYTHON} echo_app.py --announce-stop", "--rolling-restarts",
                            "--min-instances", "2", "--max-instances", "2"), ready=2)
    old = server.app_pids()
    assert len(old) == 2
    load = Load(server).start()
    try:
        load.serve_more(30)
        touch_restart(root)
        server.wait_log(r"Restarting rolling \(rolling\): \S+restart.txt was touched")
        server.wait_ready(4, timeout=20)
        wait_for(lambda: all_gone(old), 10, what=f"the old processes {old} to exit")
        after_restart = time.monotonic()
        load.serve_more(30)
    finally:
        hits = load.stop()
    assert_all_2xx(hits, server)

    log = server.log()
    assert spawned_before_restart(server, "rolling") == old
    new = [pid for pid in spawned(server, "rolling") if pid not in old]
    assert len(new) == 2, f"expected exactly two new processes, got {new}:\n{log}"
    assert ready_pids(server, "rolling") == old + new, log
    # The order of events: new 1 ready, an old one told to stop, then (only once
    # it is gone) new 2 spawned and ready, then the other old one told to stop.
    events = sorted(
        [(position(log, rf"Process {pid} of rolling is ready"), "ready", pid) for pid in new]
        + [(position(log, rf"App {pid} stdout: app {pid} got SIGTERM"), "stop", pid) for pid in old]
        + [(position(log, rf"Spawning process {pid} of rolling "), "spawn", pid) for pid in new])
    kinds = [kind for _, kind, _ in events]
    assert kinds == ["spawn", "ready", "stop", "spawn", "ready", "stop"], f"{events}\n{log}"
    assert position(log, r"Restarting rolling") < events[0][0]

    late = {hit.pid for hit in hits if hit.started >= after_restart}
    assert late and late <= set(new), f"after the restart, requests went to {late}; new processes: {new}"
    served = {fetch(server.port, "/pid").pid for _ in range(6)}
    assert served <= set(new), served
    assert not re.search(r"removed from the pool", log), log


# 3. Recycling with max_requests under load.

def test_max_requests_recycling_under_load_only_2xx(serve: Serve) -> None:
    root = app_root()
    server = serve(app_args(root, "recycled", f"{APP_PYTHON} echo_app.py", "--max-requests", "3",
                            "--max-instances", "3"), ready=1)
    load = Load(server).start()
    try:
        server.wait_log(r"Process \d+ of recycled served 3 requests \(max_requests\); replacing it", count=8)
        load.serve_more(20)
    finally:
        hits = load.stop()
    assert_all_2xx(hits, server)
    per_process = collections.Counter(hit.pid for hit in hits)
    assert len(per_process) >= 8, per_process
    # A process leaves after its 3rd request; requests already on it may still finish there.
    assert max(per_process.values()) <= 3 + load.threads - 1, per_process
    replaced = [int(pid) for pid in re.findall(r"Process (\d+) of recycled served 3 requests", server.log())]
    wait_for(lambda: all_gone(replaced[:8]), 10, what="the recycled processes to exit")


# 4. A slow request started before a blocking restart finishes on its old process.

def test_slow_request_in_flight_finishes_on_its_old_process_which_exits_after(serve: Serve) -> None:
    root = app_root()
    server = serve(app_args(root, "drains", f"{APP_PYTHON} life_app.py --announce-stop",
                            "--max-instances", "1"), ready=1)
    (old,) = server.app_pids()
    slow = fetch_in_thread(server, "/sleep?ms=3000")
    server.wait_log(rf"App {old} stdout: request GET /sleep\?ms=3000\n")
    touched = touch_restart(root)
    server.wait_log(r"Restarting drains \(blocking\)")
    server.wait_ready(2)
    (new,) = [pid for pid in server.app_pids() if pid != old]
    # Meanwhile other requests go to the new process; the old one is still running the slow one.
    for _ in range(3):
        reply = fetch(server.port, "/pid")
        assert reply.status == 200 and reply.pid == new, reply
    assert pid_exists(old), "the old process was stopped with a request in flight"
    assert f"app {old} got SIGTERM" not in server.log(), server.log()

    reply = slow()
    assert reply.status == 200 and reply.body == b"slept" and reply.pid == old, reply
    assert time.monotonic() - touched >= 2.0, "the slow request ended too early"
    server.wait_log(rf"App {old} stdout: app {old} got SIGTERM")
    wait_for(lambda: not pid_exists(old), 10, what=f"the old process {old} to exit")
    assert pid_exists(new)
    assert "of draining; answering them 504" not in server.log()


# 5. drain_timeout: a request still running when it passes gets 504; its process is stopped.

def test_drain_timeout_answers_504_to_a_request_still_running_and_stops_the_old_process(serve: Serve) -> None:
    root = app_root()
    server = serve(app_args(root, "impatient", f"{APP_PYTHON} life_app.py --announce-stop",
                            "--max-instances", "1", "--drain-timeout", "1"), ready=1)
    (old,) = server.app_pids()
    slow = fetch_in_thread(server, "/sleep?ms=5000")
    server.wait_log(rf"App {old} stdout: request GET /sleep\?ms=5000\n")
    touched = touch_restart(root)
    reply = slow()
    waited = time.monotonic() - touched
    assert reply.status == 504, reply
    assert reply.pid is None, "the 504 is the server's, not the app's"
    assert 0.8 <= waited < 2.5, f"504 {waited:.2f}s after the restart; expected about 1s (the drain timeout)"
    server.wait_log(rf"Process {old} of impatient still had 1 request\(s\) after 1(\.0)?s of draining; "
                    r"answering them 504 and stopping it")
    server.wait_log(rf"App {old} stdout: app {old} got SIGTERM")
    wait_for(lambda: not pid_exists(old), 10, what=f"the old process {old} to exit")
    after = fetch(server.port, "/pid")
    assert after.status == 200 and after.pid not in (old, None), after


# 6. resist_deployment_errors: a broken deploy leaves the old processes serving.

START_SCRIPT = """\
#!/bin/sh
# The deploy is broken while the file "broken" exists.
test -f broken && {{ echo "this version is broken" >&2; exit 1; }}
exec {python} echo_app.py --announce-stop
"""


def test_resist_deployment_errors_keeps_old_processes_until_a_fixed_deploy(serve: Serve) -> None:
    root = app_root()
    (root / "start.sh").write_text(START_SCRIPT.format(python=APP_PYTHON))
    os.chmod(root / "start.sh", 0o644)
    server = serve(app_args(root, "resistant", "sh start.sh", "--rolling-restarts", "--resist-deployment-errors",
                            "--min-instances", "2", "--max-instances", "2"), ready=2)
    old = server.app_pids()
    assert len(old) == 2

    (root / "broken").write_text("")
    os.chmod(root / "broken", 0o644)
    touch_restart(root)
    server.wait_log(r"Restarting resistant \(rolling\)")
    server.wait_log(r"Rolling restart of resistant stopped: a new process failed to start "
                    r"\(resist_deployment_errors\); 2 old process\(es\) keep serving")
    assert "this version is broken" in server.log()
    served: collections.Counter[int | None] = collections.Counter()
    for _ in range(10):
        reply = fetch(server.port, "/pid")
        assert reply.status == 200, reply
        served[reply.pid] += 1
    assert set(served) <= set(old), f"served by {served}, the old processes are {old}"
    assert all(pid_exists(pid) for pid in old)
    assert ready_pids(server, "resistant") == old, "a process of the broken version became ready"
    assert "got SIGTERM" not in server.log(), "an old process was stopped"

    # The fix is deployed: the next restart goes through.
    (root / "broken").unlink()
    touch_restart(root)
    server.wait_ready(4)
    wait_for(lambda: all_gone(old), 10, what=f"the old processes {old} to exit")
    new = [pid for pid in ready_pids(server, "resistant") if pid not in old]
    assert len(new) == 2, server.log()
    served = collections.Counter(fetch(server.port, "/pid").pid for _ in range(6))
    assert set(served) <= set(new), served
    assert server.log().count("Rolling restart of resistant stopped") == 1


# 7. Upgraded connections (WebSockets) on a restart.

class Tunnel:
    """An ``Upgrade: echo`` connection through the server to tests/apps/upgrade_app.py."""

    def __init__(self, server: Server) -> None:
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        self.sock.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        data = b""
        while b"welcome\n" not in data:
            chunk = self.sock.recv(65536)
            assert chunk, data
            data += chunk
        head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1")
        assert head.startswith("HTTP/1.1 101 "), head
        match = re.search(r"(?im)^x-pid: (\d+)\r?$", head)
        assert match, head
        self.pid = int(match.group(1))

    def echo(self, payload: bytes) -> bytes:
        self.sock.sendall(payload)
        got = b""
        while len(got) < len(payload):
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            got += chunk
        return got

    def wait_closed(self, timeout: float) -> float:
        """Seconds until the server closes the connection (fails if it stays open past ``timeout``)."""
        started = time.monotonic()
        self.sock.settimeout(timeout)
        try:
            while self.sock.recv(65536):
                pass
        except ConnectionResetError:
            pass
        return time.monotonic() - started

    def close(self) -> None:
        self.sock.close()


def upgrade_args(root: Path, name: str, *extra: str) -> list[str]:
    # One process: an upgraded connection keeps its process busy, which would grow the pool.
    return app_args(root, name, f"{APP_PYTHON} upgrade_app.py", "--drain-timeout", "30", "--max-instances", "1",
                    *extra)


def test_restart_aborts_an_upgraded_connection_of_the_old_process_at_once(serve: Serve) -> None:
    root = app_root()
    server = serve(upgrade_args(root, "sockets"), ready=1)
    (old,) = server.app_pids()
    tunnel = Tunnel(server)
    try:
        assert tunnel.pid == old
        assert tunnel.echo(b"before") == b"before"
        touched = touch_restart(root)
        tunnel.wait_closed(timeout=10)
        closed_after = time.monotonic() - touched
    finally:
        tunnel.close()
    assert closed_after < 5, f"the tunnel closed {closed_after:.1f}s after the restart (drain timeout 30s)"
    wait_for(lambda: not pid_exists(old), 10, what=f"the old process {old} to exit")
    server.wait_ready(2)
    fresh = Tunnel(server)
    try:
        assert fresh.pid != old and fresh.pid in server.app_pids()
        assert fresh.echo(b"after") == b"after"
    finally:
        fresh.close()


def test_no_abort_websockets_keeps_an_upgraded_connection_open_until_the_client_closes_it(serve: Serve) -> None:
    root = app_root()
    server = serve(upgrade_args(root, "patient", "--no-abort-websockets-on-process-shutdown"), ready=1)
    (old,) = server.app_pids()
    tunnel = Tunnel(server)
    try:
        assert tunnel.pid == old
        assert tunnel.echo(b"before") == b"before"
        touch_restart(root)
        server.wait_log(r"Restarting patient \(blocking\)")
        server.wait_ready(2)
        (new,) = [pid for pid in server.app_pids() if pid != old]
        fresh = Tunnel(server)
        try:
            assert fresh.pid == new, "a new connection went to the old process"
            assert fresh.echo(b"new") == b"new"
        finally:
            fresh.close()
        # The old connection lives on, and works, on its old process.
        for i in range(3):
            payload = b"still there %d" % i
            assert tunnel.echo(payload) == payload
        assert pid_exists(old)
    finally:
        tunnel.close()
    wait_for(lambda: not pid_exists(old), 10, what=f"the old process {old} to exit once its tunnel closed")
    assert pid_exists(new)


def test_no_abort_websockets_still_cuts_an_upgraded_connection_at_the_drain_timeout(serve: Serve) -> None:
    root = app_root()
    server = serve(upgrade_args(root, "bounded", "--no-abort-websockets-on-process-shutdown", "--drain-timeout", "1"),
                   ready=1)
    (old,) = server.app_pids()
    tunnel = Tunnel(server)
    try:
        assert tunnel.echo(b"before") == b"before"
        touched = touch_restart(root)
        server.wait_ready(2)
        assert tunnel.echo(b"during") == b"during", "the tunnel should outlive the restart itself"
        tunnel.wait_closed(timeout=10)
        closed_after = time.monotonic() - touched
    finally:
        tunnel.close()
    assert 0.8 <= closed_after < 3, f"the tunnel closed {closed_after:.2f}s after the restart; drain timeout 1s"
    wait_for(lambda: not pid_exists(old), 10, what=f"the old process {old} to exit")


# 8. tmp/always_restart.txt: a request restarts the app, at most once a second.

def test_always_restart_txt_serves_requests_a_second_apart_from_different_processes(serve: Serve) -> None:
    root = app_root()
    (root / "tmp" / "always_restart.txt").write_text("")
    server = serve(app_args(root, "always", f"{APP_PYTHON} echo_app.py"), ready=1)
    first = fetch(server.port, "/pid")
    assert first.status == 200 and first.pid is not None, first
    started = time.monotonic()  # the restart for the first request happened before this
    # Requests for a little more than a second: within the second no new restart,
    # so they go to the first one's process; the last comes after it.
    replies: list[tuple[float, Reply]] = []
    while time.monotonic() - started < 1.2:
        replies.append((time.monotonic() - started, fetch(server.port, "/pid")))
    assert all(reply.status == 200 for _, reply in replies), replies
    early = {reply.pid for at, reply in replies if at < 0.5}
    assert early == {first.pid}, f"requests within half a second of the first went to {early}, not {first.pid}"
    last = replies[-1][1]
    assert last.pid not in (first.pid, None), f"two requests 1.2s apart were both served by {first.pid}"
    restarts = server.log().count("tmp/always_restart.txt exists")
    assert 2 <= restarts <= 3, f"{restarts} restarts for {len(replies)} requests in about 1.2s"


# 9. SIGUSR2: a rolling restart of every app.

def test_sigusr2_restarts_every_app_rolling_under_load(serve: Serve, tmp_path: Path) -> None:
    root = app_root()
    command = f"{APP_PYTHON} echo_app.py --announce-stop"
    config = tmp_path / "passenger.toml"
    config.write_text(textwrap.dedent(f"""
        min_instances = 1
        max_instances = 1

        [[app]]
        name = "one"
        root = "{root}"
        start_command = "{command}"
        base_uri = "/one"

        [[app]]
        name = "two"
        root = "{root}"
        start_command = "{command}"
        base_uri = "/two"
        """))
    server = serve(["--config", str(config)], ready=2)
    old = server.app_pids()
    assert len(old) == 2
    assert server.proc is not None
    load = Load(server, paths=("/one/pid", "/two/pid")).start()
    try:
        load.serve_more(30)
        server.proc.send_signal(signal.SIGUSR2)
        server.wait_log(r"Restarting one \(rolling\): asked for every app")
        server.wait_log(r"Restarting two \(rolling\): asked for every app")
        server.wait_ready(4)
        wait_for(lambda: all_gone(old), 10, what=f"the old processes {old} to exit")
        after_restart = time.monotonic()
        load.serve_more(30)
    finally:
        hits = load.stop()
    assert_all_2xx(hits, server)
    log = server.log()
    for app in ("one", "two"):
        pids = spawned(server, app)
        assert len(pids) == 2, (app, pids, log)
        before, after = pids
        # Rolling: the new process was ready before the old one was told to stop.
        assert (position(log, rf"Process {after} of {app} is ready")
                < position(log, rf"App {before} stdout: app {before} got SIGTERM")), log
    late = {hit.pid for hit in hits if hit.started >= after_restart}
    assert late and not late & set(old), late
    assert server.proc.poll() is None, "SIGUSR2 stopped the server"



# 10. A restart.txt that does not exist yet, created by touch(1).

def test_touching_a_new_restart_txt_restarts_the_app_once(serve: Serve) -> None:
    root = app_root()
    restart_txt = root / "tmp" / "restart.txt"
    server = serve(app_args(root, "touched", f"{APP_PYTHON} echo_app.py", "--server-name", "app.test"), ready=1)
    touch = shutil.which("touch") or "/usr/bin/touch"

    def settled() -> None:
        """Every change seen: two round trips through the server after the touch ended (404: no app involved)."""
        for _ in range(2):
            connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
            try:
                connection.request("GET", "/", headers={"Host": "nobody.test"})
                assert connection.getresponse().status == 404
            finally:
                connection.close()

    # A race (does the server look before or after touch sets the times?), so try a few times.
    for attempt in range(30):
        restart_txt.unlink()
        settled()  # deleting it restarts nothing
        before = server.log().count("Restarting touched")
        subprocess.run([touch, str(restart_txt)], check=True)
        server.wait_log(r"Restarting touched \(blocking\)", count=before + 1)
        settled()
        restarts = server.log().count("Restarting touched") - before
        assert restarts == 1, f"touch #{attempt + 1} of a new restart.txt restarted the app {restarts} times"


# 11. stop_signal and shutdown_timeout when a restart stops the old process.

def test_restart_stops_the_old_process_with_the_stop_signal(serve: Serve) -> None:
    root = app_root()
    # The app ignores TERM: only INT (KeyboardInterrupt) stops it before the 10 s shutdown timeout.
    server = serve(app_args(root, "interrupted", f"{APP_PYTHON} life_app.py --ignore-term", "--max-instances", "1",
                            "--stop-signal", "INT", "--shutdown-timeout", "10"), ready=1)
    (old,) = server.app_pids()
    touched = touch_restart(root)
    server.wait_ready(2)
    wait_for(lambda: not pid_exists(old), 5, what=f"the old process {old} to exit on INT")
    assert time.monotonic() - touched < 3
    assert "sending KILL" not in server.log(), server.log()
    (new,) = [pid for pid in server.app_pids() if pid != old]
    assert fetch(server.port, "/pid").pid == new


def ignoring(signal_name: str) -> str:
    """A start command for life_app that ignores ``signal_name`` (SIG_IGN survives exec)."""
    return f"sh -c 'trap \"\" {signal_name}; exec {APP_PYTHON} life_app.py'"


def test_old_process_ignoring_its_stop_signal_is_killed_after_shutdown_timeout(serve: Serve) -> None:
    root = app_root()
    server = serve(app_args(root, "stubborn", ignoring("HUP"), "--max-instances", "1",
                            "--stop-signal", "HUP", "--shutdown-timeout", "1"), ready=1)
    (old,) = server.app_pids()
    touched = touch_restart(root)
    server.wait_ready(2)
    (new,) = [pid for pid in server.app_pids() if pid != old]
    assert fetch(server.port, "/pid").pid == new, "the new process should serve while the old one is stopping"
    assert pid_exists(old)
    wait_for(lambda: not pid_exists(old), 10, what=f"the old process {old} to be killed")
    took = time.monotonic() - touched
    assert 0.9 <= took < 4, f"the old process was gone {took:.2f}s after the restart; expected about 1 s"
    server.wait_log(rf"App {old} \(stubborn\) ignored \S+ for 1(\.0)?s; sending KILL")


def test_kill_warning_names_the_stop_signal_that_was_ignored(serve: Serve) -> None:
    root = app_root()
    server = serve(app_args(root, "stubborn", ignoring("HUP"), "--max-instances", "1",
                            "--stop-signal", "HUP", "--shutdown-timeout", "0.5"), ready=1)
    (old,) = server.app_pids()
    touch_restart(root)
    line = server.wait_log(rf"App {old} \(stubborn\) ignored \S+ for [\d.]+s; sending KILL")[0].group(0)
    assert "ignored HUP" in line, line


def test_restart_with_stop_signal_usr1_stops_the_old_process_and_starts_a_new_one(serve: Serve) -> None:
    root = app_root()
    # echo_app does not handle USR1: the default action ends it.
    server = serve(app_args(root, "usr1", f"{APP_PYTHON} echo_app.py", "--max-instances", "1",
                            "--stop-signal", "USR1", "--shutdown-timeout", "1"), ready=1)
    (old,) = server.app_pids()
    touch_restart(root)
    server.wait_log(r"Restarting usr1 \(blocking\)")
    wait_for(lambda: not pid_exists(old), 3, what=f"the old process {old} to exit on USR1 (or be killed)")
    server.wait_ready(2, timeout=3)
    assert "Unhandled Error" not in server.log(), server.log()



# 12. restart_dir: where restart.txt is watched (relative: to the app root).

def deploy_dir(root: Path) -> Path:
    deploy = root / "deploy"
    deploy.mkdir()
    os.chmod(deploy, 0o755)
    (deploy / "restart.txt").write_text("")
    os.utime(deploy / "restart.txt", (time.time() - 3600,) * 2)
    return deploy


def test_restart_dir_on_the_command_line_is_relative_to_the_app_root(serve: Serve) -> None:
    root = app_root()
    deploy = deploy_dir(root)
    server = serve(app_args(root, "moved", f"{APP_PYTHON} echo_app.py", "--restart-dir", "deploy"), ready=1)
    (old,) = server.app_pids()
    touch_restart(root)  # tmp/restart.txt is not watched any more
    os.utime(deploy / "restart.txt")
    server.wait_log(rf"Restarting moved \(blocking\): {re.escape(str(deploy))}/restart.txt was touched")
    server.wait_ready(2)
    wait_for(lambda: not pid_exists(old), 10, what=f"the old process {old} to exit")
    assert server.log().count("Restarting moved") == 1, server.log()


def test_restart_dir_in_a_config_file_is_relative_to_the_app_root(serve: Serve, tmp_path: Path) -> None:
    root = app_root()
    deploy = deploy_dir(root)
    config = tmp_path / "passenger.toml"
    config.write_text(textwrap.dedent(f"""
        [[app]]
        name = "moved"
        root = "{root}"
        start_command = "{APP_PYTHON} echo_app.py"
        restart_dir = "deploy"
        """))
    server = serve(["--config", str(config)], ready=1)
    os.utime(deploy / "restart.txt")
    # Seen at once through inotify, and within a second by the stat poll in any case.
    server.wait_log(r"Restarting moved \(blocking\): \S+/deploy/restart.txt was touched", timeout=3)

"""Several apps in one server, and the pool's limits, through the real ``twistd -n passenger``.

Each test writes a TOML ``--config`` file (or gives options) as a user would,
starts the server with real app processes (tests/apps/echo_app.py and
life_app.py) and drives it over loopback with plain HTTP clients:

1. routing by Host (``server_names``, wildcards) and by path (``base_uri``), and
   the command line overriding the file;
2. ``concurrency = 1``: one request per process at a time, at full rate;
3. recycling with ``max_requests`` under load;
4. eviction of another app's idle process when the pool is full;
5. ``max_request_queue_time`` and 6. ``max_request_time`` (504s);
7. sticky sessions.

Synchronisation never sleeps: tests wait (with a deadline) for a log line, for
life_app to report that it has a request, or for a process to be gone.
"""

from __future__ import annotations

import collections
import http.client
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.integration.config_files import q, spawned_by_app, write_toml
from tests.integration.conftest import (
    APPS,
    ECHO_APP,
    LIFE_APP,
    NOT_FOUND_DETAIL,
    RawRequest,
    Reply,
    Server,
    fetch,
    life_app_args,
    pid_exists,
    wait_for,
)

Serve = Callable[..., Server]



# Small helpers.

def listening(server: Server) -> Server:
    """A server started with ready=0 once it accepts connections."""
    server.wait_log(r"passenger \S+ serving")
    return server


# 1. Several apps from a config file: routing by Host and by path prefix.

def test_config_file_apps_routed_by_host_and_wildcard(serve: Serve, tmp_path: Path) -> None:
    # One process each: an app of unknown concurrency grows when its process is busy.
    config = write_toml(tmp_path, f"""
        min_instances = 1
        max_instances = 1

        [[app]]
        name = "alpha"
        root = {q(APPS)}
        start_command = {q(ECHO_APP)}
        server_names = ["alpha.test", "www.alpha.test"]
        envvars = {{ GREETING = "hello from alpha" }}

        [[app]]
        name = "wild"
        root = {q(APPS)}
        start_command = {q(ECHO_APP)}
        server_names = ["*.example.test"]
        envvars = {{ GREETING = "hello from wild" }}
        """)
    server = serve(["--config", str(config)], ready=2)
    pids = spawned_by_app(server.log())
    assert sorted(pids) == ["alpha", "wild"] and all(len(p) == 1 for p in pids.values()), pids

    cases = [
        ("alpha.test", "alpha"),
        ("ALPHA.Test", "alpha"),  # host names are case-insensitive
        (f"alpha.test:{server.port}", "alpha"),  # the port is not part of the name
        ("www.alpha.test", "alpha"),
        ("shop.example.test", "wild"),
        ("a.b.example.test", "wild"),
        (f"shop.example.test:{server.port}", "wild"),
    ]
    for host, app in cases:
        reply = fetch(server.port, "/echo?from=" + host, host=host)
        assert reply.status == 200, (host, reply)
        info = reply.json()
        env = info["env"]
        assert isinstance(env, dict)
        assert env.get("GREETING") == f"hello from {app}", (host, info)
        assert info["path"] == "/echo?from=" + host
        assert reply.pid in pids[app], (host, reply.pid, pids)
        assert ("Host", host) in [tuple(pair) for pair in info["headers"]]  # type: ignore[union-attr]

    # No app answers these hosts: the server's own 404 page, no app involved.
    for host in ("other.test", "example.test", "alpha.test.evil", "xalpha.test"):
        reply = fetch(server.port, "/echo", host=host)
        assert reply.status == 404, (host, reply)
        assert NOT_FOUND_DETAIL in reply.body, reply.body
        assert reply.pid is None, f"an app answered {host}: {reply}"
        assert reply.headers["content-type"].startswith("text/html")
    assert spawned_by_app(server.log()) == pids, "a request for an unknown host spawned a process"


def test_config_file_apps_routed_by_base_uri_and_command_line_overrides_file(serve: Serve, tmp_path: Path) -> None:
    config = write_toml(tmp_path, f"""
        min_instances = 1
        max_pool_size = 3

        [[app]]
        name = "site"
        root = {q(APPS)}
        start_command = {q(ECHO_APP)}
        envvars = {{ GREETING = "site" }}

        [[app]]
        name = "api"
        root = {q(APPS)}
        start_command = {q(ECHO_APP)}
        base_uri = "/api"
        min_instances = 1
        envvars = {{ GREETING = "api" }}
        """)
    # The command line wins over the file's top level and over its [[app]] tables:
    # two processes each (the file says one), which needs a pool of 4 (the file says 3).
    server = serve(["--config", str(config), "--min-instances", "2", "--max-pool-size", "4"], ready=4)
    pids = spawned_by_app(server.log())
    assert {app: len(p) for app, p in pids.items()} == {"site": 2, "api": 2}, pids

    site = fetch(server.port, "/echo")
    assert site.status == 200 and site.pid in pids["site"], site
    env = site.json()["env"]
    assert isinstance(env, dict)
    assert env.get("GREETING") == "site"
    assert "PASSENGER_BASE_URI" not in env, env

    api = fetch(server.port, "/api/echo?x=1")
    assert api.status == 200 and api.pid in pids["api"], api
    info = api.json()
    env = info["env"]
    assert isinstance(env, dict)
    assert env.get("GREETING") == "api"
    assert env.get("PASSENGER_BASE_URI") == "/api", env
    assert info["path"] == "/api/echo?x=1", "the app gets the whole path, base URI included"

    # Prefixes match on a segment boundary; everything else is the site's.
    for path, app in [("/api", "api"), ("/api/", "api"), ("/api?q=1", "api"), ("/api/v1/things", "api"),
                      ("/", "site"), ("/apis", "site"), ("/apiary/x", "site"), ("/other/api", "site")]:
        reply = fetch(server.port, path)
        assert reply.status == 200, (path, reply)
        assert reply.pid in pids[app], (path, app, reply.pid, pids)


# 2. Concurrency 1: never two requests at once on a process, at full rate.

@dataclass
class Timed:
    status: int
    pid: int
    in_flight: int
    started: float
    finished: float


def burst(server: Server, count: int, path: str) -> list[Timed]:
    """``count`` requests sent at the same moment, each on its own connection (opened beforehand)."""
    connections = [http.client.HTTPConnection("127.0.0.1", server.port, timeout=20) for _ in range(count)]
    for connection in connections:
        connection.connect()
    barrier = threading.Barrier(count)
    results: list[Timed | BaseException | None] = [None] * count

    def run(index: int) -> None:
        connection = connections[index]
        try:
            barrier.wait(10)
            started = time.perf_counter()
            connection.request("GET", path)
            response = connection.getresponse()
            response.read()
            finished = time.perf_counter()
            results[index] = Timed(response.status, int(response.getheader("X-Pid") or 0),
                                   int(response.getheader("X-In-Flight") or 0), started, finished)
        except BaseException as e:  # handed to the test thread
            results[index] = e
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    failures = [r for r in results if not isinstance(r, Timed)]
    assert not failures, failures
    return results  # type: ignore[return-value]


def test_concurrency_one_two_processes_serve_a_burst_one_at_a_time_at_full_rate(serve: Serve, tmp_path: Path) -> None:
    # echo_app is threaded, so if the server ever sent a process a second request
    # while it had one, the app would see it (X-In-Flight: 2) instead of hiding it
    # in its accept queue.
    config = write_toml(tmp_path, f"""
        max_pool_size = 2

        [[app]]
        name = "blocking"
        root = {q(APPS)}
        start_command = {q(ECHO_APP)}
        concurrency = 1
        min_instances = 2
        """)
    server = serve(["--config", str(config)], ready=2)
    pids = set(server.app_pids())
    assert len(pids) == 2
    burst(server, 2, "/sleep?ms=1")  # warm-up: each process has served once

    count, sleep_ms, processes = 20, 50, 2
    ideal_rate = processes * 1000 / sleep_ms  # 40 requests/s
    # The rate is what the server can do: noise on a shared machine only slows a
    # burst down, so the best of three bursts measures it (every burst is checked).
    ratio, span = 0.0, 0.0
    for _ in range(3):
        results = burst(server, count, f"/sleep?ms={sleep_ms}")
        assert [r.status for r in results] == [200] * count, results
        assert {r.pid for r in results} == pids, "both processes should have served"
        overlapping = [r for r in results if r.in_flight != 1]
        assert not overlapping, f"a process had more than one request at a time: {overlapping}"
        per_process = collections.Counter(r.pid for r in results)
        this_span = max(r.finished for r in results) - min(r.started for r in results)
        this_ratio = count / this_span / ideal_rate
        print(f"\nconcurrency 1 x {processes} processes, {count} x /sleep?ms={sleep_ms}: {this_span * 1000:.0f} ms "
              f"(ideal {count / ideal_rate * 1000:.0f} ms) = {this_ratio:.1%} of the ideal rate; "
              f"requests per process {dict(per_process)}")
        if this_ratio > ratio:
            ratio, span = this_ratio, this_span
        if ratio >= 0.95:
            break
    assert len(server.app_pids()) == 2, "max_pool_size 2: no process beyond the two"
    assert ratio >= 0.95, f"achieved {ratio:.1%} of the ideal rate ({span * 1000:.0f} ms for {count} requests)"


# 3. Recycling with max_requests under load.

def test_max_requests_recycles_processes_under_load_without_failures(serve: Serve, tmp_path: Path) -> None:
    config = write_toml(tmp_path, f"""
        max_requests = 5

        [[app]]
        name = "recycled"
        root = {q(APPS)}
        start_command = {q(ECHO_APP)}
        """)
    server = serve(["--config", str(config)], ready=1)
    threads_count, total, limit = 4, 60, 5
    todo = iter(range(total))
    lock = threading.Lock()
    served: list[int] = []
    failures: list[str] = []

    def worker() -> None:
        while True:
            with lock:
                number = next(todo, None)
            if number is None:
                return
            try:
                reply = fetch(server.port, f"/pid?n={number}")
            except OSError as e:
                with lock:
                    failures.append(f"request {number}: {e!r}")
                continue
            with lock:
                if reply.status == 200 and reply.pid is not None and reply.body == str(reply.pid).encode():
                    served.append(reply.pid)
                else:
                    failures.append(f"request {number}: {reply}")

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not failures, failures
    assert len(served) == total
    per_process = collections.Counter(served)
    assert len(per_process) > 1, f"one process served everything: {per_process}"
    # A process leaves after its 5th request; requests already on it may still finish there.
    assert max(per_process.values()) <= limit + threads_count - 1, per_process
    assert len(per_process) >= total // (limit + threads_count - 1)

    replaced = [int(pid) for pid in re.findall(
        r"Process (\d+) of recycled served \d+ requests \(max_requests\); replacing it", server.log())]
    assert replaced, server.log()
    assert set(replaced) <= set(server.app_pids())
    wait_for(lambda: not any(pid_exists(pid) for pid in replaced), 10, what="the recycled processes to exit")


# 4. Eviction: a full pool makes room for another app by stopping an idle process.

def test_full_pool_evicts_another_apps_idle_process(serve: Serve, tmp_path: Path) -> None:
    config = write_toml(tmp_path, f"""
        max_pool_size = 1
        min_instances = 0

        [[app]]
        name = "aaa"
        root = {q(APPS)}
        start_command = {q(ECHO_APP)}
        base_uri = "/a"

        [[app]]
        name = "bbb"
        root = {q(APPS)}
        start_command = {q(ECHO_APP)}
        base_uri = "/b"
        """)
    server = listening(serve(["--config", str(config)], ready=0))
    assert server.app_pids() == []  # min_instances 0: nothing until a request comes

    first = fetch(server.port, "/a/pid")
    assert first.status == 200, first
    a_pid = first.pid
    assert a_pid is not None and spawned_by_app(server.log()) == {"aaa": [a_pid]}
    assert fetch(server.port, "/a/pid").pid == a_pid  # its process stays while nobody needs the room

    second = fetch(server.port, "/b/pid")
    assert second.status == 200, second
    b_pid = second.pid
    assert b_pid is not None and b_pid != a_pid
    assert spawned_by_app(server.log()) == {"aaa": [a_pid], "bbb": [b_pid]}
    server.wait_log(rf"Stopping idle process {a_pid} of aaa to make room for another app")
    wait_for(lambda: not pid_exists(a_pid), 10, what=f"aaa's process {a_pid} to exit")
    log = server.log()
    assert log.index(f"Stopping idle process {a_pid} of aaa") < log.index(f"Spawning process {b_pid} of bbb")

    # And back: bbb's idle process makes room for a new one of aaa.
    third = fetch(server.port, "/a/pid")
    assert third.status == 200 and third.pid not in (a_pid, b_pid, None), third
    server.wait_log(rf"Stopping idle process {b_pid} of bbb to make room for another app")
    wait_for(lambda: not pid_exists(b_pid), 10, what=f"bbb's process {b_pid} to exit")
    assert len(server.app_pids()) == 3


# 5. max_request_queue_time: a request that waits too long gets 504.

def test_request_waiting_longer_than_max_request_queue_time_gets_504(serve: Serve) -> None:
    server = serve(life_app_args("--concurrency", "1", "--max-pool-size", "1", "--max-request-queue-time", "0.5"),
                   ready=1)
    (pid,) = server.app_pids()
    holder = RawRequest(server.port, "/sleep?ms=3000")
    server.wait_log(rf"App {pid} stdout: request GET /sleep\?ms=3000\n")

    waiter = RawRequest(server.port, "/pid?queued")
    reply = waiter.response(timeout=5)
    assert reply.status == 504, reply
    assert b"waited too long" in reply.body, reply.body
    assert 0.45 <= reply.elapsed < 1.5, f"504 after {reply.elapsed:.3f}s, expected about 0.5s"
    server.wait_log(r"1 request\(s\) waited longer than 0.5s for a process of \S+; answering 504")
    assert "request GET /pid?queued" not in server.log(), "the timed-out request still reached the app"
    assert server.app_pids() == [pid], "max_pool_size 1: no other process"

    # The client holding the process leaves: the process serves again at once.
    holder.close()
    wait_for(holder.server_let_go, 5, what="the server to let go of the holding request")
    after = fetch(server.port, "/pid?after")
    assert after.status == 200 and after.pid == pid, after
    assert after.elapsed < 0.5, after


# 6. max_request_time: a request that runs too long gets 504, and its process is replaced.

def test_request_running_longer_than_max_request_time_gets_504_and_process_is_replaced(serve: Serve) -> None:
    server = serve(life_app_args("--max-request-time", "0.5"), ready=1)
    (old,) = server.app_pids()
    reply = RawRequest(server.port, "/sleep?ms=5000").response(timeout=5)
    assert reply.status == 504, reply
    assert 0.45 <= reply.elapsed < 2.0, f"504 after {reply.elapsed:.3f}s, expected about 0.5s"
    assert b"max_request_time" in reply.body, reply.body
    server.wait_log(rf"A request on process {old} of \S+ ran longer than 0.5s \(max_request_time\); "
                    r"replacing the process")
    wait_for(lambda: not pid_exists(old), 10, what=f"the stuck process {old} to exit")

    server.wait_ready(2)
    (new,) = [pid for pid in server.app_pids() if pid != old]
    after = fetch(server.port, "/pid")
    assert after.status == 200 and after.pid == new, (after, old, new)


# 7. Sticky sessions.

COOKIE = re.compile(r"^_passenger_route=(\d+); Path=/; SameSite=Lax; Secure;$")


def route_id(set_cookie: str) -> str:
    """The sticky-session cookie's value (the process's id), checking the whole header."""
    match = COOKIE.match(set_cookie)
    assert match, f"not the sticky-session cookie: {set_cookie!r}"
    return match.group(1)


def route_cookie(reply: Reply) -> str:
    assert len(reply.cookies) == 1, reply
    return route_id(reply.cookies[0])


def test_sticky_sessions_send_a_client_back_to_its_process(serve: Serve, tmp_path: Path) -> None:
    config = write_toml(tmp_path, f"""
        max_pool_size = 2

        [[app]]
        name = "sticky"
        root = {q(APPS)}
        start_command = {q(LIFE_APP)}
        sticky_sessions = true
        min_instances = 2
        """)
    server = serve(["--config", str(config)], ready=2)
    pids = set(server.app_pids())
    cookie_of: dict[int, str] = {}

    first = fetch(server.port, "/pid")
    assert first.status == 200 and first.pid in pids, first
    cookie_of[first.pid] = route_cookie(first)

    # To get the other process's cookie, keep the first busy: the least busy one is the other.
    holder = RawRequest(server.port, "/sleep?ms=700")
    busy = int(server.wait_log(r"App (\d+) stdout: request GET /sleep\?ms=700\n")[0].group(1))
    other = fetch(server.port, "/pid")
    assert other.status == 200 and other.pid in pids - {busy}, (other, busy)
    cookie_of[other.pid] = route_cookie(other)
    held = holder.response()
    assert held.status == 200 and int(held.headers["x-pid"]) == busy, held
    cookie_of[busy] = route_id(held.headers["set-cookie"])
    assert set(cookie_of) == pids and len(set(cookie_of.values())) == 2, cookie_of

    # Both processes are idle now; each cookie brings its client back to its process, every time.
    for pid, cookie in cookie_of.items():
        for i in range(8):
            reply = fetch(server.port, f"/pid?{i}", headers={"Cookie": f"theme=dark; _passenger_route={cookie}; x=y"})
            assert reply.status == 200, reply
            assert reply.pid == pid, f"request {i} with the cookie of {pid} went to {reply.pid}"
            assert route_cookie(reply) == cookie

    # Without the cookie (or with an unknown one) any process may answer, and says which it was.
    for headers in ({}, {"Cookie": "_passenger_route=12345"}, {"Cookie": "_passenger_route=garbage"}):
        reply = fetch(server.port, "/pid", headers=headers)
        assert reply.status == 200 and reply.pid in pids, reply
        assert route_cookie(reply) == cookie_of[reply.pid]
    assert set(server.app_pids()) == pids


# 8. Memory limit and idle time, end to end (real RSS read by psutil; the real clock).

def test_a_process_above_its_memory_limit_is_replaced(serve: Serve, tmp_path: Path) -> None:
    config = write_toml(tmp_path, f"""
        [[app]]
        name = "hungry"
        root = {q(APPS)}
        start_command = {q(ECHO_APP)}
        memory_limit = 80
        """)
    server = serve(["--config", str(config)], ready=1)
    [first] = server.app_pids()
    assert fetch(server.port, "/alloc?mb=150").status == 200
    server.wait_log(rf"Process {first} of hungry uses \d+ MB, above its memory_limit of 80 MB; replacing it",
                    timeout=15)
    wait_for(lambda: not pid_exists(first), timeout=15, what=f"process {first} to exit")
    reply = fetch(server.port, "/pid")
    assert reply.status == 200 and int(reply.body) != first


def test_processes_idle_for_pool_idle_time_stop_down_to_min_instances(serve: Serve, tmp_path: Path) -> None:
    config = write_toml(tmp_path, f"""
        [[app]]
        name = "idler"
        root = {q(APPS)}
        start_command = {q(ECHO_APP)}
        min_instances = 1
        concurrency = 1
        pool_idle_time = 1
        """)
    server = serve(["--config", str(config)], ready=1)
    burst(server, 3, "/sleep?ms=300")  # three at once, one each: the pool grows past min_instances
    grown = spawned_by_app(server.log())["idler"]
    assert len(grown) >= 3
    server.wait_log(r"was idle for \d+s \(pool_idle_time\); stopping it", count=len(grown) - 1, timeout=15)
    wait_for(lambda: sum(pid_exists(pid) for pid in grown) == 1, timeout=15, what="all but one to exit")
    assert fetch(server.port, "/pid").status == 200

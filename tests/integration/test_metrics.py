"""Prometheus metrics at ``/metrics`` of a real server, checked against a load we generate.

Each test scrapes before and after what it does and checks the difference, so
the tests that share the module's server do not depend on each other's order.
Scrapes are parsed with prometheus_client's own parser.
"""

from __future__ import annotations

import http.client
import re
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest

from tests.integration.conftest import APPS, RawRequest, Server, echo_app_args, start_server, wait_for, world_dir
from tests.integration.test_admin_api import APP, Admin, app_get, find_instance, pool_pids, unix_admin

Serve = Callable[..., Server]
A = f'app="{APP}"'
LATENCY = "passenger_request_duration_seconds"
QUEUE_TIME = "passenger_request_queue_seconds"
SPAWN_TIME = "passenger_spawn_duration_seconds"


def requests(status: int) -> str:
    return f'passenger_requests_total{{{A},status="{status}"}}'


def bucket(histogram: str, le: str) -> str:
    return f'{histogram}_bucket{{{A},le="{le}"}}'


def count(histogram: str) -> str:
    return f"{histogram}_count{{{A}}}"


def delta(before: dict[str, float], after: dict[str, float], key: str) -> float:
    return after.get(key, 0.0) - before.get(key, 0.0)


def processes(scrape: dict[str, float], state: str) -> float:
    return scrape[f'passenger_processes{{{A},state="{state}"}}']


def process_total(scrape: dict[str, float]) -> float:
    return sum(processes(scrape, state) for state in ("spawning", "idle", "busy", "draining"))


@pytest.fixture(scope="module")
def metered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Admin]]:
    registry = world_dir("registry", 0o755)
    server = start_server(tmp_path_factory.mktemp("metrics"), echo_app_args(
        "--max-instances", "1", "--instance-registry-dir", str(registry)))
    try:
        yield server, Admin(str(find_instance(registry, server) / "agents.s" / "core_api"))
    finally:
        try:
            server.stop(timeout=15)
        finally:
            server.kill()


def test_a_scrape_is_valid_prometheus_text(metered: tuple[Server, Admin]) -> None:
    _, admin = metered
    reply = admin.get("/metrics")
    assert reply.status == 200
    assert reply.headers["content-type"].startswith("text/plain; version=")
    text = reply.body.decode()
    assert "# TYPE passenger_requests_total counter" in text
    assert f"# TYPE {LATENCY} histogram" in text
    assert "# TYPE passenger_processes gauge" in text
    scrape = admin.metrics()
    for name in ("passenger_open_connections{}", "passenger_pool_capacity_used{}", "passenger_pool_max{}",
                 f"passenger_spawns_total{{{A}}}", f"passenger_spawn_failures_total{{{A}}}",
                 f"passenger_restarts_total{{{A}}}", f"passenger_upstream_errors_total{{{A}}}",
                 f"passenger_queue_full_total{{{A}}}", f"passenger_request_queue_length{{{A}}}"):
        assert name in scrape, name
    assert scrape["passenger_pool_max{}"] == 6


def test_requests_by_status_and_latency(metered: tuple[Server, Admin]) -> None:
    server, admin = metered
    before = admin.metrics()
    for _ in range(30):
        assert app_get(server, "/pid")[0] == 200
    for _ in range(5):
        assert app_get(server, "/status?code=404")[0] == 404
    for _ in range(3):
        assert app_get(server, "/sleep?ms=100") == (200, b"slept")
    after = admin.metrics()

    assert after[requests(200)] >= 33
    assert delta(before, after, requests(200)) == 33
    assert delta(before, after, requests(404)) == 5
    assert delta(before, after, count(LATENCY)) == 38
    assert delta(before, after, bucket(LATENCY, "+Inf")) == 38
    # The three sleeps took over 0.1 s: above the 0.1 bucket (le is "at or below").
    slow = delta(before, after, bucket(LATENCY, "+Inf")) - delta(before, after, bucket(LATENCY, "0.1"))
    assert 3 <= slow <= 5
    assert delta(before, after, bucket(LATENCY, "0.1")) >= 33
    assert delta(before, after, f"{LATENCY}_sum{{{A}}}") >= 0.3
    # Every request went to a process: each waited (if only a moment) in the queue.
    assert delta(before, after, count(QUEUE_TIME)) == 38


def test_histogram_buckets_are_cumulative(metered: tuple[Server, Admin]) -> None:
    server, admin = metered
    assert app_get(server, "/pid")[0] == 200
    scrape = admin.metrics()
    ready = ',outcome="ready"'  # labels come sorted: app, le, outcome
    for histogram, after in ((LATENCY, ""), (QUEUE_TIME, ""), (SPAWN_TIME, ready)):
        buckets = sorted(((float(m.group(1)), value) for key, value in scrape.items()
                          if (m := re.fullmatch(rf'{histogram}_bucket\{{{A},le="([^"]+)"{after}\}}', key))))
        assert len(buckets) >= 9, histogram
        counts = [value for _, value in buckets]
        assert counts == sorted(counts), histogram
        assert buckets[-1][0] == float("inf") and counts[-1] == scrape[f"{histogram}_count{{{A}{after}}}"], histogram
    assert scrape[f"{SPAWN_TIME}_count{{{A}{ready}}}"] >= 1
    assert scrape[f'{SPAWN_TIME}_count{{{A},outcome="failed"}}'] == 0


def test_processes_by_state_sum_to_the_process_count(metered: tuple[Server, Admin]) -> None:
    _, admin = metered
    scrape = admin.metrics()
    pool = admin.pool()
    assert process_total(scrape) == pool["process_count"] == 1
    assert processes(scrape, "idle") == 1
    assert processes(scrape, "busy") == processes(scrape, "draining") == processes(scrape, "spawning") == 0
    assert scrape["passenger_pool_capacity_used{}"] == pool["capacity_used"] == 1
    assert scrape[f"passenger_spawns_total{{{A}}}"] >= 1
    assert scrape[f"passenger_spawn_failures_total{{{A}}}"] == 0


def test_a_busy_process_and_open_connections(metered: tuple[Server, Admin]) -> None:
    server, admin = metered
    before = admin.metrics()["passenger_open_connections{}"]
    kept = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    sleeper = RawRequest(server.port, "/sleep?ms=1000")
    try:
        kept.request("GET", "/pid")
        assert kept.getresponse().read().isdigit()  # a kept-alive connection, idle now

        def busy() -> dict[str, float] | None:
            scrape = admin.metrics()
            return scrape if processes(scrape, "busy") == 1 else None

        scrape = wait_for(busy, 5, what="the process busy in passenger_processes")
        assert processes(scrape, "idle") == 0
        assert process_total(scrape) == 1
        assert scrape["passenger_open_connections{}"] >= before + 2
        assert sleeper.response(10).status == 200
    finally:
        sleeper.close()
        kept.close()
    wait_for(lambda: processes(admin.metrics(), "idle") == 1, 5, what="the process idle again")
    wait_for(lambda: admin.metrics()["passenger_open_connections{}"] <= before, 5,
             what="the connections closed in passenger_open_connections")


def test_a_crash_is_an_upstream_error_and_a_respawn(serve: Serve) -> None:
    registry = world_dir("registry", 0o755)
    server = serve(echo_app_args("--instance-registry-dir", str(registry)))
    admin = unix_admin(registry, server)
    [old] = pool_pids(admin)
    before = admin.metrics()
    status, _ = app_get(server, "/exit")
    assert status == 502
    wait_for(lambda: (pids := pool_pids(admin)) and old not in pids, 15, what="a process instead of the one that exited")
    after = admin.metrics()
    assert delta(before, after, f"passenger_upstream_errors_total{{{A}}}") == 1
    assert delta(before, after, requests(502)) == 1
    assert delta(before, after, f"passenger_spawns_total{{{A}}}") == 1
    assert delta(before, after, f"passenger_spawn_failures_total{{{A}}}") == 0
    assert process_total(after) == after["passenger_pool_capacity_used{}"] == 1


def test_restarts_are_counted(serve: Serve) -> None:
    registry = world_dir("registry", 0o755)
    server = serve(echo_app_args("--instance-registry-dir", str(registry)))
    admin = unix_admin(registry, server)
    [old] = pool_pids(admin)
    assert admin.metrics()[f"passenger_restarts_total{{{A}}}"] == 0
    assert admin.post("/pool/restart_app_group.json", {"name": APP}).status == 200
    wait_for(lambda: (pids := pool_pids(admin)) and old not in pids, 15, what="the restarted process")
    scrape = admin.metrics()
    assert scrape[f"passenger_restarts_total{{{A}}}"] == 1
    assert scrape[f"passenger_spawns_total{{{A}}}"] == 2


def test_spawn_failures_are_counted(serve: Serve) -> None:
    registry = world_dir("registry", 0o755)
    server = serve(["--app-root", str(APPS), "--app-start-command", "sh -c 'exit 3'",
                    "--instance-registry-dir", str(registry)], ready=0)
    server.wait_log(r"Could not spawn process for application")
    admin = unix_admin(registry, server)
    scrape = admin.metrics()
    assert scrape[f"passenger_spawn_failures_total{{{A}}}"] >= 1
    assert scrape[f'{SPAWN_TIME}_count{{{A},outcome="failed"}}'] >= 1, "how long the failed spawns took"
    assert process_total(scrape) == scrape["passenger_pool_capacity_used{}"]
    # A request gets the spawn error (and is counted with its status).
    before = admin.metrics()
    status, _ = app_get(server, "/pid")
    assert status == 500
    after = admin.metrics()
    assert delta(before, after, requests(500)) == 1
    assert after[f"passenger_spawn_failures_total{{{A}}}"] >= before[f"passenger_spawn_failures_total{{{A}}}"]
    group = admin.pool()["groups"][0]
    assert group["spawn_failures"] == after[f"passenger_spawn_failures_total{{{A}}}"]
    assert group["last_spawn_error"]["error_id"] in re.findall(r"Error ID: ([^;\]\s]+)", server.log())


def test_queue_length_and_queue_full(serve: Serve) -> None:
    registry = world_dir("registry", 0o755)
    server = serve(echo_app_args("--instance-registry-dir", str(registry), "--concurrency", "1", "--max-pool-size", "1",
                                 "--max-instances", "1", "--max-request-queue-size", "1"))
    admin = unix_admin(registry, server)
    before = admin.metrics()
    assert before[f"passenger_request_queue_length{{{A}}}"] == 0
    holder = RawRequest(server.port, "/sleep?ms=1500")
    waiter = None
    try:
        wait_for(lambda: processes(admin.metrics(), "busy") == 1, 5, what="the process busy")
        waiter = RawRequest(server.port, "/pid")
        queued = wait_for(lambda: (s := admin.metrics())[f"passenger_request_queue_length{{{A}}}"] == 1 and s, 5,
                          what="passenger_request_queue_length 1")
        assert queued[f"passenger_queue_full_total{{{A}}}"] == 0
        assert admin.pool()["groups"][0]["get_wait_list_size"] == 1
        # The queue holds one: the next request is refused at once.
        refused = RawRequest(server.port, "/pid").response(5)
        assert refused.status == 503
        assert refused.elapsed < 1.0
        full = admin.metrics()
        assert delta(before, full, f"passenger_queue_full_total{{{A}}}") == 1
        assert delta(before, full, requests(503)) == 1
        assert full[f"passenger_request_queue_length{{{A}}}"] == 1
        assert holder.response(10).status == 200
        answer = waiter.response(10)
        assert answer.status == 200
    finally:
        holder.close()
        if waiter is not None:
            waiter.close()
    after = admin.metrics()
    assert after[f"passenger_request_queue_length{{{A}}}"] == 0
    # The waiting request spent about the rest of the 1.5 s sleep in the queue.
    assert delta(before, after, count(QUEUE_TIME)) == 2
    waited_long = delta(before, after, bucket(QUEUE_TIME, "+Inf")) - delta(before, after, bucket(QUEUE_TIME, "0.25"))
    assert waited_long == 1
    assert delta(before, after, requests(200)) == 2


@pytest.mark.parametrize(("admin_listen", "loaded"), [([], False), (["tcp:0:interface=127.0.0.1"], True)])
def test_prometheus_client_is_loaded_at_start_only_with_admin_listen(admin_listen: list[str], loaded: bool) -> None:
    """With --admin-listen, something will scrape: its first scrape must not stop the reactor for an import."""
    code = ("import sys; from passenger.embed import PassengerService, load_config; "
            "service = PassengerService(load_config(app_root=sys.argv[1], app_start_command='x', listen=[], "
            "admin_listen=sys.argv[2:])); service._build(); print('prometheus_client' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code, str(APPS), *admin_listen], capture_output=True, text=True,
                            timeout=60)
    assert (result.returncode, result.stdout) == (0, f"{loaded}\n"), result

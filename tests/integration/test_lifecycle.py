"""App processes over their whole life, through the real ``twistd -n passenger``.

Death and replacement, requests caught by a death, graceful shutdown, apps that
ignore TERM, apps that never listen or exit at once, output logging, the
environment an app gets, routing, the request queue and growing the pool.

Synchronisation never sleeps: tests wait (with a deadline) for a log line, for
the app to report a request on stdout (tests/apps/life_app.py), or for the
kernel to show that the server read or closed a socket (/proc/net/tcp).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from tests.integration.conftest import (
    APP_PYTHON,
    APPS,
    RawRequest,
    RawResponse,
    Server,
    echo_app_args,
    in_thread,
    life_app_args,
    pid_alive,
    pid_exists,
    wait_for,
    world_dir,
)

Serve = Callable[..., Server]


# Small helpers.

def get(server: Server, path: str, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes, float]:
    """GET through the server: (status, lower-cased headers, body, seconds taken); errors are answers too."""
    started = time.monotonic()
    try:
        with urllib.request.urlopen(server.url + path, timeout=timeout) as response:
            body = response.read()
            status, headers = response.status, {k.lower(): v for k, v in response.headers.items()}
    except urllib.error.HTTPError as e:
        body = e.read()
        status, headers = e.code, {k.lower(): v for k, v in e.headers.items()}
    return status, headers, body, time.monotonic() - started


def app_got(server: Server, pid: int, path: str, count: int = 1, timeout: float = 10.0, method: str = "GET") -> None:
    """Wait until life_app ``pid`` has printed that it received a request for ``path``."""
    server.wait_log(rf"App {pid} stdout: request {method} {re.escape(path)}\n", count, timeout)


def ready_count(server: Server) -> int:
    return len(re.findall(r"Process \d+ of \S+ is ready", server.log()))


def spawn_port(server: Server, pid: int) -> int:
    match = re.search(rf"Spawning process {pid} of \S+ on port (\d+)", server.log())
    assert match, f"no spawn line for {pid}:\n{server.log()}"
    return int(match.group(1))




# 1. A process that dies is reported, reaped and replaced.

def test_killed_idle_process_is_logged_reaped_and_replaced(serve: Serve) -> None:
    server = serve(echo_app_args("--min-instances", "2"), ready=2)
    victim, survivor = server.app_pids()
    os.kill(victim, signal.SIGKILL)

    server.wait_ready(3, timeout=10)  # a replacement keeps min-instances
    wait_for(lambda: not pid_exists(victim), 5, what=f"killed process {victim} to be reaped (not a zombie)")
    pids = server.app_pids()
    assert len(pids) == 3, pids
    replacement = pids[2]
    assert pid_alive(survivor) and pid_alive(replacement)

    seen = set()
    for _ in range(6):
        status, _, body, _ = get(server, "/pid")
        assert status == 200, body
        seen.add(int(body))
    assert victim not in seen
    assert seen <= {survivor, replacement}

    log = server.log()
    assert re.search(rf"Process {victim} of \S+ killed by signal 9", log), \
        f"the log should name pid {victim} and the reason (killed by signal 9):\n{log}"


# 2. A request in flight on a process that dies gets 502.

def test_request_in_flight_on_killed_process_gets_502(serve: Serve) -> None:
    server = serve(life_app_args("--min-instances", "1", "--max-pool-size", "1"), ready=1)
    (pid,) = server.app_pids()
    request = RawRequest(server.port, "/sleep?ms=5000")
    app_got(server, pid, "/sleep?ms=5000")
    os.kill(pid, signal.SIGKILL)

    response = request.response(timeout=4)  # long before the 5 s sleep would have ended
    assert response.status == 502, response
    assert response.elapsed < 4


def test_post_the_app_received_is_not_replayed_when_its_kept_alive_connection_closes(serve: Serve) -> None:
    """The proxy reuses its keep-alive connection to the app (as after any first request).

    A POST that the app has received and then dropped (closed without an answer,
    as a process dying in the middle of it does) must not be sent again: a proxy
    must not retry non-idempotent requests (RFC 9112 section 9.3.1, RFC 7230 6.3.1
    before it).  It gets 502.
    """
    server = serve(life_app_args("--min-instances", "1", "--max-pool-size", "1"), ready=1)
    (pid,) = server.app_pids()
    warm = RawRequest(server.port, "/pid").response()
    assert warm.status == 200 and warm.body == str(pid).encode()  # leaves an idle connection to the app

    response = RawRequest(server.port, "/drop", method="POST").response(timeout=10)
    # Any resend came before that answer; a request after it, once the app has
    # logged it, ensures every line the app wrote before is in the log.
    after = RawRequest(server.port, "/pid").response()
    assert after.status == 200, after
    app_got(server, pid, "/pid", count=2)
    assert response.status == 502, response
    received = re.findall(r"App \d+ stdout: request POST /drop\n", server.log())
    assert len(received) == 1, f"the POST was sent to the app {len(received)} times:\n{server.log()}"


# 3. Graceful shutdown.

def test_sigterm_finishes_request_in_flight_exits_0_and_leaves_no_process(serve: Serve) -> None:
    server = serve(life_app_args("--min-instances", "2"), ready=2)
    pids = server.app_pids()
    request = RawRequest(server.port, "/sleep?ms=1000")
    wait_for(lambda: re.search(r"App (\d+) stdout: request GET /sleep\?ms=1000\n", server.log()),
             10, what="an app to get the request")
    pending = in_thread(lambda: request.response(timeout=15))

    assert server.stop(signal.SIGTERM, timeout=15) == 0

    response = pending()
    assert response.status == 200, response
    assert response.body == b"slept"
    assert int(response.headers["x-pid"]) in pids
    leftovers = [p for p in server.app_pids() if pid_exists(p)]
    assert leftovers == [], f"app processes left behind (alive or zombie): {leftovers}"
    assert "every app process has exited" in server.log()


def test_sigint_exits_0_and_leaves_no_process(serve: Serve) -> None:
    server = serve(echo_app_args("--min-instances", "2"), ready=2)
    pids = server.app_pids()
    assert len(pids) == 2
    assert server.stop(signal.SIGINT, timeout=15) == 0
    leftovers = [p for p in pids if pid_exists(p)]
    assert leftovers == [], f"app processes left behind (alive or zombie): {leftovers}"


# 4. An app that ignores TERM is KILLed after --shutdown-timeout.

def test_app_ignoring_term_is_killed_after_shutdown_timeout(serve: Serve) -> None:
    server = serve(life_app_args("--min-instances", "1", "--shutdown-timeout", "1", flags="--ignore-term"), ready=1)
    (pid,) = server.app_pids()
    started = time.monotonic()
    assert server.stop(signal.SIGTERM, timeout=15) == 0
    took = time.monotonic() - started
    assert not pid_exists(pid), f"app {pid} survived the server"
    assert 0.9 <= took < 6, f"stopping took {took:.2f}s; expected about the 1 s shutdown timeout"
    assert re.search(rf"App {pid} \(\S+\) ignored TERM for 1(\.0)?s; sending KILL", server.log()), server.log()


# 5. An app that never listens is killed at the start timeout.

def test_app_that_never_listens_is_killed_at_start_timeout(serve: Serve) -> None:
    server = serve(["--app-root", str(APPS), "--app-start-command", "sleep 60", "--start-timeout", "1"], ready=0)
    match = server.wait_log(r"Spawning process (\d+)")[0]
    pid = int(match.group(1))

    status, headers, body, took = get(server, "/", timeout=10)
    assert 500 <= status < 600, (status, body)
    assert took < 5, f"the request took {took:.2f}s"
    assert headers.get("content-type", "").startswith("text/html")

    server.wait_log(rf"Could not spawn process for application \S+ \(apps\): A timeout occurred while spawning "
                    rf"application process {pid}: .*start timeout of 1s; killed\. \[Error ID: [0-9a-f]{{8}}; "
                    r"details saved to \S+passenger-error-[0-9a-f]{8}\.html\]", timeout=5)
    wait_for(lambda: not pid_exists(pid), 5, what=f"process {pid} to be killed and reaped")


# 6. An app that exits at once.

def test_app_that_exits_at_once_is_reported_with_its_output(serve: Serve) -> None:
    server = serve(["--app-root", str(APPS), "--app-start-command", 'sh -c "echo boom >&2; exit 7"'], ready=0)
    server.wait_log(r"Could not spawn process")
    pid = server.app_pids()[0]

    for _ in range(3):  # while it backs off and while it tries again
        status, headers, body, took = get(server, "/", timeout=10)
        assert 500 <= status < 600, (status, body)
        assert took < 2, f"the request took {took:.2f}s"
        assert headers.get("content-type", "").startswith("text/html")
        assert b"<html" in body

    log = server.log()
    assert re.search(rf"App {pid} stderr: boom\n", log), log
    assert re.search(rf"Could not spawn process for application \S+ \(apps\): The application process {pid} exited "
                     r"prematurely \(exited with status 7\)\. \[Error ID: [0-9a-f]{8}; details saved to \S+\]\n"
                     r"\s*\[stderr\] boom", log), \
        f"the failure should name pid {pid}, the app, the status and the output:\n{log}"


# 7. App output is logged line by line with pid and stream.

def test_app_output_lines_are_logged_with_pid_and_stream(serve: Serve) -> None:
    command = f"sh -c 'echo first-out; echo first-err >&2; exec {APP_PYTHON} life_app.py --chatty'"
    server = serve(["--app-root", str(APPS), "--app-start-command", command], ready=1)
    (pid,) = server.app_pids()
    port = spawn_port(server, pid)
    status, _, _, _ = get(server, "/some/page")
    assert status == 200
    app_got(server, pid, "/some/page")

    for line in ("stdout: first-out", "stderr: first-err", "stdout: hello-out", "stderr: hello-err",
                 f"stdout: life app {pid} listening on {port}"):
        server.wait_log(rf"App {pid} {re.escape(line)}\n", timeout=5)


# 8. The environment of an app process.

def _echo(server: Server) -> tuple[int, dict[str, object]]:
    status, headers, body, _ = get(server, "/echo")
    assert status == 200, body
    return int(headers["x-pid"]), json.loads(body)


def test_app_environment_defaults(serve: Serve, tmp_path: Path) -> None:
    root = world_dir("envapp", 0o755)
    server = serve(["--app-root", str(root), "--app-start-command",
                    f"{APP_PYTHON} {APPS / 'echo_app.py'}"], ready=1)
    pid, info = _echo(server)
    env = info["env"]
    assert isinstance(env, dict)
    port = spawn_port(server, pid)
    assert env["PORT"] == str(port)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as direct:  # the app listens on $PORT
        direct.sendall(b"GET /pid HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        direct.settimeout(5)
        answer = b""
        while chunk := direct.recv(4096):
            answer += chunk
    assert answer.endswith(str(pid).encode()), answer
    for name in ("PASSENGER_APP_ENV", "RAILS_ENV", "RACK_ENV", "NODE_ENV", "WSGI_ENV"):
        assert env.get(name) == "production", (name, env)
    assert env.get("IN_PASSENGER") == "1"
    assert env.get("PYTHONUNBUFFERED") == "1"
    assert "GREETING" not in env
    assert os.path.realpath(str(info["cwd"])) == os.path.realpath(root)
    assert env.get("PWD") == str(root)


def test_app_environment_options_and_user_envvars(serve: Serve) -> None:
    server = serve(echo_app_args("--environment", "staging", "--envvar", "GREETING=hi",
                                 "--envvar", "NODE_ENV=custom"), ready=1)
    _, info = _echo(server)
    env = info["env"]
    assert isinstance(env, dict)
    for name in ("PASSENGER_APP_ENV", "RAILS_ENV", "RACK_ENV", "WSGI_ENV"):
        assert env.get(name) == "staging", (name, env)
    assert env.get("NODE_ENV") == "custom"  # the user's value wins over the default
    assert env.get("GREETING") == "hi"
    assert os.path.realpath(str(info["cwd"])) == os.path.realpath(APPS)


# 9. Least-busy routing.

def test_least_busy_routing_and_oldest_first_when_idle(serve: Serve) -> None:
    server = serve(echo_app_args("--min-instances", "2", "--max-pool-size", "2"), ready=2)
    oldest, newer = server.app_pids()

    for _ in range(5):
        status, headers, _, _ = get(server, "/pid")
        assert status == 200
        assert int(headers["x-pid"]) == oldest, "an idle pool should route to the oldest process"

    first = RawRequest(server.port, "/sleep?ms=500")
    wait_for(first.server_has_read, 5, what="the server to read the first request")
    second = RawRequest(server.port, "/sleep?ms=500")
    a, b = first.response(), second.response()
    assert a.status == b.status == 200, (a, b)
    assert {int(a.headers["x-pid"]), int(b.headers["x-pid"])} == {oldest, newer}
    assert int(a.headers["x-pid"]) == oldest


# 10. The request queue.

def test_queue_waits_then_503_when_full(serve: Serve) -> None:
    server = serve(life_app_args("--concurrency", "1", "--min-instances", "1", "--max-pool-size", "1",
                                 "--max-request-queue-size", "1"), ready=1)
    (pid,) = server.app_pids()
    busy = RawRequest(server.port, "/sleep?ms=1500")
    app_got(server, pid, "/sleep?ms=1500")
    queued = RawRequest(server.port, "/pid")
    wait_for(queued.server_has_read, 5, what="the server to read the second request")

    rejected = RawRequest(server.port, "/pid").response(timeout=5)
    assert rejected.status == 503, rejected
    assert rejected.elapsed < 0.5, f"the 503 took {rejected.elapsed:.2f}s"

    done = busy.response(timeout=10)
    waited = queued.response(timeout=10)
    assert done.status == 200 and done.body == b"slept", done
    assert waited.status == 200, waited
    assert waited.body == str(pid).encode()
    assert waited.elapsed >= 0.5, f"the queued request did not wait ({waited.elapsed:.2f}s)"
    # The queued request reached the app only once the slow one was over.
    app_got(server, pid, "/pid")
    log = server.log()
    assert log.index("request GET /pid") > log.index("request GET /sleep?ms=1500")


def test_queued_request_whose_client_leaves_frees_its_slot(serve: Serve) -> None:
    server = serve(life_app_args("--concurrency", "1", "--min-instances", "1", "--max-pool-size", "1",
                                 "--max-request-queue-size", "1"), ready=1)
    (pid,) = server.app_pids()
    busy = RawRequest(server.port, "/sleep?ms=1500")
    app_got(server, pid, "/sleep?ms=1500")
    leaver = RawRequest(server.port, "/echo?leaver")
    wait_for(leaver.server_has_read, 5, what="the server to read the queued request")
    leaver.close()
    wait_for(leaver.server_let_go, 5, what="the server to close the abandoned connection")

    newcomer = RawRequest(server.port, "/pid")
    response = newcomer.response(timeout=10)
    assert response.status == 200, f"the abandoned waiter still holds the queue slot: {response}"
    assert response.body == str(pid).encode()
    assert busy.response(timeout=10).status == 200
    assert "request GET /echo?leaver" not in server.log(), "the abandoned request was sent to the app"


# 11. Growing the pool when concurrency is unknown.

def test_pool_grows_under_load_up_to_max_pool_size(serve: Serve) -> None:
    server = serve(echo_app_args("--min-instances", "1", "--max-pool-size", "3"), ready=1)
    stop = threading.Event()
    pids: list[int] = []
    errors: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        while not stop.is_set():
            response: RawResponse | None = None
            try:
                response = RawRequest(server.port, "/sleep?ms=300").response(timeout=10)
            except OSError as e:
                problem = repr(e)
            with lock:
                if response is None:
                    errors.append(problem)
                elif response.status != 200:
                    errors.append(repr(response))
                else:
                    pids.append(int(response.headers["x-pid"]))

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(6)]
    for thread in threads:
        thread.start()
    try:
        server.wait_ready(3, timeout=10)
        # Keep every process busy a while longer: an unknown-concurrency pool that is
        # all busy wants another process, and max-pool-size must say no.
        answered = len(pids)
        wait_for(lambda: len(pids) >= answered + 24, 15, what="24 more responses under full load")
    finally:
        stop.set()
        for thread in threads:
            thread.join(15)
    assert not errors, errors
    spawned = server.app_pids()
    assert len(spawned) == 3, f"expected exactly 3 processes, spawned {spawned}"
    assert ready_count(server) == 3
    assert set(pids) == set(spawned), (set(pids), spawned)

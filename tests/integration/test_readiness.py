"""Readiness beyond a port: the wrong port or address is named at once, and health checks gate and watch processes."""

from __future__ import annotations

import re
import socket
import time
import urllib.request

import pytest

from tests.integration.conftest import APP_PYTHON, APPS, free_port, wait_for

HEALTH_APP = f"{APP_PYTHON} health_app.py"


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_app_on_another_port_fails_fast_naming_the_port(serve) -> None:
    port = free_port()
    server = serve(["--app-root", str(APPS), "--app-start-command", f"{HEALTH_APP} --listen-on 127.0.0.1:{port}",
                    "--start-timeout", "60"], ready=0)
    started = time.monotonic()
    server.wait_log(rf"listens on the wrong address: the app listens on 127\.0\.0\.1:{port}, not on port \d+ "
                    r"given in \$PORT", timeout=10)
    assert time.monotonic() - started < 5, "the wrong port must be reported long before the 60 s start timeout"


def test_app_on_ipv6_loopback_only_fails_naming_the_address(serve) -> None:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    server = serve(["--app-root", str(APPS), "--app-start-command", f"{HEALTH_APP} --listen-on '[::1]:$PORT'"],
                   ready=0)
    server.wait_log(r"the app listens on \[::1\]:(\d+) only; it must listen on 127\.0\.0\.1:\1 \(IPv4\)", timeout=10)


def test_health_check_gates_readiness(serve) -> None:
    server = serve(["--app-root", str(APPS), "--app-start-command", f"{HEALTH_APP} --healthy-after 3",
                    "--health-check-path", "/healthz"], ready=1)
    log = server.log()
    ready_at = log.index("is ready on port")
    fourth = log.index("stdout: health check 4")
    assert fourth < ready_at, "the process must not be ready before its health check passed"
    assert "health check 3" in log[:fourth]
    status, body = _get(server.url + "/")
    assert status == 200 and body.startswith(b"Hello from")


def test_unhealthy_process_is_replaced(serve) -> None:
    server = serve(["--app-root", str(APPS), "--app-start-command", HEALTH_APP, "--health-check-path", "/healthz",
                    "--health-check-interval", "0.2", "--health-check-failures", "2"], ready=1)
    (first,) = server.app_pids()
    status, body = _get(server.url + "/sick")
    assert status == 200 and body == b"now sick"
    server.wait_log(rf"Process {first} of \S+ failed its health check /healthz 2 times in a row \(answered 503\); "
                    r"replacing it", timeout=10)
    server.wait_ready(2, timeout=10)
    wait_for(lambda: re.search(rb"Hello from (\d+)", _get(server.url + "/")[1]).group(1) != str(first).encode(),
             10, what="requests to go to the replacement")

"""--busy-poll on a real server: it polls through the gaps of a steady load, and an idle server sleeps."""

from __future__ import annotations

import http.client
import os
import time
from collections.abc import Callable

from tests.integration.conftest import Server, echo_app_args, fetch


def cpu_seconds(pid: int) -> float:
    """User + system time of a process, from /proc."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_busy_polling_server_spins_between_requests_then_sleeps_when_idle(serve: Callable[..., Server]) -> None:
    server = serve(echo_app_args("--busy-poll", "20000"))  # 20 ms after each pass: more than the gaps below
    assert server.proc is not None
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        started, before = time.monotonic(), cpu_seconds(server.proc.pid)
        for n in range(100):  # a request every 10 ms: the server never gets to sleep
            connection.request("GET", f"/bytes?n={n}")
            response = connection.getresponse()
            assert response.status == 200
            assert response.read() == b"x" * n
            time.sleep(0.01)  # the load's pace
        busy, elapsed = cpu_seconds(server.proc.pid) - before, time.monotonic() - started
    finally:
        connection.close()
    assert busy > 0.5 * elapsed, f"{busy:.2f} s of CPU in {elapsed:.2f} s: the server slept between requests"
    before = cpu_seconds(server.proc.pid)
    time.sleep(2)  # the measurement itself: what the server burns with nothing to do
    idle = cpu_seconds(server.proc.pid) - before
    assert idle < 0.3, f"the idle server used {idle:.2f} s of CPU in 2 s: the busy poll did not stop"
    assert fetch(server.port, "/").status == 200


def test_another_reactor_serves_and_says_busy_poll_is_ignored(serve: Callable[..., Server]) -> None:
    server = serve(echo_app_args("--busy-poll", "500"), twistd_args=["--reactor", "poll"])
    server.wait_log(r"busy_poll \(500 us\) is ignored: it needs passenger's epoll reactor, not PollReactor")
    assert fetch(server.port, "/").status == 200

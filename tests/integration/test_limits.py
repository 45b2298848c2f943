"""The server takes the open files limit it needs for max_connections, and says when it cannot."""

from __future__ import annotations

import re
import resource
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import psutil

from passenger.pool.process import IDLE_CONNECTIONS
from tests.integration.conftest import Server, echo_app_args, fetch
from tests.polling import wait_for


def open_files_limit(pid: int) -> tuple[int, int]:
    with open(f"/proc/{pid}/limits") as f:
        match = re.search(r"^Max open files\s+(\d+)\s+(\d+)", f.read(), re.M)
    assert match is not None
    return int(match[1]), int(match[2])


def test_the_soft_limit_is_raised_to_the_hard_one_with_a_warning_when_short(serve: Callable[..., Server]) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert hard >= 2048, f"this test needs a hard open files limit of 2048 or more, not {hard}"
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))  # the server inherits the usual default
    try:
        server = serve(echo_app_args("--max-connections", str(hard)))
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert server.proc is not None
    assert open_files_limit(server.proc.pid) == (hard, hard)
    server.wait_log(rf"The open files limit is {hard}, below max_connections \({hard}\) plus 1024 .* "
                    rf"connections past about {hard - 1024} will fail")


def connections_to(pid: int, port: int) -> int:
    """Established connections of process ``pid`` to 127.0.0.1:``port``."""
    return sum(1 for c in psutil.Process(pid).net_connections("tcp")
               if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED)


def test_a_burst_keeps_at_most_64_idle_connections_to_a_process(serve: Callable[..., Server]) -> None:
    server = serve(echo_app_args("--min-instances", "1", "--max-pool-size", "1"))
    assert server.proc is not None
    app_port = int(server.wait_log(r"is ready on port (\d+)")[0][1])
    burst = 150
    with ThreadPoolExecutor(burst) as pool:
        replies = list(pool.map(lambda _: fetch(server.port, "/sleep?ms=1500"), range(burst)))
    assert [r.status for r in replies] == [200] * burst
    assert len({r.pid for r in replies}) == 1, "one process served the whole burst, over many connections"
    pid = server.proc.pid
    # The last ones close a moment after their answer: poll until only the kept ones are left.
    wait_for(lambda: connections_to(pid, app_port) <= IDLE_CONNECTIONS, 10, what="surplus connections closed")
    assert connections_to(pid, app_port) == IDLE_CONNECTIONS

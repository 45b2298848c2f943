"""The first thing a user does: start the server on an app and get a page."""

import signal
import urllib.request

from tests.integration.conftest import echo_app_args, pid_alive, wait_for


def test_serves_the_app_and_stops_cleanly(serve):
    server = serve(echo_app_args("--min-instances", "2"), ready=2)
    with urllib.request.urlopen(server.url + "/") as response:
        assert response.status == 200
        assert response.read().startswith(b"Hello from ")
    pids = server.app_pids()
    assert len(pids) == 2
    assert server.stop(signal.SIGTERM) == 0
    wait_for(lambda: not any(pid_alive(p) for p in pids), 5, what="app processes to be gone")

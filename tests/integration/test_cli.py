"""``twistd -n passenger`` on the command line: bad values fail early, help, the Passenger alias.

Every bad value must end the run with a non-zero status and a one-line message
naming the option (and nothing else: no usage text, no traceback), before
anything is spawned or bound.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.conftest import (
    APP_PYTHON,
    APPS,
    TWISTD,
    RawRequest,
    Server,
    free_port,
    life_app_args,
    wait_for,
)

#: Seconds a bad command line may take to be refused (it should take well under one).
RUN_TIMEOUT = 10


def run_twistd(args: list[str]) -> subprocess.CompletedProcess[str]:
    """``twistd -n passenger ARGS``; if it has not exited after RUN_TIMEOUT, kill its whole group and fail."""
    proc = subprocess.Popen([TWISTD, "-n", "passenger", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"twistd passenger {args} was still running after {RUN_TIMEOUT}s:\n{out}{err}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    """A file that the app command creates if it is ever run."""
    return tmp_path / "spawned"


def spawning_command(marker: Path) -> str:
    return f"touch {marker}"


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The whole output, which must be exactly one line (no usage text, no traceback)."""
    output = (result.stdout + result.stderr).strip("\n")
    lines = output.splitlines()
    assert len(lines) == 1, f"expected a one-line error, got {len(lines)} lines:\n{output}"
    return lines[0]


def assert_refused(result: subprocess.CompletedProcess[str], marker: Path, *wanted: str) -> str:
    """Non-zero exit, a one-line message containing every ``wanted`` text, nothing spawned."""
    output = result.stdout + result.stderr
    assert result.returncode != 0, f"exit status 0 for a bad command line:\n{output}"
    message = error_line(result)
    for text in wanted:
        assert text in message, f"{text!r} not in the error line {message!r}"
    assert "Spawning process" not in output, output
    assert not marker.exists(), "the app command was run"
    return message


def base_args(marker: Path) -> list[str]:
    return ["--app-root", str(APPS), "--app-start-command", spawning_command(marker),
            "--address", "127.0.0.1", "--port", str(free_port())]


# Bad values, one by one.

def test_missing_app_root(marker: Path, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir"
    result = run_twistd(["--app-root", str(missing), "--app-start-command", spawning_command(marker),
                         "--address", "127.0.0.1", "--port", str(free_port())])
    assert_refused(result, marker, "--app-root", str(missing))


def test_app_root_that_is_a_file(marker: Path, tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("")
    result = run_twistd(["--app-root", str(a_file), "--app-start-command", spawning_command(marker),
                         "--address", "127.0.0.1", "--port", str(free_port())])
    assert_refused(result, marker, "--app-root")


def test_missing_app_start_command(marker: Path) -> None:
    result = run_twistd(["--app-root", str(APPS), "--address", "127.0.0.1", "--port", str(free_port())])
    assert_refused(result, marker, "--app-start-command")


@pytest.mark.parametrize("command", ["", "   "])
def test_empty_app_start_command(marker: Path, command: str) -> None:
    result = run_twistd(["--app-root", str(APPS), "--app-start-command", command,
                         "--address", "127.0.0.1", "--port", str(free_port())])
    assert_refused(result, marker, "--app-start-command")


BAD_VALUES: list[tuple[list[str], list[str]]] = [
    # (extra arguments, texts the error line must contain)
    (["--min-instances", "-1"], ["--min-instances", "-1"]),
    (["--min-instances", "many"], ["--min-instances", "many"]),
    (["--min-instances", "4", "--max-pool-size", "3"], ["--min-instances", "--max-pool-size"]),
    (["--max-pool-size", "0"], ["--max-pool-size"]),
    (["--start-timeout", "0"], ["--start-timeout"]),
    (["--start-timeout", "-5"], ["--start-timeout"]),
    (["--start-timeout", "soon"], ["--start-timeout", "soon"]),
    (["--shutdown-timeout", "0"], ["--shutdown-timeout"]),
    (["--concurrency", "-2"], ["--concurrency"]),
    (["--max-request-queue-size", "-1"], ["--max-request-queue-size"]),
    (["--envvar", "NOEQUALS"], ["--envvar", "NOEQUALS"]),
    (["--envvar", "1BAD=x"], ["--envvar", "1BAD=x"]),
    (["--envvar", "=value"], ["--envvar"]),
    (["--listen", "bogus:1234"], ["--listen", "bogus:1234"]),
    (["--listen", "tcp:notaport"], ["--listen", "tcp:notaport"]),
    (["--busy-poll", "-1"], ["--busy-poll", "-1", "from 0 to 100000 microseconds"]),
    (["--busy-poll", "200000"], ["--busy-poll", "200000", "from 0 to 100000 microseconds"]),
    (["--busy-poll", "0.5"], ["--busy-poll", "0.5", "whole number of microseconds"]),
]


@pytest.mark.parametrize(("args", "wanted"), [pytest.param(a, w, id=" ".join(a)) for a, w in BAD_VALUES])
def test_bad_option_value(marker: Path, args: list[str], wanted: list[str]) -> None:
    result = run_twistd([*base_args(marker), *args])
    assert_refused(result, marker, *wanted)


@pytest.mark.parametrize("port", ["http", "80a", "-1", "70000"])
def test_bad_port(marker: Path, port: str) -> None:
    result = run_twistd(["--app-root", str(APPS), "--app-start-command", spawning_command(marker),
                         "--address", "127.0.0.1", "--port", port])
    assert_refused(result, marker, "--port", port)


def test_port_already_in_use(marker: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = run_twistd(["--app-root", str(APPS), "--app-start-command", spawning_command(marker),
                             "--address", "127.0.0.1", "--port", str(port)])
        message = assert_refused(result, marker, str(port))
    assert "in use" in message, message


def test_listen_port_already_in_use(marker: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = run_twistd(["--app-root", str(APPS), "--app-start-command", spawning_command(marker),
                             "--listen", f"tcp:{port}:interface=127.0.0.1"])
        message = assert_refused(result, marker, str(port))
    assert "in use" in message, message


# Help.

def test_help_lists_the_main_options() -> None:
    result = subprocess.run([TWISTD, "passenger", "--help"], capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert result.returncode == 0, result.stdout + result.stderr
    for option in ("--app-root", "--app-start-command", "--address", "--port", "--listen", "--environment",
                   "--envvar", "--min-instances", "--max-pool-size", "--concurrency",
                   "--force-max-concurrent-requests-per-process", "--max-request-queue-size",
                   "--start-timeout", "--shutdown-timeout", "--drain-timeout"):
        assert option in result.stdout, f"{option} missing from --help:\n{result.stdout}"
    assert "Traceback" not in result.stdout + result.stderr


# The Passenger name of --concurrency.

def test_force_max_concurrent_requests_per_process_parses_as_concurrency() -> None:
    from passenger.tap import Options

    def concurrency(*args: str) -> int | None:
        options = Options()
        options.parseOptions(["--app-root", str(APPS), "--app-start-command", "true", "--port", "0", *args])
        value: int | None = options["config"].apps[0].concurrency
        return value

    assert concurrency("--force-max-concurrent-requests-per-process", "4") == 4
    assert concurrency("--force-max-concurrent-requests-per-process", "1") == concurrency("--concurrency", "1")
    assert concurrency("--force-max-concurrent-requests-per-process=0") == 0
    assert concurrency() is None


def test_force_max_concurrent_requests_per_process_bad_value_is_refused(marker: Path) -> None:
    result = run_twistd([*base_args(marker), "--force-max-concurrent-requests-per-process", "lots"])
    assert_refused(result, marker, "lots")


def test_force_max_concurrent_requests_per_process_limits_a_running_server(
        serve: Callable[..., Server]) -> None:
    """With the alias at 1 a busy process takes no second request: it queues, and the next one is refused."""
    server = serve(life_app_args("--force-max-concurrent-requests-per-process", "1", "--min-instances", "1",
                                 "--max-pool-size", "1", "--max-request-queue-size", "1"), ready=1)
    (pid,) = server.app_pids()
    busy = RawRequest(server.port, "/sleep?ms=1000")
    server.wait_log(rf"App {pid} stdout: request GET /sleep\?ms=1000\n")
    queued = RawRequest(server.port, "/pid")
    wait_for(queued.server_has_read, 5, what="the server to read the second request")
    refused = RawRequest(server.port, "/pid").response(timeout=5)
    assert refused.status == 503, refused
    assert busy.response().status == 200
    assert queued.response().status == 200


def test_valid_command_line_starts(serve: Callable[..., Server]) -> None:
    """The marker technique above is meaningful: a good command line does run the app."""
    server = serve(["--app-root", str(APPS), "--app-start-command", f"{APP_PYTHON} echo_app.py",
                    "--min-instances", "1", "--max-pool-size", "1", "--concurrency", "unknown",
                    "--envvar", "A=b=c", "--start-timeout", "0.5e2"], ready=1)
    assert len(server.app_pids()) == 1

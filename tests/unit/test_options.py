"""passenger.tap.Options and the twistd plugin that points at it.

Mistakes end as :class:`passenger.tap.ConfigExit`: a SystemExit whose code is
one line, "passenger: <message>" (twistd would bury a UsageError under the
whole --help), whether in option values or found by getopt itself (an unknown
option, a missing argument).
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from twisted.application.service import IService, IServiceMaker

from passenger import tap
from passenger.config import ConfigError
from passenger.service import PassengerService
from passenger.tap import Options
from tests.unit.cli import config_error, parse

PLUGIN = Path(__file__).resolve().parents[2] / "twisted" / "plugins" / "passenger_plugin.py"


@pytest.fixture
def checked(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record the endpoints Options would check, without binding anything."""
    seen: list[str] = []

    def check(description: str, option: str = "--listen") -> None:
        seen.append(description)

    monkeypatch.setattr(tap, "_check_listen", check)
    return seen


@pytest.fixture
def root(tmp_path: Path) -> str:
    app = tmp_path / "myapp"
    app.mkdir()
    return str(app)






def test_defaults(root: str, checked: list[str]) -> None:
    options = parse("--app-root", root, "--app-start-command", "node server.js")
    config = options["config"]
    assert config.listen == ("tcp:3000:interface=0.0.0.0",)
    assert checked == ["tcp:3000:interface=0.0.0.0"]
    app = config.apps[0]
    assert app.root == root
    assert app.name == "myapp"
    assert app.start_command == "node server.js"
    assert app.min_instances == 1
    assert config.max_pool_size == 6
    assert app.concurrency is None
    assert app.max_request_queue_size == 100
    assert app.start_timeout == 90.0
    assert app.shutdown_timeout == 30.0
    assert app.environment == "production"
    assert dict(app.envvars) == {}
    assert config.drain_timeout == 60.0


def test_app_root_defaults_to_the_current_directory(root: str, checked: list[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(root)
    app = parse("--app-start-command", "x")["config"].apps[0]
    assert os.path.realpath(app.root) == os.path.realpath(root)
    assert app.name == "myapp"


def test_values(root: str, checked: list[str]) -> None:
    config = parse("--app-root", root, "--app-start-command", "x", "--min-instances", "2", "--max-pool-size", "3",
                   "--concurrency", "4", "--max-request-queue-size", "0", "--start-timeout", "2.5",
                   "--shutdown-timeout", "1", "--drain-timeout", "0.5", "--environment", "staging",
                   "--address", "127.0.0.1", "--port", "8080")["config"]
    app = config.apps[0]
    assert (app.min_instances, config.max_pool_size, app.concurrency, app.max_request_queue_size) == (2, 3, 4, 0)
    assert (app.start_timeout, app.shutdown_timeout, config.drain_timeout) == (2.5, 1.0, 0.5)
    assert app.environment == "staging"
    assert config.listen == ("tcp:8080:interface=127.0.0.1",)


def test_ipv6_address_is_escaped_for_the_endpoint(root: str, checked: list[str]) -> None:
    config = parse("--app-root", root, "--app-start-command", "x", "--address", "::1", "--port", "8080")["config"]
    assert config.listen == ("tcp:8080:interface=\\:\\:1",)


def test_listen_is_repeatable_and_replaces_address_and_port(root: str, checked: list[str]) -> None:
    config = parse("--app-root", root, "--app-start-command", "x", "--address", "127.0.0.1", "--port", "4000",
                   "--listen", "tcp:8080:interface=127.0.0.1", "--listen", "unix:/tmp/passenger.sock")["config"]
    assert config.listen == ("tcp:8080:interface=127.0.0.1", "unix:/tmp/passenger.sock")
    assert checked == list(config.listen)


def test_envvar_is_repeatable(root: str, checked: list[str]) -> None:
    app = parse("--app-root", root, "--app-start-command", "x", "--envvar", "A=1", "--envvar", "B=x=y",
                "--envvar", "EMPTY=", "--envvar", "A=2")["config"].apps[0]
    assert dict(app.envvars) == {"A": "2", "B": "x=y", "EMPTY": ""}


@pytest.mark.parametrize(("args", "expected"), [
    (["--concurrency", "0"], 0),
    (["--concurrency", "unknown"], None),
    (["--concurrency", "-1"], None),
    (["--force-max-concurrent-requests-per-process", "4"], 4),
    (["--force-max-concurrent-requests-per-process", "0"], 0),
    (["--force-max-concurrent-requests-per-process", "-1"], None),
    (["--concurrency", "2", "--force-max-concurrent-requests-per-process", "5"], 5),
    (["--force-max-concurrent-requests-per-process", "5", "--concurrency", "2"], 2),
])
def test_concurrency_and_its_passenger_alias(root: str, checked: list[str], args: list[str],
                                             expected: int | None) -> None:
    assert parse("--app-root", root, "--app-start-command", "x", *args)["config"].apps[0].concurrency == expected


@pytest.mark.parametrize(("args", "fragment"), [
    (["--min-instances", "abc"], "--min-instances 'abc'"),
    (["--min-instances", "-1"], "--min-instances -1: must not be negative"),
    (["--min-instances", "7"], "greater than --max-pool-size 6"),
    (["--max-pool-size", "0"], "--max-pool-size 0"),
    (["--max-pool-size", "2.5"], "--max-pool-size"),
    (["--concurrency", "-2"], "--concurrency"),
    (["--concurrency", "lots"], "--concurrency"),
    (["--force-max-concurrent-requests-per-process", "lots"], "--concurrency"),
    (["--max-request-queue-size", "many"], "--max-request-queue-size"),
    (["--start-timeout", "0"], "--start-timeout"),
    (["--start-timeout", "-5"], "--start-timeout"),
    (["--start-timeout", "nan"], "--start-timeout"),
    (["--start-timeout", "inf"], "--start-timeout"),
    (["--start-timeout", "soon"], "--start-timeout"),
    (["--shutdown-timeout", "0"], "--shutdown-timeout"),
    (["--drain-timeout", "-1"], "--drain-timeout"),
    (["--port", "65536"], "--port 65536"),
    (["--port", "http"], "--port"),
    (["--port", "-1"], "--port"),
    (["--envvar", "NOVALUE"], "--envvar 'NOVALUE'"),
    (["--envvar", "1BAD=x"], "--envvar"),
    (["--envvar", "=x"], "--envvar"),
    (["--listen", "bogus:1"], "--listen 'bogus:1'"),
    (["--listen", "tcp:notaport"], "--listen 'tcp:notaport'"),
    (["--listen", "tcp:70000"], "70000"),
    (["--listen", "tcp:8080:nonsense=1"], "--listen"),
    (["--listen", "ssl:8443:privateKey=/nonexistent/key.pem"], "/nonexistent/key.pem"),
    (["--listen", "systemd:domain=INET:index=0"], "LISTEN_FDS"),
])
def test_bad_values_end_in_one_line(root: str, args: list[str], fragment: str,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LISTEN_FDS", raising=False)
    monkeypatch.delenv("LISTEN_PID", raising=False)
    message = config_error("--app-root", root, "--app-start-command", "x", *args)
    assert fragment in message


def test_missing_start_command(root: str) -> None:
    assert "--app-start-command is required" in config_error("--app-root", root)


def test_blank_start_command(root: str) -> None:
    assert "--app-start-command" in config_error("--app-root", root, "--app-start-command", "   ")


def test_missing_app_root(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope")
    assert missing in config_error("--app-root", missing, "--app-start-command", "x")


def test_a_port_in_use_is_reported(root: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        message = config_error("--app-root", root, "--app-start-command", "x",
                               "--listen", f"tcp:{port}:interface=127.0.0.1")
    assert message == f"cannot listen on 127.0.0.1:{port}: the port is already in use"


def test_a_free_port_passes_the_check(root: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = parse("--app-root", root, "--app-start-command", "x", "--listen", f"tcp:{port}:interface=127.0.0.1")
    assert config["config"].listen == (f"tcp:{port}:interface=127.0.0.1",)


@pytest.mark.parametrize(("args", "fragment"), [
    (["--bogus"], "--bogus"),
    (["--min-instances"], "--min-instances"),
])
def test_getopt_errors_exit_with_one_line(root: str, args: list[str], fragment: str) -> None:
    message = config_error("--app-root", root, "--app-start-command", "x", *args)  # not twistd's whole --help
    assert fragment in message and "twistd passenger --help" in message


# The plugin.

def load_plugin() -> ModuleType:
    spec = importlib.util.spec_from_file_location("passenger_plugin_under_test", PLUGIN)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_plugin_is_a_service_maker_for_passenger_tap() -> None:
    maker = load_plugin().passenger
    assert IServiceMaker.providedBy(maker)
    assert maker.tapname == "passenger"
    assert maker.options is Options
    assert maker.description


def test_plugin_makes_the_service_from_parsed_options(root: str, checked: list[str]) -> None:
    maker = load_plugin().passenger
    options = maker.options()
    options.parseOptions(["--app-root", root, "--app-start-command", "x"])
    service = maker.makeService(options)
    assert IService.providedBy(service)
    assert isinstance(service, PassengerService)
    assert service.config is options["config"]
    assert service.pool is None, "nothing is built before the service starts"


def test_importing_the_plugin_installs_no_reactor() -> None:
    """Plugin discovery (twistd --help) must not install a reactor, nor import passenger."""
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('p', {str(PLUGIN)!r})\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "bad = [n for n in sys.modules if n == 'twisted.internet.reactor' or n.startswith('passenger')]\n"
        "print(bad)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


def test_a_systemd_socket_of_another_family_than_domain_is_refused() -> None:
    with socket.socket(socket.AF_INET6) as passed:
        passed.bind(("::1", 0))
        passed.listen()
        with pytest.raises(ConfigError, match="systemd passed an INET6 socket; use domain=INET6"):
            tap._check_adopted("systemd:domain=INET:index=0", passed.fileno(), socket.AF_INET)
        tap._check_adopted("systemd:domain=INET6:index=0", passed.fileno(), socket.AF_INET6)

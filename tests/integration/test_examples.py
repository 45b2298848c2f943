"""Every example in examples/ starts with the one command its README documents, and answers.

The command is read from the README's first ```sh block, so a README that
drifts from what works fails here.  Only the port is changed (to a free one),
and the server's log and pid files are the test's own.
"""

from __future__ import annotations

import http.client
import os
import re
import shlex
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import RUNNING_AS_ROOT, Server, world_dir

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
#: Every example and what it needs besides Python.
TESTED = {"hello": (), "node": ("node",), "kuria": (), "two-apps": ("node",)}


def documented_command(example: str) -> list[str]:
    """The twistd command in the example's README (its first ```sh block), split as the shell does."""
    readme = (EXAMPLES / example / "README.md").read_text()
    for block in re.findall(r"^```sh\n(.*?)^```", readme, re.M | re.S):
        text = block.replace("\\\n", " ")
        for line in text.splitlines():
            if re.match(r"^(\.venv/bin/)?twistd ", line):
                return shlex.split(line)
    raise AssertionError(f"examples/{example}/README.md has no twistd command in a ```sh block")


def passenger_args(command: list[str], port: int) -> list[str]:
    """The options after ``passenger``, with ``--port`` set to ``port``."""
    passenger = command.index("passenger")
    assert command[1:passenger] == ["-n"], f"unexpected twistd options {command[1:passenger]}: {command}"
    args = command[passenger + 1:]
    if "--port" in args:
        args[args.index("--port") + 1] = str(port)
    return args


def need(program: str) -> None:
    if shutil.which(program) is None:
        if program == "node" and os.environ.get("PASSENGER_REQUIRE_NODE"):  # set by .ci/run, which installs Node.js
            pytest.fail("node is not on PATH, and .ci/run requires the Node.js tests to run")
        pytest.skip(f"{program} is not on PATH")


@pytest.fixture
def repository(monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run from the repository root, as the READMEs say; as root, from a copy the apps' account can read."""
    if not RUNNING_AS_ROOT:
        monkeypatch.chdir(ROOT)
        return ROOT
    # A server running as root runs root-owned apps as nobody, who may not reach this checkout.
    copy = world_dir("repo", 0o755)
    shutil.copytree(EXAMPLES, copy / "examples")
    for folder, _dirs, files in os.walk(copy):
        os.chmod(folder, 0o755)
        for name in files:
            os.chmod(os.path.join(folder, name), 0o644)
    monkeypatch.chdir(copy)
    return copy


@pytest.fixture
def start_example(tmp_path: Path, repository: Path) -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def start(example: str, ready: int = 1) -> Server:
        for program in TESTED[example]:
            need(program)
        server = Server(tmp_path, [])
        server.args = passenger_args(documented_command(example), server.port)
        servers.append(server)
        return server.start(ready, timeout=30)

    yield start
    for server in servers:
        server.kill()


def get(server: Server, host: str | None = None) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request("GET", "/", headers={"Host": host} if host else {})
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def pid_in(body: str) -> int:
    found = re.search(r"process (\d+)", body)
    assert found, body
    return int(found.group(1))


def test_every_example_has_a_readme_and_a_test() -> None:
    examples = {p.name for p in EXAMPLES.iterdir() if p.is_dir()}
    assert examples == set(TESTED), "add the new example to TESTED (and a test below)"
    for example in examples:
        assert documented_command(example)[-1] != "\\"


def test_the_port_is_what_changes() -> None:
    command = documented_command("node")
    assert passenger_args(command, 4321) == ["--app-root", "examples/node", "--app-start-command", "node server.js",
                                             "--port", "4321"]


def test_hello(start_example: Callable[..., Server]) -> None:
    server = start_example("hello", ready=2)
    status, body = get(server)
    assert status == 200
    assert body.startswith("Hello from process ") and body.endswith("(production)\n")
    assert pid_in(body) in server.app_pids()
    assert len(server.app_pids()) == 2, "--min-instances 2"


def test_node(start_example: Callable[..., Server]) -> None:
    server = start_example("node")
    status, body = get(server)
    assert status == 200
    assert body.startswith("Hello from Node.js process ") and body.endswith("(production)\n")
    assert pid_in(body) in server.app_pids()


def test_kuria(start_example: Callable[..., Server]) -> None:
    server = start_example("kuria")
    status, body = get(server)
    assert status == 200
    assert body.startswith("Hello from Kuria process ") and body.endswith("(PORT: not set)\n"), body
    assert pid_in(body) in server.app_pids()
    assert re.search(r"Spawning process \d+ of kuria \(Kuria protocol\)", server.log())


def test_two_apps(start_example: Callable[..., Server]) -> None:
    server = start_example("two-apps", ready=2)
    hello_status, hello = get(server, "hello.localhost")
    node_status, node = get(server, "node.localhost:3000")  # the port in Host does not matter
    other_status, other = get(server, "example.com")
    assert (hello_status, node_status, other_status) == (200, 200, 404)
    assert hello.startswith("Hello from process ")
    assert node.startswith("Hello from Node.js process ")
    assert "No application is configured for this host" in other
    assert {pid_in(hello), pid_in(node)} <= set(server.app_pids())

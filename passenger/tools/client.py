"""A small synchronous client of a running server's admin API, shared by passenger-status and passenger-config.

It finds the server's instance directory (``--instance``, ``--instance-registry-dir``),
connects to the admin API's Unix socket with stdlib ``http.client``, and
authenticates as Passenger's tools do: basic auth as ``admin`` when this user
may read the full admin password, else as ``ro_admin`` with the read-only one,
else nothing (the server then knows root and its own user by their peer
credentials).

Every failure becomes a ``ToolError``: a one-line message and an exit code
(``ERROR`` for a refusal by the server or bad usage, ``NOT_RUNNING`` when no
server runs or the instance is not found).  ``run`` turns them into the
tool's exit status.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import socket
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NoReturn

import attrs

from passenger.admin import instance
from passenger.admin.auth import FULL_USER, READ_ONLY_USER

#: Exit statuses of the tools.
OK = 0
ERROR = 1
NOT_RUNNING = 2

#: Seconds to wait for the server to connect and answer (its answers take milliseconds).
TIMEOUT = 30.0


class ToolError(Exception):
    """What went wrong, for the user (one line), and the exit status it means."""

    def __init__(self, message: str, code: int = ERROR) -> None:
        super().__init__(message)
        self.code = code


class ServerError(ToolError):
    """The server answered with an error status (4xx, 5xx); ``message`` is its reason."""

    def __init__(self, method: str, path: str, response: Response) -> None:
        self.status = response.status
        self.message = response.error_message()
        hint = ""
        if response.status in (401, 403):
            hint = (" (run this as root or as the server's user, or as a user who may read the admin passwords in "
                    "the instance directory)")
        super().__init__(f"{self.message} [{method} {path}: {response.status} {response.reason}]{hint}")


class UsageExit(Exception):
    """argparse wants to exit (``--help``, a usage error): ``main`` returns ``status`` instead."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class Parser(argparse.ArgumentParser):
    """argparse whose exits are return values of ``main``, and whose usage errors exit with ERROR (1), not 2.

    Status 2 is kept for "no server running", as the tools' documentation says.
    """

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if message:
            sys.stderr.write(message)
        raise UsageExit(status)

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(ERROR, f"{self.prog}: error: {message}\n")


def add_instance_options(parser: argparse.ArgumentParser) -> None:
    """``--instance`` and ``--instance-registry-dir``, which every tool and subcommand takes."""
    group = parser.add_argument_group("choosing the server")
    group.add_argument("--instance", metavar="NAME",
                       help="the server's instance directory name (passenger.XXXXXXXX) or its pid; "
                            "needed when several servers run (see passenger-config list-instances)")
    group.add_argument("--instance-registry-dir", metavar="DIR",
                       help="where the server made its instance directory, as given to the server "
                            "[default: $TMPDIR or /tmp]")


def registry(args: argparse.Namespace) -> Path:
    return instance.registry_dir(args.instance_registry_dir)


def find_instance(args: argparse.Namespace) -> instance.Instance:
    """The server that ``--instance`` and ``--instance-registry-dir`` name, or the only one running."""
    where = registry(args)
    try:
        return instance.find(where, args.instance)
    except instance.InstanceError as e:
        # Several servers and no --instance is a usage error; no server (or no such one) is NOT_RUNNING.
        raise ToolError(str(e), NOT_RUNNING if isinstance(e, instance.NoInstance) else ERROR) from None


@attrs.frozen
class Response:
    status: int
    reason: str
    content_type: str
    body: bytes

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError as e:
            raise ToolError(f"the server's answer is not JSON ({e}): {_one_line(self.text())[:200]}") from None

    def error_message(self) -> str:
        """The server's reason for an error status: its ``{"error": ...}``, else its text, else the status."""
        try:
            value = json.loads(self.body)
        except ValueError:
            value = None
        if isinstance(value, dict) and isinstance(value.get("error"), str):
            return _one_line(value["error"])
        return _one_line(self.text())[:200] or self.reason or f"status {self.status}"


def _one_line(text: str) -> str:
    return " ".join(text.split())


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over a Unix stream socket."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.socket_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def authorization(target: instance.Instance) -> str | None:
    """The Authorization header for ``target``: the best account whose password this user may read."""
    for full, user in ((True, FULL_USER), (False, READ_ONLY_USER)):
        password = target.password(full)
        if password:
            return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return None


class Client:
    """Requests to one server's admin API, one connection each."""

    def __init__(self, target: instance.Instance, timeout: float = TIMEOUT) -> None:
        self.instance = target
        self.timeout = timeout
        self.authorization = authorization(target)

    def describe(self) -> str:
        return f"the passenger server {self.instance.name} (pid {self.instance.pid})"

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: Mapping[str, str] | None = None) -> Response:
        """Send one request; any answer is returned, failing to get one is a ToolError."""
        socket_path = str(self.instance.socket_path)
        if not self.instance.has_socket or len(socket_path.encode()) > instance.MAX_SOCKET_PATH:
            raise ToolError(f"the admin socket path of {self.describe()}, {socket_path}, is too long for a Unix "
                            "socket: that server serves its admin API only on --admin-listen (start it with a "
                            "shorter --instance-registry-dir)")
        all_headers = {"Accept": "application/json, text/plain, application/xml", **(headers or {})}
        if self.authorization is not None:
            all_headers["Authorization"] = self.authorization
        connection = UnixHTTPConnection(socket_path, self.timeout)
        try:
            connection.request(method, path, body=body, headers=all_headers)
            reply = connection.getresponse()
            data = reply.read()
        except TimeoutError:
            raise ToolError(f"{self.describe()} did not answer {method} {path} within {self.timeout:g}s") from None
        except (ConnectionRefusedError, FileNotFoundError) as e:
            raise ToolError(f"{self.describe()} is not answering on {socket_path}: {e.strerror}; it may be starting, "
                            "stopping or gone", NOT_RUNNING) from None
        except OSError as e:
            raise ToolError(f"cannot talk to {self.describe()} on {socket_path}: {e.strerror or e}") from None
        except http.client.HTTPException as e:
            raise ToolError(f"{self.describe()} sent no valid HTTP answer to {method} {path}: "
                            f"{type(e).__name__} {e}") from None
        finally:
            connection.close()
        return Response(reply.status, reply.reason, reply.getheader("Content-Type", ""), data)

    def checked(self, method: str, path: str, body: bytes | None = None,
                headers: Mapping[str, str] | None = None) -> Response:
        """``request``, with an error status (4xx, 5xx) raised as a ServerError."""
        response = self.request(method, path, body, headers)
        if not response.ok:
            raise ServerError(method, path, response)
        return response

    def get(self, path: str) -> Response:
        return self.checked("GET", path)

    def get_json(self, path: str) -> Any:
        return self.get(path).json()

    def post_json(self, path: str, value: Mapping[str, Any]) -> Any:
        """POST ``value`` as JSON (the API's requests that change something must be JSON POSTs)."""
        body = json.dumps(value).encode()
        return self.checked("POST", path, body, {"Content-Type": "application/json"}).json()


def write_out(text: str) -> None:
    """Print ``text`` on stdout, with exactly one newline at its end."""
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    sys.stdout.flush()


def run(prog: str, main: Callable[[], int]) -> int:
    """Run a tool's ``main`` body: its errors become a message on stderr and an exit status."""
    try:
        return main()
    except UsageExit as e:
        return e.status
    except ToolError as e:
        sys.stdout.flush()
        print(f"{prog}: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # Our reader went away (| head): nothing more to say, and nothing to say it to.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return ERROR

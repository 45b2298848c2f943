"""``passenger-config``: steer a running server (Passenger's tool, passenger-gls.md §4.3).

  restart-app [PATH-PREFIX] [--name NAME]  restart app groups (blocking unless --rolling-restart)
  detach-process PID                       take a process out of its pool (it finishes, then stops)
  list-instances                           the running servers (and remove the instance dirs of dead ones)
  reopen-logs                              reopen the server's log files (after logrotate)
  api-call METHOD PATH [-d JSON]           any admin API request; prints the answer
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime
from typing import Any

from passenger import __version__
from passenger.admin import instance
from passenger.tools.client import (
    ERROR,
    NOT_RUNNING,
    Client,
    Parser,
    ServerError,
    ToolError,
    add_instance_options,
    find_instance,
    registry,
    run,
    write_out,
)

PROG = "passenger-config"


# restart-app

def matching_groups(groups: list[dict[str, Any]], prefix: str) -> list[dict[str, Any]]:
    """The groups whose app root starts with ``prefix`` made absolute (Passenger's rule: a plain string prefix).

    ``.`` is the current directory and ``/`` every app.  The prefix matches as
    written (made absolute) and with its symbolic links resolved.
    """
    prefixes = {os.path.abspath(prefix), os.path.realpath(prefix)}
    return [g for g in groups if any(str(g.get("app_root", "")).startswith(p) for p in prefixes)]


def app_list(groups: list[dict[str, Any]]) -> str:
    if not groups:
        return "  (none)"
    return "\n".join(f"  {g['name']} (app root {g['app_root']})" for g in groups)


def restart_app(args: argparse.Namespace) -> int:
    if args.prefix is not None and args.name is not None:
        raise ToolError("give an app path prefix or --name, not both")
    try:
        target = find_instance(args)
    except ToolError as e:
        if e.code == NOT_RUNNING and args.ignore_passenger_not_running:
            print(f"{PROG}: {e} (ignored: --ignore-passenger-not-running)", file=sys.stderr)
            return 0
        raise
    client = Client(target)
    groups: list[dict[str, Any]] = client.get_json("/pool.json").get("groups", [])
    if args.name is not None:
        chosen = [g for g in groups if g["name"] == args.name]
        missing = f"There is no app named {args.name!r} in {target.name}."
    elif args.prefix is not None:
        chosen = matching_groups(groups, args.prefix)
        missing = (f"There is no app whose root starts with {os.path.abspath(args.prefix)} in {target.name}.")
    else:
        raise ToolError("say which app to restart: an app root path prefix (. for the current directory, / for "
                        f"every app) or --name NAME. The apps of {target.name}:\n{app_list(groups)}")
    if not chosen:
        if args.ignore_app_not_running:
            print(f"{PROG}: {missing} (ignored: --ignore-app-not-running)", file=sys.stderr)
            return 0
        raise ToolError(f"{missing} Its apps:\n{app_list(groups)}")
    method = "rolling" if args.rolling_restart else "blocking"
    for group in chosen:
        write_out(f"Restarting {group['name']}")
        try:
            client.post_json("/pool/restart_app_group.json", {"name": group["name"], "restart_method": method})
        except ServerError as e:
            if e.status == 404 and args.ignore_app_not_running:  # gone since we looked
                print(f"{PROG}: {e.message} (ignored: --ignore-app-not-running)", file=sys.stderr)
                continue
            raise
    return 0


# detach-process

def positive_pid(raw: str) -> int:
    try:
        pid = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a process id") from None
    if pid <= 0:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a process id")
    return pid


def detach_process(args: argparse.Namespace) -> int:
    client = Client(find_instance(args))
    try:
        answer = client.post_json("/pool/detach_process.json", {"pid": args.pid})
    except ServerError as e:
        raise ToolError(f"Could not detach process {args.pid}: {e.message}") from None
    write_out(f"Process {args.pid} of {answer.get('app', '?')} detached: it finishes its requests, then stops.")
    return 0


# list-instances

def created_text(properties: dict[str, Any]) -> str:
    created = properties.get("created_at")
    if not isinstance(created, (int, float)):
        return "?"
    return datetime.fromtimestamp(created).astimezone().strftime("%Y-%m-%d %H:%M:%S %z")


def list_instances(args: argparse.Namespace) -> int:
    where = registry(args)
    for path in instance.remove_stale(where):
        print(f"Removed the stale instance directory {path} (its server is gone).", file=sys.stderr)
    found = instance.running(where)
    if args.instance is not None:
        found = [i for i in found if args.instance in (i.name, str(i.pid))]
        if not found:
            raise ToolError(f"There is no passenger instance named {args.instance!r} in {where}.", NOT_RUNNING)
    if args.json:
        write_out(json.dumps([{"name": i.name, "path": str(i.path), **i.properties} for i in found], indent=2))
        return 0
    if not found:
        write_out(f"No passenger server is running (no instance directory in {where}).")
        return 0
    rows = [("Name", "PID", "Listening on", "Created")]
    rows += [(i.name, str(i.pid), ", ".join(map(str, i.properties.get("listen", []))) or "-",
              created_text(i.properties)) for i in found]
    widths = [max(len(row[column]) for row in rows) for column in range(3)]
    lines = ["  ".join([*(row[column].ljust(widths[column]) for column in range(3)), row[3]]) for row in rows]
    lines.insert(1, "-" * len(max(lines, key=len)))
    write_out("\n".join(lines))
    return 0


# reopen-logs

def reopen_logs(args: argparse.Namespace) -> int:
    client = Client(find_instance(args))
    client.post_json("/reopen_logs.json", {})
    write_out(f"Reopened the log files of {client.instance.name} (pid {client.instance.pid}).")
    return 0


# api-call

def api_call(args: argparse.Namespace) -> int:
    client = Client(find_instance(args))
    method = args.method.upper()
    path = args.path if args.path.startswith("/") else "/" + args.path
    body = None if args.data is None else args.data.encode()
    headers = {}
    if body is not None or method not in ("GET", "HEAD"):
        headers["Content-Type"] = "application/json"
        body = body if body is not None else b""
    response = client.request(method, path, body, headers)
    sys.stdout.write(response.text())
    sys.stdout.flush()
    if not response.ok:
        raise ServerError(method, path, response)
    return 0


# The command line.

def build_parser() -> Parser:
    parser = Parser(prog=PROG, description="Steer a running passenger server through its admin API.",
                    epilog="Exit status: 0 ok, 1 an error from the server or bad usage, 2 no server running "
                           "(or no such instance). `passenger-config COMMAND --help` tells more.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    restart = commands.add_parser(
        "restart-app", help="restart app groups",
        description="Restart every app whose app root starts with PATH-PREFIX (. for the current directory, / for "
                    "every app), or the app named with --name. The restart is blocking (the old processes stop, "
                    "then new ones start; requests wait meanwhile) unless --rolling-restart.")
    restart.add_argument("prefix", nargs="?", metavar="PATH-PREFIX", help="restart the apps whose root starts here")
    restart.add_argument("--name", help="restart the app group with exactly this name")
    restart.add_argument("--rolling-restart", action="store_true",
                         help="start each new process before stopping an old one: no request waits")
    restart.add_argument("--ignore-app-not-running", action="store_true",
                         help="exit 0 (not 1) when no app matches")
    restart.add_argument("--ignore-passenger-not-running", action="store_true",
                         help="exit 0 (not 2) when no server runs")
    restart.set_defaults(handler=restart_app)

    detach = commands.add_parser(
        "detach-process", help="take a process out of its pool",
        description="Detach an app process from the pool: it gets no new requests, finishes those it has, then "
                    "stops; the pool spawns a replacement if the app needs one.")
    detach.add_argument("pid", type=positive_pid, metavar="PID", help="the process (see passenger-status)")
    detach.set_defaults(handler=detach_process)

    listing = commands.add_parser(
        "list-instances", help="list the running servers",
        description="List the running passenger servers of the instance registry (their name, pid, addresses and "
                    "start time), and remove the instance directories of servers that are gone.")
    listing.add_argument("--json", action="store_true", help="print them as JSON, with all their properties")
    listing.set_defaults(handler=list_instances)

    reopen = commands.add_parser(
        "reopen-logs", help="reopen the server's log files",
        description="Make the server reopen its log files (after logrotate moved them).")
    reopen.set_defaults(handler=reopen_logs)

    call = commands.add_parser(
        "api-call", help="send any request to the admin API",
        description="Send one request to the server's admin API and print its answer; an error status exits 1. "
                    "Example: passenger-config api-call POST /pool/detach_process.json -d '{\"pid\": 1234}'")
    call.add_argument("method", metavar="METHOD", help="GET or POST")
    call.add_argument("path", metavar="PATH", help="e.g. /pool.json")
    call.add_argument("-d", "--data", metavar="JSON", help="the request body (sent as application/json)")
    call.set_defaults(handler=api_call)

    for command in (restart, detach, listing, reopen, call):
        add_instance_options(command)
    return parser


def config(parser: Parser, argv: list[str] | None) -> int:
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return ERROR
    handler = args.handler
    result: int = handler(args)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    return run(PROG, lambda: config(parser, argv))


if __name__ == "__main__":
    raise SystemExit(main())

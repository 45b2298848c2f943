"""``passenger-status``: what a running server is doing (Passenger's tool, passenger-gls.md §4.2).

``--show=pool`` (the default) prints a header and the pool as text: every app
group, its queue, and each process's sessions, requests processed, uptime, CPU
and memory.  ``--show=requests`` prints the requests in flight (JSON),
``--show=json`` and ``--show=xml`` the whole pool state, for programs.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime

from passenger import __version__
from passenger.admin import instance
from passenger.tools.client import Client, Parser, ToolError, add_instance_options, find_instance, run, write_out

PROG = "passenger-status"
SHOWS = ("pool", "requests", "server", "json", "xml")


def build_parser() -> Parser:
    parser = Parser(
        prog=PROG,
        description="Show what a running passenger server is doing: its app groups and their processes "
                    "(sessions, requests processed, uptime, CPU, memory), or the requests in flight.",
        epilog="Exit status: 0 ok, 1 an error from the server or bad usage, 2 no server running (or no such "
               "instance).")
    parser.add_argument("--show", choices=SHOWS, default="pool", metavar="WHAT",
                        help="pool: the pool as text (default); requests (or server): the requests in flight, as "
                             "JSON; json or xml: the whole pool state")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="with --show=pool: also each process's address and generation, the queued app groups "
                             "and the last spawn error")
    parser.add_argument("--no-header", dest="header", action="store_false",
                        help="with --show=pool: leave out the Version/Date/Instance header")
    parser.add_argument("instance_name", nargs="?", metavar="INSTANCE",
                        help="the same as --instance NAME (as Passenger's passenger-status takes it)")
    add_instance_options(parser)
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    return parser


def header(target: instance.Instance) -> str:
    """Passenger's header: the tool's version, now, and which server answers."""
    software = target.properties.get("server_software") or f"passenger/{target.properties.get('version', '?')}"
    now = datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %z")
    return f"Version : {__version__}\nDate    : {now}\nInstance: {target.name} ({software})\n\n"


def status(args: argparse.Namespace) -> int:
    if args.instance_name is not None:
        if args.instance is not None and args.instance != args.instance_name:
            raise ToolError(f"two instances given: {args.instance_name} and --instance {args.instance}")
        args.instance = args.instance_name
    target = find_instance(args)
    client = Client(target)
    if args.show == "pool":
        text = client.get("/pool.txt?verbose=1" if args.verbose else "/pool.txt").text()
        write_out((header(target) if args.header else "") + text)
    elif args.show in ("requests", "server"):
        write_out(json.dumps(client.get_json("/server.json"), indent=2))
    elif args.show == "json":
        write_out(json.dumps(client.get_json("/pool.json"), indent=2))
    else:
        write_out(client.get("/pool.xml").text())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    return run(PROG, lambda: status(parser.parse_args(argv)))


if __name__ == "__main__":
    raise SystemExit(main())

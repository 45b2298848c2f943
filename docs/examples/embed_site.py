#!/usr/bin/env python3
"""A twisted.web site of your own that serves an app pool under /app.

    python docs/examples/embed_site.py --port 8080

    curl http://127.0.0.1:8080/         # the site's own page
    curl http://127.0.0.1:8080/app/     # examples/hello, through passenger

The app gets the path below /app, and X-Forwarded-Prefix: /app.  Environment:
APP_ROOT and APP_COMMAND (the app to run: examples/hello, 'python3 app.py'),
APP_INSTANCES (2).  TERM or INT (Ctrl-C) stops it: the site stops listening,
in-flight requests finish, every app process is stopped, then it exits 0.
See docs/embedding.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from twisted.application import strports
from twisted.application.service import MultiService
from twisted.logger import globalLogBeginner, textFileLogObserver
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from passenger.embed import AppPoolResource, PassengerService, load_config

HERE = os.path.dirname(os.path.abspath(__file__))


class Hello(Resource):
    """The site's own page."""

    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        return b"hello from the site\n"


def build(reactor: Any, port: int, interface: str) -> MultiService:
    """The whole program as services: the app pool (no listener of its own) and the site that mounts it."""
    config = load_config(
        root=os.environ.get("APP_ROOT", os.path.join(HERE, "..", "..", "examples", "hello")),
        start_command=os.environ.get("APP_COMMAND", "python3 app.py"),
        min_instances=int(os.environ.get("APP_INSTANCES", "2")),
        listen=[],  # the site below is the only listener
    )
    passenger = PassengerService(config, reactor)
    root = Resource()
    root.putChild(b"", Hello())
    root.putChild(b"app", AppPoolResource(passenger))
    services = MultiService()
    passenger.setServiceParent(services)
    strports.service(f"tcp:{port}:interface={interface}", Site(root), reactor=reactor).setServiceParent(services)
    return services


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--interface", default="127.0.0.1")
    args = parser.parse_args(argv)
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    from twisted.internet import reactor

    services = build(reactor, args.port, args.interface)
    services.privilegedStartService()
    services.startService()
    # The reactor stops on TERM and INT; it waits for this Deferred (the app processes stopped) before it exits.
    reactor.addSystemEventTrigger("before", "shutdown", services.stopService)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())

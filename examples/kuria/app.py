#!/usr/bin/env python3
"""A Kuria-protocol app for passenger: standard library only.

A Kuria app gets no $PORT. It listens where it likes (here: a free port on
127.0.0.1 that the kernel picks), says where in the spawn work directory that
passenger gives it in $PASSENGER_SPAWN_WORK_DIR, and then says it is ready:

  response/properties.json   the sockets it listens on, and their concurrency
  response/finish            "1" when ready, "0" when it could not start
  response/error/summary     (on failure) one line that passenger shows

Start it with --app-supports-kuria-protocol (see README.md).
"""
import json
import os
import sys
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

WORK_DIR = os.environ["PASSENGER_SPAWN_WORK_DIR"]
RESPONSE = os.path.join(WORK_DIR, "response")


class Hello(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        port = os.environ.get("PORT", "not set")
        body = f"Hello from Kuria process {os.getpid()} on port {self.server.server_address[1]} (PORT: {port})\n"
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def write(name: str, text: str) -> None:
    with open(os.path.join(RESPONSE, name), "w") as f:
        f.write(text)


def step(name: str, state: str) -> None:
    """Record a journey step (optional: passenger shows the steps in a failure report)."""
    folder = os.path.join(RESPONSE, "steps", name)
    if os.path.isdir(folder):
        write(os.path.join("steps", name, "state"), state)


def main() -> None:
    step("subprocess_listen", "STEP_IN_PROGRESS")
    try:
        server = ThreadingHTTPServer(("127.0.0.1", 0), Hello)
        server.daemon_threads = True
        port = server.server_address[1]
        # Up to 4 requests at once per process: passenger queues the rest and spawns more processes.
        properties = {"sockets": [{"address": f"tcp://127.0.0.1:{port}", "protocol": "http", "concurrency": 4,
                                   "accept_http_requests": True, "description": "main"}]}
        write("properties.json", json.dumps(properties))
    except Exception as e:
        step("subprocess_listen", "STEP_ERRORED")
        os.makedirs(os.path.join(RESPONSE, "error"), exist_ok=True)
        write(os.path.join("error", "summary"), f"The Kuria example could not listen: {e}")
        write(os.path.join("error", "advanced_problem_details"), traceback.format_exc())
        write("finish", "0")  # a FIFO: passenger reads it
        sys.exit(1)
    step("subprocess_listen", "STEP_PERFORMED")
    print(f"Kuria example {os.getpid()} listening on 127.0.0.1:{port}", flush=True)
    write("finish", "1")
    server.serve_forever()


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""A Kuria-protocol app: no $PORT; it serves HTTP on a Unix socket it reports in properties.json,
records its own journey steps, and signals readiness by writing '1' to response/finish.
GET /lines?n=K answers K numbered 16-byte lines (a large body from a Unix socket); anything else, JSON."""
import json
import os
import socketserver
import sys
import time
from http.server import BaseHTTPRequestHandler

work = os.environ["PASSENGER_SPAWN_WORK_DIR"]
steps = os.path.join(work, "response", "steps")


def step(name: str, state: str) -> None:
    with open(os.path.join(steps, name, "state"), "w") as f:
        f.write(state)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def address_string(self) -> str:
        return "unix"

    def log_message(self, fmt: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        if self.path.startswith("/lines?n="):  # numbered 16-byte lines, as echo_app's /lines
            count = int(self.path.split("=", 1)[1])
            self.send_response(200)
            self.send_header("Content-Length", str(16 * count))
            self.end_headers()
            for start in range(0, count, 4096):
                self.wfile.write(b"".join(b"%015x\n" % i for i in range(start, min(start + 4096, count))))
            return
        args = json.load(open(os.path.join(os.environ["KURIA_TEST_DIR"], "args.json")))
        body = json.dumps({"pid": os.getpid(), "port_env": os.environ.get("PORT"), "args": args}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


if __name__ == "__main__":
    # Keep a copy of args.json: the work directory is removed once the spawn succeeds.
    keep = os.environ["KURIA_TEST_DIR"]
    with open(os.path.join(work, "args.json")) as src, open(os.path.join(keep, "args.json"), "w") as dst:
        dst.write(src.read())
    step("subprocess_listen", "STEP_IN_PROGRESS")
    path = os.path.join(keep, "http.sock")
    server = Server(path, Handler)
    time.sleep(0.05)  # a visible listen step
    props = {"sockets": [{"address": "unix:" + path, "protocol": "http", "concurrency": 4,
                          "accept_http_requests": True, "description": "main"}]}
    with open(os.path.join(work, "response", "properties.json"), "w") as f:
        json.dump(props, f)
    step("subprocess_listen", "STEP_PERFORMED")
    print(f"kuria app {os.getpid()} on {path}", flush=True)
    with open(os.path.join(work, "response", "finish"), "w") as f:
        f.write("1")
    sys.stdout.flush()
    server.serve_forever()

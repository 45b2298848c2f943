#!/usr/bin/env python3
"""echo_app's endpoints, served on a Unix socket through the Kuria protocol (no $PORT).

Each process listens on a socket of its own in a fresh directory, reports it in
response/properties.json (concurrency 0: as many requests at once as come), and
signals readiness by writing '1' to response/finish.
"""
import json
import os
import socketserver
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from echo_app import Handler


class UnixHandler(Handler):
    disable_nagle_algorithm = False  # a Unix socket has no Nagle (and refuses TCP_NODELAY)

    def address_string(self) -> str:
        return "unix"


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    request_queue_size = 256


if __name__ == "__main__":
    work = os.environ["PASSENGER_SPAWN_WORK_DIR"]
    path = os.path.join(tempfile.mkdtemp(prefix="kuria-echo-"), "http.sock")
    server = Server(path, UnixHandler)
    os.chmod(os.path.dirname(path), 0o755)
    sockets = [{"address": "unix:" + path, "protocol": "http", "concurrency": 0, "accept_http_requests": True}]
    with open(os.path.join(work, "response", "properties.json"), "w") as f:
        json.dump({"sockets": sockets}, f)
    with open(os.path.join(work, "response", "finish"), "w") as f:
        f.write("1")
    print(f"kuria echo app {os.getpid()} on {path}", flush=True)
    server.serve_forever()

#!/usr/bin/env python3
"""An app with a health endpoint: /healthz fails its first N checks (--healthy-after N),
and fails forever after a request to /sick.  Other paths: "Hello from <pid>".
With --listen-on HOST:PORT it listens there instead of on 127.0.0.1:$PORT."""
import argparse
import os
import socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

state = {"checks": 0, "sick": False}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    healthy_after = 0

    def log_message(self, fmt: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        if self.path == "/healthz":
            state["checks"] += 1
            print(f"health check {state['checks']}", flush=True)
            ok = state["checks"] > self.healthy_after and not state["sick"]
            status, body = (200, b"ok") if ok else (503, b"not yet")
        elif self.path == "/sick":
            state["sick"] = True
            status, body = 200, b"now sick"
        else:
            status, body = 200, b"Hello from %d" % os.getpid()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Pid", str(os.getpid()))
        self.end_headers()
        self.wfile.write(body)


class Server6(ThreadingHTTPServer):
    address_family = socket.AF_INET6


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--healthy-after", type=int, default=0)
    parser.add_argument("--listen-on")
    options = parser.parse_args()
    Handler.healthy_after = options.healthy_after
    if options.listen_on:
        host, _, port = options.listen_on.rpartition(":")
        host = host.strip("[]")
        server_class = Server6 if ":" in host else ThreadingHTTPServer
        server = server_class((host, int(port.replace("$PORT", os.environ.get("PORT", "0")))), Handler)
    else:
        server = ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler)
    print(f"health app {os.getpid()} listening on {server.server_address}", flush=True)
    server.serve_forever()

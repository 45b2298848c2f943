#!/usr/bin/env python3
"""A test app whose answers carry hop-by-hop headers the relay must not pass on.

  /hop   200 "ok" with Connection: keep-alive, X-Hop-Secret; X-Hop-Secret; Keep-Alive;
         Proxy-Connection; Trailer; Upgrade; and X-Kept: yes (end-to-end, must pass)
Anything else: 404.
"""
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        if self.path != "/hop":
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = b"ok"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "keep-alive, X-Hop-Secret")
        self.send_header("X-Hop-Secret", "1")
        self.send_header("Keep-Alive", "timeout=5, max=100")
        self.send_header("Proxy-Connection", "keep-alive")
        self.send_header("Trailer", "X-Checksum")
        self.send_header("Upgrade", "h2c")
        self.send_header("X-Kept", "yes")
        self.end_headers()
        self.wfile.write(body)


if __name__ == "__main__":
    port = int(os.environ["PORT"])
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    server.serve_forever()

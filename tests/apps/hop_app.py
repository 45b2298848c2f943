#!/usr/bin/env python3
"""A test app whose answers carry hop-by-hop headers the relay must not pass on.

  /hop   200 "ok" with Connection: keep-alive, X-Hop-Secret; X-Hop-Secret; Keep-Alive;
         Proxy-Connection; Trailer; Upgrade; and X-Kept: yes (end-to-end, must pass)
  /overlong   Content-Length: 100000 in two writes, the second with 1000 bytes too many
  /bigclose   1 MiB in 64 KiB writes with Connection: close, then the app closes
Anything else: 404.
"""
import os
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        if self.path == "/overlong":
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 10)
            self.wfile.flush()
            time.sleep(0.05)  # the rest comes in later reads, past the parser
            self.wfile.write(b"x" * 99990 + b"y" * 1000)
            self.close_connection = True
            return
        if self.path == "/bigclose":
            self.send_response(200)
            self.send_header("Content-Length", str(1 << 20))
            self.send_header("Connection", "close")
            self.end_headers()
            for _ in range(16):
                self.wfile.write(b"z" * 65536)
                self.wfile.flush()
            self.close_connection = True
            return
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

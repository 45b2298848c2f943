#!/usr/bin/env python3
"""echo_app (same endpoints, X-Pid header) that says what it does, for lifecycle tests.

It prints ``request <METHOD> <path>`` on stdout when a request arrives, before
answering it, so a test can wait for "the app has the request" in the server's
log instead of sleeping.

  /drop           reads the request, then closes the connection without answering
                  (the process lives on)

  --ignore-term   ignore SIGTERM (and the closing of stdin): only KILL stops it
  --chatty        print "hello-out" on stdout and "hello-err" on stderr at start
  --announce-stop print "app <pid> got SIGTERM" when asked to stop (as echo_app)
"""
import os
import signal
import sys
from http.server import ThreadingHTTPServer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from echo_app import Handler, announce_stop


class LoudHandler(Handler):
    def handle_any(self) -> None:
        print(f"request {self.command} {self.path}", flush=True)
        if self.path.startswith("/drop"):
            self._body()
            self.close_connection = True
            return
        super().handle_any()

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = handle_any


if __name__ == "__main__":
    if "--ignore-term" in sys.argv:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if "--announce-stop" in sys.argv:
        announce_stop()
    if "--chatty" in sys.argv:
        print("hello-out", flush=True)
        print("hello-err", file=sys.stderr, flush=True)
    port = int(os.environ["PORT"])
    print(f"life app {os.getpid()} listening on {port}", flush=True)
    server = ThreadingHTTPServer(("127.0.0.1", port), LoudHandler)
    server.daemon_threads = True
    server.serve_forever()

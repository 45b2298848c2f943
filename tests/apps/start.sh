#!/bin/sh
# A shell-started app: serves tests/apps/static with Python's http.server on $PORT.
# $PYTHON picks the interpreter (the tests pass theirs); exec keeps the spawned pid.
set -e
cd "$(dirname "$0")/static"
exec "${PYTHON:-python3}" -m http.server --bind 127.0.0.1 "$PORT"

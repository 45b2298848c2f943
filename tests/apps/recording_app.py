#!/usr/bin/env python3
"""A raw-socket HTTP/1.1 test app that records exactly what it receives.

It listens on 127.0.0.1:$PORT (standard library only, one thread per
connection) and parses every request with a small parser of its own that is
strict on purpose: CRLF line ends only, token method and header names, no
control characters, no obs-fold, exactly one Host, at most one Content-Length
(digits only), Transfer-Encoding exactly ``chunked`` and never together with
Content-Length, chunk sizes of 1-16 hex digits.  A request that breaks a rule is
recorded with an ``error`` (and its raw bytes), answered 400, and its
connection closed: whatever the server in front of it sent that it should not
have shows up in the record.

Each request is recorded as soon as its head has arrived (``complete`` false),
and completed when its body has (``complete`` true).  A record entry:

  seq, conn        order of arrival; which app connection it came on
  method, target, version
  headers          [[name, value], ...] as received (latin-1 strings)
  head             the raw head, latin-1, up to and including the blank line
  framing          "none", "length" or "chunked"
  chunk_lines      the raw chunk-size lines (chunked framing)
  trailers         [[name, value], ...] after the last chunk
  raw_body         the body as framed on the wire, latin-1
  body             the decoded body, latin-1
  complete         the whole body arrived
  ended            (only when true) the connection closed before the body was complete
  error            why the strict parser refused it (then also ``raw``)

Routes (none of them is recorded but ordinary requests):

  GET /__record        JSON list of every entry since the last /__record; clears it
  GET /__peek          the same list, without clearing it
  GET /__broken?kind=K an invalid response, then the connection closes:
                       cl-te      Content-Length and Transfer-Encoding together
                       two-cl     two different Content-Length headers
                       bad-cl     Content-Length: abc
                       bad-chunk  an invalid chunk size
                       nul-header a NUL in a header value
                       bare-lf    LF-only line ends in the head
                       (every broken body contains the word SMUGGLED; /__broken
                       itself is recorded, so a retry would show)
  GET /__dated         200 with the app's own Date header (Mon, 01 Jan 2001 ...)
Anything else: 200 "ok <seq>\\n" with Content-Length and no Date header, kept
alive unless the request asked to close.  The app never answers ``Expect: 100-continue`` itself.
"""
import json
import os
import re
import socket
import sys
import threading
from urllib.parse import parse_qs, urlsplit

TCHAR = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]"
TOKEN = re.compile(TCHAR + rb"+\Z")
REQUEST_LINE = re.compile(rb"(" + TCHAR + rb"+) ([\x21-\x7e]+) (HTTP/1\.[01])\Z")
FIELD_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*\Z")
CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})((?:;[^\r\n]*)?)\Z")
QUOTED = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
CHUNK_EXT = re.compile(rb"(?:[ \t]*;[ \t]*" + TCHAR + rb"+(?:[ \t]*=[ \t]*(?:" + TCHAR + rb"+|" + QUOTED + rb"))?)*\Z")
MAX_HEAD = 1 << 20

BROKEN = {
    "cl-te": b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\nTransfer-Encoding: chunked\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n",
    "two-cl": b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\nContent-Length: 20\r\n\r\nSMUGGLEDSMUGGLEDSMUG",
    "bad-cl": b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\nSMUGGLED",
    "bad-chunk": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nSMUGGLED\r\n0\r\n\r\n",
    "nul-header": b"HTTP/1.1 200 OK\r\nX-Bad: a\x00b\r\nContent-Length: 8\r\n\r\nSMUGGLED",
    "bare-lf": b"HTTP/1.1 200 OK\nContent-Length: 8\n\nSMUGGLED",
}

_lock = threading.Lock()
_records: list[dict] = []
_seq = 0
_conns = 0


class Refused(Exception):
    """The strict parser refuses what it got."""


class Closed(Exception):
    """The peer closed the connection before the request was complete."""


def _s(data: bytes) -> str:
    return data.decode("latin-1")


class Connection:
    def __init__(self, sock: socket.socket, number: int) -> None:
        self.sock = sock
        self.number = number
        self.buf = b""

    def _fill(self) -> None:
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:  # the server aborted the connection
            data = b""
        if not data:
            raise Closed()
        self.buf += data

    def _take(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _line(self) -> bytes:
        """One CRLF-terminated line (without it); a bare CR or LF is refused."""
        while True:
            lf = self.buf.find(b"\n")
            if lf >= 0:
                line, self.buf = self.buf[:lf], self.buf[lf + 1:]
                if not line.endswith(b"\r"):
                    raise Refused(f"bare LF after {line!r}")
                if b"\r" in line[:-1]:
                    raise Refused(f"bare CR in {line!r}")
                return line[:-1]
            if len(self.buf) > MAX_HEAD:
                raise Refused("line too long")
            self._fill()

    def _head(self) -> bytes:
        """The raw head up to the first empty line (a blank line after any line end)."""
        while True:
            ends = [i for i in (self.buf.find(b"\n\r\n"), self.buf.find(b"\n\n")) if i >= 0]
            if ends:
                end = min(ends)
                size = end + (3 if self.buf[end + 1:end + 2] == b"\r" else 2)
                head, self.buf = self.buf[:size], self.buf[size:]
                return head
            if len(self.buf) > MAX_HEAD:
                raise Refused("head too long")
            self._fill()

    def serve(self) -> None:
        try:
            while self._one():
                pass
        except Closed:
            if self.buf:
                record({"conn": self.number, "error": "connection closed inside a head", "raw": _s(self.buf),
                        "complete": False})
        except OSError:
            pass
        finally:
            self.sock.close()

    def _one(self) -> bool:
        """Read, record and answer one request; False when the connection is done."""
        if not self.buf:
            try:
                self._fill()
            except Closed:
                return False
        head = self._head()
        entry: dict = {"conn": self.number, "head": _s(head), "complete": False, "error": None}
        try:
            self._parse_head(head, entry)
        except Refused as why:
            entry["error"] = str(why)
            entry["raw"] = _s(head + self.buf)
            record(entry)
            self._refuse()
            return False
        target = entry["target"]
        path = urlsplit(target).path
        quiet = path in ("/__record", "/__peek")
        if not quiet:
            record(entry)
        try:
            self._read_body(entry)
        except Closed:
            with _lock:
                entry["ended"] = True
            return False
        except Refused as why:
            with _lock:
                entry["error"] = str(why)
                entry["raw"] = _s(head) + entry.get("raw_body", "") + _s(self.buf)
            self._refuse()
            return False
        with _lock:
            entry["complete"] = True
        if path == "/__record" or path == "/__peek":
            with _lock:
                body = json.dumps(_records).encode()
                if path == "/__record":
                    _records.clear()
            self._answer(entry, body, "application/json")
            return entry["keep_alive"]
        if path == "/__broken":
            kind = parse_qs(urlsplit(target).query).get("kind", [""])[0]
            self.sock.sendall(BROKEN.get(kind, b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"))
            return False
        extra = b"Date: Mon, 01 Jan 2001 00:00:00 GMT\r\n" if path == "/__dated" else b""
        self._answer(entry, b"ok %d\n" % entry["seq"], "text/plain", extra)
        return entry["keep_alive"]

    def _parse_head(self, head: bytes, entry: dict) -> None:
        if b"\r\n\r\n" != head[-4:]:
            raise Refused("head does not end with CRLF CRLF")
        lines = head[:-4].split(b"\r\n")
        for line in lines:
            if b"\r" in line or b"\n" in line:
                raise Refused("bare CR or LF in the head")
        found = REQUEST_LINE.match(lines[0])
        if found is None:
            raise Refused(f"bad request line {lines[0]!r}")
        method, target, version = found.groups()
        entry.update(method=_s(method), target=_s(target), version=_s(version))
        headers: list[tuple[bytes, bytes]] = []
        for line in lines[1:]:
            if line[:1] in (b" ", b"\t"):
                raise Refused("obs-fold")
            name, colon, value = line.partition(b":")
            if not colon or not TOKEN.match(name):
                raise Refused(f"bad header line {line!r}")
            value = value.strip(b" \t")
            if not FIELD_VALUE.match(value):
                raise Refused(f"control character in the value of {name!r}")
            headers.append((name, value))
        entry["headers"] = [[_s(n), _s(v)] for n, v in headers]

        def values(wanted: bytes) -> list[bytes]:
            return [v for n, v in headers if n.lower() == wanted]

        hosts = values(b"host")
        if len(hosts) != 1 and (version == b"HTTP/1.1" or hosts):
            raise Refused(f"{len(hosts)} Host headers")
        lengths = values(b"content-length")
        codings = values(b"transfer-encoding")
        if lengths and codings:
            raise Refused("Content-Length and Transfer-Encoding together")
        if len(lengths) > 1:
            raise Refused("several Content-Length headers")
        if len(codings) > 1 or (codings and codings[0].lower() != b"chunked"):
            raise Refused(f"Transfer-Encoding {codings!r}")
        if lengths and not (lengths[0].isdigit() and len(lengths[0]) <= 15):
            raise Refused(f"Content-Length {lengths[0]!r}")
        if codings:
            entry["framing"] = "chunked"
        elif lengths:
            entry["framing"] = "length"
            entry["length"] = int(lengths[0])
        else:
            entry["framing"] = "none"
        tokens = {t.strip().lower() for v in values(b"connection") for t in v.split(b",")}
        entry["keep_alive"] = b"close" not in tokens and (version == b"HTTP/1.1" or b"keep-alive" in tokens)

    def _read_body(self, entry: dict) -> None:
        entry["raw_body"] = entry["body"] = ""
        if entry["framing"] == "length":
            data = b""
            remaining = entry["length"]
            while remaining:
                if not self.buf:
                    try:
                        self._fill()
                    except Closed:
                        with _lock:
                            entry["raw_body"] = entry["body"] = _s(data)
                        raise
                piece, self.buf = self.buf[:remaining], self.buf[remaining:]
                data += piece
                remaining -= len(piece)
            with _lock:
                entry["raw_body"] = entry["body"] = _s(data)
        elif entry["framing"] == "chunked":
            raw = b""
            body = b""
            entry["chunk_lines"] = []
            entry["trailers"] = []
            try:
                while True:
                    line = self._line()
                    raw += line + b"\r\n"
                    entry["chunk_lines"].append(_s(line))
                    found = CHUNK_SIZE.match(line)
                    if found is None or not CHUNK_EXT.match(found.group(2)):
                        raise Refused(f"bad chunk line {line!r}")
                    size = int(found.group(1), 16)
                    if size == 0:
                        while True:
                            trailer = self._line()
                            raw += trailer + b"\r\n"
                            if not trailer:
                                break
                            name, colon, value = trailer.partition(b":")
                            if not colon or not TOKEN.match(name) or not FIELD_VALUE.match(value.strip(b" \t")):
                                raise Refused(f"bad trailer line {trailer!r}")
                            entry["trailers"].append([_s(name), _s(value.strip(b" \t"))])
                        break
                    data = self._take(size)
                    raw += data
                    body += data
                    with _lock:
                        entry["raw_body"], entry["body"] = _s(raw), _s(body)
                    if self._take(2) != b"\r\n":
                        raise Refused("chunk data not followed by CRLF")
                    raw += b"\r\n"
            finally:
                with _lock:
                    entry["raw_body"], entry["body"] = _s(raw), _s(body)

    def _answer(self, entry: dict, body: bytes, kind: str, extra: bytes = b"") -> None:
        close = b"" if entry["keep_alive"] else b"Connection: close\r\n"
        self.sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nContent-Length: %d\r\nX-App-Seq: %d\r\n%s%s\r\n%s"
                          % (kind.encode(), len(body), entry.get("seq", 0), extra, close, body))

    def _refuse(self) -> None:
        try:
            self.sock.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 22\r\nConnection: close\r\n\r\n"
                              b"recording app: refused")
        except OSError:
            pass


def record(entry: dict) -> None:
    global _seq
    with _lock:
        _seq += 1
        entry["seq"] = _seq
        _records.append(entry)


def main() -> None:
    global _conns
    port = int(os.environ["PORT"])
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(128)
    print(f"recording app {os.getpid()} listening on {port}", flush=True)
    while True:
        sock, _ = listener.accept()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _conns += 1
        threading.Thread(target=Connection(sock, _conns).serve, daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())

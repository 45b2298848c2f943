"""Static files from an app's ``public/`` directory, as Passenger's nginx engine serves them.

One :class:`StaticFiles` per app, built once at start.  For each request the
front end asks :meth:`StaticFiles.find`; ``None`` means the request goes to the
app, anything else is answered with :meth:`StaticFiles.respond`.

What ``find`` answers (GET and HEAD only; every other method goes to the app):

* The path of the request target (up to ``?`` or ``#``, below ``base_uri``) is
  percent-decoded once, then normalised: empty and ``.`` segments are dropped,
  ``..`` removes the segment before it.
* Passenger's page cache (``ContentHandler.c``): ``/`` gives ``index.html``;
  ``/foo`` gives the file ``foo``, else ``foo.html``; ``/foo/`` gives
  ``foo/index.html``, else ``foo.html``.  Only regular files are served:
  a directory without such a file, a FIFO or a device goes to the app, and no
  directory is ever listed.
* A target that tries to leave the directory gets a **404 from us** (a
  :class:`StaticFile` whose ``status`` is 404; the app never sees it): ``..``
  above the root, NUL or a backslash after decoding, a double-encoded ``..``,
  NUL or backslash (``%252e%252e``, ``%2500``, ``%255c``), and a symlink under
  the directory that resolves outside it (the directory's own path may go
  through symlinks: that is configuration, not content).  A symlink that stays
  inside is followed.
* A path component that cannot be looked up (missing, not a directory,
  permission denied on a directory, name too long) means "no file": the app.

What ``respond`` sends (HTTP/1.1 status line, like the rest of the front end):

* ``Date``, ``Content-Type`` (a fixed table for web types, then Python's own
  built-in table, never the host's ``/etc/mime.types``; text types carry
  ``; charset=utf-8``; ``application/octet-stream`` otherwise, as nginx's
  ``default_type``), ``Content-Length``, ``Last-Modified``, a strong ``ETag``
  as nginx builds it (``"<mtime hex>-<size hex>"``), ``Accept-Ranges: bytes``,
  and ``Connection: close`` / ``Connection: keep-alive`` (HTTP/1.0) as needed.
* Preconditions in the order of RFC 9110 section 13.2.2: ``If-Match`` /
  ``If-Unmodified-Since`` give 412; ``If-None-Match`` (weak comparison, ``*``
  matches) and, only without it, ``If-Modified-Since`` (not modified at or
  after that date; ignored when invalid or later than now) give 304 with no
  body.
* One ``Range: bytes=a-b | a- | -n`` gives 206 with ``Content-Range``; a range
  starting at or past the end (or ``-0``) gives 416 with
  ``Content-Range: bytes */size``; an invalid header (``b < a``, another unit,
  garbage) is ignored.  **Several ranges are answered with the full 200**
  (RFC 9110 allows ignoring Range; no multipart/byteranges).  ``If-Range``
  (strong ETag, or the exact Last-Modified date) turns a stale Range into a
  full 200.  HEAD gets the same head as GET (ranges included), without body.
* The file is opened when the response is built: a file that cannot be
  opened for lack of permission gives **403** (as nginx); one that vanished
  since ``find`` gives 404.  The size and dates come from ``fstat`` of the open
  file, so the head always describes the bytes that are sent.
* Bodies up to :data:`CHUNK` bytes are read with one ``pread`` and written with
  the head in one write.  Larger ones stream through a pull producer
  (``registerProducer(producer, streaming=False)``): the transport asks for one
  :data:`CHUNK` each time its buffer has drained, so a slow client never makes
  us read ahead, and the file is never read whole.  Nothing about the file is
  cached between requests: each one costs a few ``lstat`` (one per path
  segment), ``open``, ``fstat`` and the reads.

Symlinks are checked when ``find`` runs; someone who can write into
``public/`` could swap a path component between that check and the ``open``
(the last component is opened with ``O_NOFOLLOW`` when it was not a symlink).
Clients cannot; the directory is the app's own content.
"""

from __future__ import annotations

import calendar
import functools
import html
import mimetypes
import os
import stat
import time
from email.utils import parsedate_tz
from typing import Any, Final
from urllib.parse import unquote_to_bytes

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IConsumer, IPullProducer, IReactorTime
from twisted.python.failure import Failure
from zope.interface import implementer

#: Bytes read and written at a time; bodies up to this size are written with their head at once.
CHUNK: Final = 65536

METHODS: Final = frozenset({b"GET", b"HEAD"})

REASONS: Final = {
    200: b"OK",
    206: b"Partial Content",
    304: b"Not Modified",
    403: b"Forbidden",
    404: b"Not Found",
    412: b"Precondition Failed",
    416: b"Range Not Satisfiable",
}

#: Content types of common web files, so that they do not depend on the host's /etc/mime.types.
WEB_TYPES: Final = {
    ".html": "text/html",
    ".htm": "text/html",
    ".shtml": "text/html",
    ".css": "text/css",
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".cjs": "text/javascript",
    ".json": "application/json",
    ".map": "application/json",
    ".jsonld": "application/ld+json",
    ".webmanifest": "application/manifest+json",
    ".xml": "application/xml",
    ".xsl": "application/xml",
    ".rss": "application/rss+xml",
    ".atom": "application/atom+xml",
    ".txt": "text/plain",
    ".text": "text/plain",
    ".md": "text/markdown",
    ".csv": "text/csv",
    ".ics": "text/calendar",
    ".vtt": "text/vtt",
    ".svg": "image/svg+xml",
    ".svgz": "image/svg+xml",
    ".png": "image/png",
    ".apng": "image/apng",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".avif": "image/avif",
    ".ico": "image/x-icon",
    ".bmp": "image/bmp",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
    ".ttf": "font/ttf",
    ".otf": "font/otf",
    ".eot": "application/vnd.ms-fontobject",
    ".wasm": "application/wasm",
    ".pdf": "application/pdf",
    ".zip": "application/zip",
    ".gz": "application/gzip",
    ".tgz": "application/gzip",
    ".br": "application/octet-stream",
    ".tar": "application/x-tar",
    ".mp4": "video/mp4",
    ".m4v": "video/mp4",
    ".webm": "video/webm",
    ".ogv": "video/ogg",
    ".mov": "video/quicktime",
    ".mp3": "audio/mpeg",
    ".m4a": "audio/mp4",
    ".ogg": "audio/ogg",
    ".oga": "audio/ogg",
    ".opus": "audio/ogg",
    ".wav": "audio/wav",
    ".flac": "audio/flac",
}
DEFAULT_TYPE: Final = b"application/octet-stream"
#: Non-``text/*`` types that are text too and get a charset.
TEXT_TYPES: Final = frozenset({
    "application/xml", "application/rss+xml", "application/atom+xml", "image/svg+xml", "application/javascript",
})

_DAYS: Final = (b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat", b"Sun")
_MONTHS: Final = (b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec")
#: Numbers with more digits than this are "larger than any file" (and never reach int()'s digit limit).
_MAX_DIGITS: Final = 18
_HUGE: Final = 10**18


def http_date(seconds: float) -> bytes:
    """``Sun, 06 Nov 1994 08:49:37 GMT`` (IMF-fixdate, RFC 9110 section 5.6.7)."""
    t = time.gmtime(seconds)
    return b"%s, %02d %s %04d %02d:%02d:%02d GMT" % (
        _DAYS[t.tm_wday], t.tm_mday, _MONTHS[t.tm_mon - 1], t.tm_year, t.tm_hour, t.tm_min, t.tm_sec)


def parse_http_date(value: bytes) -> int | None:
    """Seconds since the epoch of an HTTP-date in any of its three forms, or None if it is not one."""
    try:
        parsed = parsedate_tz(value.decode("ascii"))
        if parsed is None:
            return None
        return calendar.timegm(parsed[:6]) - (parsed[9] or 0)
    except (ValueError, TypeError, OverflowError, IndexError, UnicodeDecodeError):
        return None


@functools.cache
def _content_types() -> dict[bytes, bytes]:
    """Extension (lower case, with its dot) → Content-Type value, built once."""
    table = dict(mimetypes.MimeTypes().types_map[True])  # Python's built-in table, not the host's files
    table.update(WEB_TYPES)
    types: dict[bytes, bytes] = {}
    for ext, kind in table.items():
        if kind.startswith("text/") or kind in TEXT_TYPES:
            kind += "; charset=utf-8"
        types[ext.encode("ascii")] = kind.encode("ascii")
    return types


def _number(digits: bytes) -> int:
    return _HUGE if len(digits) > _MAX_DIGITS else int(digits)


#: What _parse_range answers besides a (first, last) pair.
_IGNORE: Final = None
_UNSATISFIABLE: Final = (-1, -1)


def _parse_range(value: bytes, size: int) -> tuple[int, int] | None:
    """The one byte range asked for, as (first, last) inclusive; _UNSATISFIABLE; or None: send it all."""
    unit, equals, specs = value.partition(b"=")
    if not equals or unit.strip().lower() != b"bytes":
        return _IGNORE
    ranges = [spec for spec in (part.strip() for part in specs.split(b",")) if spec]
    if len(ranges) != 1:
        return _IGNORE  # none (invalid) or several: the whole file, with 200
    first, dash, last = ranges[0].partition(b"-")
    first, last = first.strip(), last.strip()
    if not dash or (first and not first.isdigit()) or (last and not last.isdigit()):
        return _IGNORE
    if first:
        start = _number(first)
        if last:
            end = _number(last)
            if end < start:
                return _IGNORE  # an invalid range-spec makes the header invalid (RFC 9110 section 14.1.1)
        else:
            end = size - 1
        if start >= size:
            return _UNSATISFIABLE
        return start, min(end, size - 1)
    if not last:
        return _IGNORE  # "bytes=-"
    suffix = _number(last)
    if suffix == 0:
        return _UNSATISFIABLE
    if size == 0:
        return _IGNORE  # a non-empty suffix of nothing: the (empty) whole
    return max(0, size - suffix), size - 1


def _entity_tags(value: bytes) -> list[tuple[bool, bytes]] | None:
    """The (weak, opaque-tag with quotes) members of an If-Match / If-None-Match list; None for ``*``."""
    if value.strip() == b"*":
        return None
    tags: list[tuple[bool, bytes]] = []
    i, n = 0, len(value)
    while i < n:
        c = value[i:i + 1]
        if c in (b" ", b"\t", b","):
            i += 1
            continue
        weak = value.startswith(b"W/", i)
        if weak:
            i += 2
        if value[i:i + 1] != b'"':
            break  # malformed: keep what was understood
        end = value.find(b'"', i + 1)
        if end == -1:
            break
        tags.append((weak, value[i:end + 1]))
        i = end + 1
    return tags


class StaticFile:
    """What :meth:`StaticFiles.find` found: a file to send, or a refused target (``status`` 404, ``path`` None)."""

    __slots__ = ("content_type", "nofollow", "path", "status")

    def __init__(self, path: bytes | None, content_type: bytes, nofollow: bool = False, status: int = 200) -> None:
        #: Absolute filesystem path of the file (None for a refused target).
        self.path = path
        #: The Content-Type header value.
        self.content_type = content_type
        #: The last path component was not a symlink when found: open it with O_NOFOLLOW.
        self.nofollow = nofollow
        #: 200 for a file (respond may still answer 206/304/403/404/412/416), 404 for a refused target.
        self.status = status

    def __repr__(self) -> str:
        return f"StaticFile({self.path!r}, {self.content_type!r}, status={self.status})"


#: The answer for a target that tries to leave the directory.
REFUSED: Final = StaticFile(None, b"text/html; charset=utf-8", status=404)


class FileChanged(OSError):
    """The file got shorter while it was being sent: the connection is aborted (its length was promised)."""


class StaticFiles:
    """Serves one app's ``public/`` directory."""

    def __init__(self, directory: str, clock: IReactorTime, base_uri: str = "/") -> None:
        """``directory``: absolute path of ``public/``; ``base_uri``: where the app is mounted (as the router's)."""
        #: The directory as configured (no trailing slash; b"" for "/"): walks start here.
        self._root = os.fsencode(os.path.abspath(directory)).rstrip(b"/")
        self._clock = clock
        self._prefix = b"" if base_uri in ("", "/") else base_uri.rstrip("/").encode()
        self._below = self._prefix + b"/"
        self._types = _content_types()
        self._date_second = -1
        self._date_line = b""

    # Finding the file.
    def find(self, method: bytes, target: bytes) -> StaticFile | None:
        """The file that answers this GET/HEAD request target, or None: the request goes to the app.

        ``target`` is the raw request-target (it may have a ``?query``).  A
        target that tries to leave the directory gives REFUSED (a 404 answer).
        """
        if method not in METHODS:
            return None
        path = target
        if not path.startswith(b"/"):
            scheme_end = path.find(b"://")  # absolute-form (RFC 9112 section 3.2.2)
            if scheme_end == -1:
                return None
            slash = path.find(b"/", scheme_end + 3)
            path = path[slash:] if slash != -1 else b"/"
        for mark in (b"?", b"#"):
            at = path.find(mark)
            if at != -1:
                path = path[:at]
        if self._prefix:
            if path == self._prefix:
                path = b"/"
            elif path.startswith(self._below):
                path = path[len(self._prefix):]
            else:
                return None
        if b"%" in path:
            path = unquote_to_bytes(path)
            if b"%" in path and _unsafe(unquote_to_bytes(path), double=True):
                return REFUSED
        if _unsafe(path, double=False):
            return REFUSED
        segments: list[bytes] = []
        for segment in path.split(b"/"):
            if not segment or segment == b".":
                continue
            if segment == b"..":
                if not segments:
                    return REFUSED
                segments.pop()
            else:
                segments.append(segment)
        if not segments:
            found = self._lookup([b"index.html"])
            return found if isinstance(found, StaticFile) else None
        if path.endswith((b"/", b"/.", b"/..")):
            found = self._lookup([*segments, b"index.html"])
        else:
            found = self._lookup(segments)
        if isinstance(found, StaticFile):
            return found
        if found < len(segments) - 1:
            return None  # a directory on the way is missing: so is the page-cache file
        segments[-1] += b".html"
        found = self._lookup(segments)
        return found if isinstance(found, StaticFile) else None

    def _lookup(self, segments: list[bytes]) -> StaticFile | int:
        """The regular file at ``segments`` under the directory, REFUSED if a symlink leads outside.

        Otherwise the index of the first segment that is missing or of the wrong kind.
        """
        path = self._root
        last = len(segments) - 1
        nofollow = True
        for i, segment in enumerate(segments):
            path += b"/" + segment
            try:
                mode = os.lstat(path).st_mode
            except (OSError, ValueError):
                return i
            if stat.S_ISLNK(mode):
                if not self._inside(os.path.realpath(path)):
                    return REFUSED
                try:
                    mode = os.stat(path).st_mode
                except (OSError, ValueError):
                    return i
                if i == last:
                    nofollow = False
            if i < last:
                if not stat.S_ISDIR(mode):
                    return i
            elif not stat.S_ISREG(mode):
                return i
        name = segments[-1]
        dot = name.rfind(b".")
        kind = self._types.get(name[dot:].lower(), DEFAULT_TYPE) if dot > 0 else DEFAULT_TYPE
        return StaticFile(path, kind, nofollow)

    def _inside(self, real: bytes) -> bool:
        """Whether a resolved path is the directory or below it (resolved now: the directory may be a symlink that moves)."""
        root = os.path.realpath(self._root or b"/")
        return real == root or real.startswith(root.rstrip(b"/") + b"/")

    # Answering.
    def respond(self, file: StaticFile, method: bytes, headers: list[tuple[bytes, bytes]], version: str,
                keep_alive: bool, transport: IConsumer) -> Deferred[None]:
        """Write the whole response (status line, headers, body) to transport; fires when the body is written.

        For HEAD, 304, 412, 416, 403, 404 and bodies up to CHUNK bytes it fires
        at once; larger bodies stream through a registered pull producer.  It
        fails with ConnectionLost if the transport stops the producer (the
        client went away), and with FileChanged if the file shrank while being
        sent (the connection is then aborted).  Either way the connection is
        done for.
        """
        head_only = method == b"HEAD"
        connection = _connection_line(version, keep_alive)
        if file.path is None:
            return self._error(404, head_only, connection, transport)
        flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (os.O_NOFOLLOW if file.nofollow else 0)
        try:
            fd = os.open(file.path, flags)
        except PermissionError:
            return self._error(403, head_only, connection, transport)
        except (OSError, ValueError):
            return self._error(404, head_only, connection, transport)
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):  # swapped for something else since find()
                os.close(fd)
                return self._error(404, head_only, connection, transport)
            head, start, length = self._head(file, info.st_size, int(info.st_mtime), headers, connection)
        except BaseException:
            _close(fd)
            raise
        # From here on the file descriptor is closed on every path, by us or by the producer.
        if head_only or length == 0:
            _close(fd)
            transport.write(head)
            return succeed(None)
        if length <= CHUNK:
            try:
                body = _read(fd, start, length)
            finally:
                _close(fd)
            if len(body) < length:
                return _abort(transport, FileChanged(f"{file.path!r} was truncated while being sent"))
            transport.write(head + body)
            return succeed(None)
        transport.write(head)
        return _BodyProducer(fd, start, length, file.path, transport).start()

    def _head(self, file: StaticFile, size: int, mtime: int, headers: list[tuple[bytes, bytes]],
              connection: bytes) -> tuple[bytes, int, int]:
        """(response head, first byte, bytes of body to send) for this file and these request headers."""
        etag = b'"%x-%x"' % (mtime, size)
        last_modified = http_date(mtime)
        if_match = if_none_match = if_modified = if_unmodified = ranges = if_range = None
        for name, value in headers:
            if len(name) < 5 or name[:1] not in b"IiRr":
                continue  # most headers stop here
            lname = name.lower()
            if lname == b"if-none-match":
                if_none_match = value if if_none_match is None else if_none_match + b"," + value
            elif lname == b"if-modified-since":
                if_modified = value if if_modified is None else b""  # twice: invalid, ignored
            elif lname == b"range":
                ranges = value if ranges is None else ranges + b"," + value
            elif lname == b"if-range":
                if_range = value
            elif lname == b"if-match":
                if_match = value if if_match is None else if_match + b"," + value
            elif lname == b"if-unmodified-since":
                if_unmodified = value if if_unmodified is None else b""
        validators = b"Last-Modified: %s\r\nETag: %s\r\n" % (last_modified, etag)

        # Preconditions (RFC 9110 section 13.2.2).
        if if_match is not None:
            tags = _entity_tags(if_match)
            if tags is not None and (False, etag) not in tags:
                return self._bare(412, connection), 0, 0
        elif if_unmodified is not None:
            since = self._date_value(if_unmodified, last_modified, mtime)
            if since is not None and mtime > since:
                return self._bare(412, connection), 0, 0
        if if_none_match is not None:
            tags = _entity_tags(if_none_match)
            if tags is None or (False, etag) in tags or (True, etag) in tags:
                return self._not_modified(validators, connection), 0, 0
        elif if_modified is not None:
            since = self._date_value(if_modified, last_modified, mtime)
            # A date later than now is invalid (a client's clock): unless it is our own Last-Modified.
            if since is not None and mtime <= since and (since == mtime or since <= self._clock.seconds()):
                return self._not_modified(validators, connection), 0, 0

        # Range (RFC 9110 section 14).
        status = b"HTTP/1.1 200 OK\r\n"
        start, length = 0, size
        content_range = b""
        if ranges is not None and (if_range is None or self._if_range(if_range, etag, last_modified, mtime)):
            chosen = _parse_range(ranges, size)
            if chosen == _UNSATISFIABLE:
                return b"".join((
                    b"HTTP/1.1 416 Range Not Satisfiable\r\n", self._date(),
                    b"Content-Length: 0\r\nContent-Range: bytes */%d\r\n" % size, connection, b"\r\n")), 0, 0
            if chosen is not None:
                status = b"HTTP/1.1 206 Partial Content\r\n"
                start, last = chosen
                length = last - start + 1
                content_range = b"Content-Range: bytes %d-%d/%d\r\n" % (start, last, size)
        head = b"".join((
            status, self._date(),
            b"Content-Type: ", file.content_type, b"\r\nContent-Length: %d\r\n" % length,
            validators, b"Accept-Ranges: bytes\r\n", content_range, connection, b"\r\n"))
        return head, start, length

    def _date_value(self, value: bytes, last_modified: bytes, mtime: int) -> int | None:
        if value == last_modified:  # what clients usually send back: no parsing
            return mtime
        return parse_http_date(value)

    def _if_range(self, value: bytes, etag: bytes, last_modified: bytes, mtime: int) -> bool:
        """Whether the If-Range validator still matches: a strong ETag, or exactly the Last-Modified date."""
        value = value.strip()
        if value.startswith((b'"', b"W/")):
            return value == etag
        return self._date_value(value, last_modified, mtime) == mtime

    def _date(self) -> bytes:
        """``Date: ...\\r\\n``, formatted once a second."""
        now = int(self._clock.seconds())
        if now != self._date_second:
            self._date_second = now
            self._date_line = b"Date: " + http_date(now) + b"\r\n"
        return self._date_line

    def _not_modified(self, validators: bytes, connection: bytes) -> bytes:
        return b"".join((b"HTTP/1.1 304 Not Modified\r\n", self._date(), validators, connection, b"\r\n"))

    def _bare(self, status: int, connection: bytes) -> bytes:
        return b"HTTP/1.1 %d %s\r\n%sContent-Length: 0\r\n%s\r\n" % (status, REASONS[status], self._date(), connection)

    def _error(self, status: int, head_only: bool, connection: bytes, transport: IConsumer) -> Deferred[None]:
        """A small page like the front end's own error pages (403, 404)."""
        title = REASONS[status].decode()
        detail = "You may not read this file." if status == 403 else "The file was not found."
        body = (
            f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{status} {html.escape(title)}</title></head>\n"
            f"<body><h1>{status} {html.escape(title)}</h1>\n<p>{html.escape(detail)}</p>\n<hr><p>passenger</p></body></html>\n"
        ).encode()
        head = b"HTTP/1.1 %d %s\r\n%sContent-Type: text/html; charset=utf-8\r\nContent-Length: %d\r\n%s\r\n" % (
            status, REASONS[status], self._date(), len(body), connection)
        transport.write(head if head_only else head + body)
        return succeed(None)


def _unsafe(path: bytes, double: bool) -> bool:
    """NUL or backslash; with ``double`` (a second decoding) also any ``..`` segment."""
    if b"\x00" in path or b"\\" in path:
        return True
    return double and b".." in path.split(b"/")


def _connection_line(version: str, keep_alive: bool) -> bytes:
    if not keep_alive:
        return b"Connection: close\r\n"
    return b"Connection: keep-alive\r\n" if version == "1.0" else b""


def _read(fd: int, offset: int, length: int) -> bytes:
    """Up to ``length`` bytes at ``offset``; fewer only at the end of the file."""
    data = os.pread(fd, length, offset)
    if len(data) == length or not data:
        return data
    pieces = [data]
    got = len(data)
    while got < length:
        more = os.pread(fd, length - got, offset + got)
        if not more:
            break
        pieces.append(more)
        got += len(more)
    return b"".join(pieces)


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def _abort(transport: Any, reason: Exception) -> Deferred[None]:
    abort = getattr(transport, "abortConnection", None) or transport.loseConnection
    abort()
    return fail(reason)


@implementer(IPullProducer)
class _BodyProducer:
    """Sends ``length`` bytes of ``fd`` from ``offset``, one CHUNK each time the consumer asks."""

    def __init__(self, fd: int, offset: int, length: int, path: bytes | None, consumer: IConsumer) -> None:
        self._fd = fd
        self._offset = offset
        self._remaining = length
        self._path = path
        self._consumer = consumer
        self._done: Deferred[None] = Deferred()

    def start(self) -> Deferred[None]:
        try:
            self._consumer.registerProducer(self, False)
        except Exception:  # another producer is registered: the caller's bug
            self._finish()
            return fail()
        return self._done

    def resumeProducing(self) -> None:
        if self._fd < 0:
            return
        try:
            data = os.pread(self._fd, min(CHUNK, self._remaining), self._offset)
        except OSError as e:
            self._fail(e)
            return
        if not data:
            self._fail(FileChanged(f"{self._path!r} was truncated while being sent"))
            return
        self._offset += len(data)
        self._remaining -= len(data)
        self._consumer.write(data)
        if self._remaining == 0 and self._fd >= 0:
            self._finish()
            self._consumer.unregisterProducer()
            self._done.callback(None)

    def stopProducing(self) -> None:
        """The connection is gone."""
        if self._fd >= 0:
            self._finish()
            self._done.errback(Failure(ConnectionLost("The client connection closed before the file was sent.")))

    def _fail(self, reason: Exception) -> None:
        self._finish()
        self._consumer.unregisterProducer()
        consumer: Any = self._consumer
        (getattr(consumer, "abortConnection", None) or consumer.loseConnection)()
        self._done.errback(Failure(reason))

    def _finish(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            _close(fd)

"""Static files from ``public/``.

Finding them (page cache, traversal, symlinks) and answering (headers, 304,
ranges, streaming); real files under tmp_path, StringTransport, and a real
loopback connection (TCP and TLS) for the transport's own producer calls.
"""

from __future__ import annotations

import email.utils
import hashlib
import mimetypes
import os
import random
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import defer, protocol
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IPullProducer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

import passenger.http.static as static
from passenger.http.static import CHUNK, REFUSED, FileChanged, StaticFile, StaticFiles, http_date, parse_http_date

NOW = 1_700_000_000  # Tue, 14 Nov 2023 22:13:20 GMT
MTIME = 1_600_000_000  # Sun, 13 Sep 2020 12:26:40 GMT
SECRET = b"TOP SECRET, outside public/"


# The tree every test serves.
@pytest.fixture
def public(tmp_path: Path) -> Path:
    """tmp_path/public with pages, assets, page-cache files and symlinks; secrets beside it."""
    root = tmp_path / "public"
    files = {
        "index.html": b"<h1>home</h1>",
        "about.html": b"<h1>about</h1>",
        "robots.txt": b"User-agent: *\n",
        "css/app.css": b"body { color: red }",
        "js/app.js": b"console.log(1)",
        "docs/index.html": b"<h1>docs</h1>",
        "blog.html": b"<h1>blog cache</h1>",
        "blog/post.txt": b"a post",
        "blog/draft.html": b"a draft",
        "empty/.keep": b"",
        "my file.txt": b"spaces",
        "100%.txt": b"percent",
        "%2e%2e/literal.txt": b"a directory literally named %2e%2e",
        "café.txt": b"utf-8 name",
        "zero.bin": b"",
        "sized.bin": bytes(i % 251 for i in range(1000)),
    }
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (tmp_path / "secret.txt").write_bytes(SECRET)
    (tmp_path / "secretdir").mkdir()
    (tmp_path / "secretdir" / "x.txt").write_bytes(SECRET)
    (tmp_path / "public-sibling").mkdir()
    (tmp_path / "public-sibling" / "s.txt").write_bytes(SECRET)
    # Symlinks: two leading out, one chain leading out, two staying in, one dangling.
    (root / "evil.txt").symlink_to(tmp_path / "secret.txt")
    (root / "evildir").symlink_to(tmp_path / "secretdir")
    (root / "relative-evil.txt").symlink_to("../secret.txt")
    (root / "sibling").symlink_to("../public-sibling")  # a prefix of "public" must not count as inside
    (root / "hop.txt").symlink_to("evil.txt")  # inside, but it leads on outside
    (root / "good.css").symlink_to("css/app.css")
    (root / "gooddir").symlink_to("css")
    (root / "dangling.txt").symlink_to("nowhere.txt")
    for path in root.rglob("*"):
        if not path.is_symlink():
            os.utime(path, (MTIME, MTIME))
    return root


@pytest.fixture
def clock() -> Clock:
    clock = Clock()
    clock.advance(NOW)
    return clock


@pytest.fixture
def files(public: Path, clock: Clock) -> StaticFiles:
    return StaticFiles(str(public), clock)


# Helpers.
@dataclass
class Reply:
    status: int
    reason: bytes
    headers: dict[bytes, bytes]
    body: bytes


def parse(raw: bytes) -> Reply:
    head, sep, body = raw.partition(b"\r\n\r\n")
    assert sep, raw
    lines = head.split(b"\r\n")
    version, status, reason = lines[0].split(b" ", 2)
    assert version == b"HTTP/1.1"
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b": ")
        assert colon, line
        assert name.lower() not in headers, f"duplicate {name!r}"
        headers[name.lower()] = value
    return Reply(int(status), reason, headers, body)


def outcome(d: defer.Deferred[Any]) -> Any:
    """What a Deferred has fired with (a Failure for an error); it must have fired."""
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    return results[0]


def respond(files: StaticFiles, found: StaticFile, method: bytes = b"GET", headers: Iterable[tuple[bytes, bytes]] = (),
            version: str = "1.1", keep_alive: bool = True) -> Reply:
    """Answer with a StringTransport, pulling a streamed body to the end; check the framing."""
    transport = StringTransport()
    d = files.respond(found, method, list(headers), version, keep_alive, transport)
    while transport.producer is not None:
        transport.producer.resumeProducing()
    assert outcome(d) is None
    reply = parse(transport.value())
    if method == b"HEAD" or reply.status == 304:
        assert reply.body == b""
    else:
        assert int(reply.headers[b"content-length"]) == len(reply.body)
    return reply


def get(files: StaticFiles, target: bytes, headers: Iterable[tuple[bytes, bytes]] = (), method: bytes = b"GET",
        version: str = "1.1", keep_alive: bool = True) -> Reply:
    found = files.find(method, target)
    assert found is not None, target
    return respond(files, found, method, headers, version, keep_alive)


def served(files: StaticFiles, target: bytes, method: bytes = b"GET") -> bytes | None:
    """The file find() picks, relative to public/ (None: the app; "REFUSED": a 404 from us)."""
    found = files.find(method, target)
    if found is None:
        return None
    if found is REFUSED:
        return b"REFUSED"
    assert found.status == 200 and found.path is not None
    return found.path.split(b"/public/", 1)[1]


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def open_targets() -> list[str]:
    targets = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            targets.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass  # the directory's own descriptor, closed by now
    return targets


def open_sockets() -> set[str]:
    return {target for target in open_targets() if target.startswith("socket:")}


class RecordingTransport(StringTransport):
    """A StringTransport that remembers each write."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        super().write(data)


# Which requests are static at all.
@pytest.mark.parametrize("method", [b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS", b"TRACE", b"CONNECT", b"get"])
def test_only_get_and_head_are_served(files: StaticFiles, method: bytes) -> None:
    assert files.find(method, b"/robots.txt") is None
    assert files.find(method, b"/../secret.txt") is None  # the app gets it, as it gets every other method


def test_get_and_head_find_the_file(files: StaticFiles) -> None:
    assert served(files, b"/robots.txt") == b"robots.txt"
    assert served(files, b"/robots.txt", b"HEAD") == b"robots.txt"


@pytest.mark.parametrize(("target", "expected"), [
    (b"/robots.txt", b"robots.txt"),
    (b"/robots.txt?x=1&y=/../../secret", b"robots.txt"),
    (b"/robots.txt#frag", b"robots.txt"),
    (b"/css/app.css", b"css/app.css"),
    (b"/css%2fapp.css", b"css/app.css"),  # decoded once: an encoded slash is a slash (as nginx)
    (b"/%63ss/app.css", b"css/app.css"),
    (b"/my%20file.txt", b"my file.txt"),
    (b"/100%25.txt", b"100%.txt"),
    (b"/caf%C3%A9.txt", "café.txt".encode()),
    (b"/css/./app.css", b"css/app.css"),
    (b"//css///app.css", b"css/app.css"),
    (b"/js/../css/app.css", b"css/app.css"),  # normalised, staying inside
    (b"/js/%2e%2e/css/app.css", b"css/app.css"),
    (b"/css/app.css/", None),  # a file is no directory
    (b"/missing.txt", None),
    (b"/nested/missing.txt", None),
    (b"/robots.txt/more", None),
    (b"/" + b"x" * 5000, None),  # ENAMETOOLONG
    (b"http://example.com/robots.txt", b"robots.txt"),  # absolute-form
    (b"http://example.com", b"index.html"),
    (b"*", None),
    (b"example.com:443", None),
])
def test_path_resolution(files: StaticFiles, target: bytes, expected: bytes | None) -> None:
    assert served(files, target) == expected


@pytest.mark.parametrize(("target", "expected"), [
    (b"/", b"index.html"),
    (b"/?page=2", b"index.html"),
    (b"/index.html", b"index.html"),
    (b"/index", b"index.html"),  # URI.html
    (b"/about", b"about.html"),
    (b"/about.html", b"about.html"),
    (b"/about/", b"about.html"),  # Passenger: the page cache file of /about/ is about.html
    (b"/docs/", b"docs/index.html"),
    (b"/docs/.", b"docs/index.html"),
    (b"/docs", None),  # a directory without docs.html: the app (no redirect, no listing)
    (b"/blog", b"blog.html"),  # a directory, but blog.html exists
    (b"/blog/", b"blog.html"),  # no blog/index.html
    (b"/blog/post.txt", b"blog/post.txt"),
    (b"/blog/draft", b"blog/draft.html"),
    (b"/blog/draft/", b"blog/draft.html"),
    (b"/blog/missing/deeper", None),
    (b"/empty/", None),  # a directory without index.html: the app, never a listing
    (b"/empty", None),
    (b"/css", None),
    (b"/css/", None),
])
def test_page_cache(files: StaticFiles, target: bytes, expected: bytes | None) -> None:
    assert served(files, target) == expected


def test_page_cache_file_wins_only_when_the_file_itself_is_missing(files: StaticFiles, public: Path) -> None:
    (public / "about").write_bytes(b"the real thing")
    assert served(files, b"/about") == b"about"
    (public / "index.html").unlink()
    assert served(files, b"/") is None
    assert served(files, b"/index") is None


def test_directory_that_does_not_exist(tmp_path: Path, clock: Clock) -> None:
    files = StaticFiles(str(tmp_path / "no-public-here"), clock)
    assert files.find(b"GET", b"/") is None
    assert files.find(b"GET", b"/robots.txt") is None
    assert files.find(b"GET", b"/../secret.txt") is REFUSED


def test_only_regular_files(files: StaticFiles, public: Path) -> None:
    os.mkfifo(public / "fifo.txt")
    assert served(files, b"/fifo.txt") is None
    (public / "docs.html").mkdir()  # a directory where a page-cache file would be
    assert served(files, b"/docs") is None


# Traversal.
TRAVERSALS = [
    b"/../secret.txt",
    b"/../../../../../../etc/passwd",
    b"/css/../../secret.txt",
    b"/./../secret.txt",
    b"/css/./../../secret.txt",
    b"/..",
    b"/../",
    b"/../public/robots.txt",
    b"/%2e%2e/secret.txt",
    b"/%2E%2E/secret.txt",
    b"/.%2e/secret.txt",
    b"/%2e./secret.txt",
    b"/..%2fsecret.txt",
    b"/..%2Fsecret.txt",
    b"/%2e%2e%2fsecret.txt",
    b"/css/..%2f..%2fsecret.txt",
    b"/%252e%252e/secret.txt",  # double-encoded
    b"/%252E%252E%252Fsecret.txt",
    b"/css/%252e%252e/%252e%252e/secret.txt",
    b"/..%252fsecret.txt",
    b"/%2e%2e/literal.txt",  # once decoded it is "/../literal.txt", whatever lies inside
    b"/%252e%252e/literal.txt",  # a real directory named "%2e%2e" is there, but double-encoded dots are refused
    b"/index.html%00.txt",
    b"/index.html%2500",
    b"/..\\secret.txt",
    b"/\\..\\secret.txt",
    b"/%5c..%5csecret.txt",
    b"/..%5csecret.txt",
    b"/%255c..%255csecret.txt",
    b"/evil.txt",  # symlink to an absolute path outside
    b"/relative-evil.txt",
    b"/hop.txt",  # inside → evil.txt → outside
    b"/evildir/x.txt",
    b"/evildir/",
    b"/evildir",
    b"/sibling/s.txt",  # ../public-sibling: outside, though it starts with the same characters
    b"http://example.com/../secret.txt",
    b"/robots.txt/../../secret.txt",
]


@pytest.mark.parametrize("target", TRAVERSALS)
def test_traversal_gives_404(files: StaticFiles, target: bytes) -> None:
    found = files.find(b"GET", target)
    assert found is REFUSED
    assert found.status == 404 and found.path is None
    reply = respond(files, found)
    assert reply.status == 404
    assert reply.headers[b"content-type"] == b"text/html; charset=utf-8"
    assert SECRET not in reply.body and b"secret" not in reply.body
    head = respond(files, found, b"HEAD")
    assert head.status == 404 and head.body == b""
    assert files.find(b"HEAD", target) is REFUSED


@pytest.mark.parametrize(("target", "expected"), [
    (b"/%c0%ae%c0%ae/secret.txt", None),  # overlong UTF-8 "..": just bytes on POSIX
    (b"/..;/secret.txt", None),
    (b"/.../secret.txt", None),
    (b"/...", None),
    (b"/.hidden", None),
    (b"/gooddir/../robots.txt", b"robots.txt"),  # ".." is lexical: it does not follow the symlink gooddir -> css
    (b"/evildir/../robots.txt", b"robots.txt"),
    # Three encodings: two decodings leave the literal name "%2e%2e" (no ".."), looked up inside public/.
    (b"/%25252e%25252e/secret.txt", None),
    (b"/%25252e%25252e/literal.txt", None),  # it is "%252e%252e/literal.txt" that is looked up: not there
])
def test_lookalikes_stay_inside(files: StaticFiles, target: bytes, expected: bytes | None) -> None:
    assert served(files, target) == expected


def test_symlinks_inside_are_followed(files: StaticFiles) -> None:
    assert served(files, b"/good.css") == b"good.css"
    reply = get(files, b"/good.css")
    assert reply.body == b"body { color: red }"
    assert reply.headers[b"content-type"] == b"text/css; charset=utf-8"
    assert get(files, b"/gooddir/app.css").body == b"body { color: red }"
    assert served(files, b"/dangling.txt") is None


def test_directory_itself_may_be_a_symlink_and_may_move(tmp_path: Path, clock: Clock) -> None:
    """Capistrano: public/ is under current -> releases/N, and current moves at each deploy."""
    for release in ("1", "2"):
        (tmp_path / "releases" / release / "public").mkdir(parents=True)
        (tmp_path / "releases" / release / "public" / "v.txt").write_bytes(release.encode())
        (tmp_path / "releases" / release / "public" / "up.txt").symlink_to(f"../../{release}/public/v.txt")
    current = tmp_path / "current"
    current.symlink_to(tmp_path / "releases" / "1")
    files = StaticFiles(str(current / "public"), clock)
    assert get(files, b"/v.txt").body == b"1"
    assert get(files, b"/up.txt").body == b"1"
    current.unlink()
    current.symlink_to(tmp_path / "releases" / "2")
    assert get(files, b"/v.txt").body == b"2"
    assert get(files, b"/up.txt").body == b"2"
    # A link from release 2 into release 1 leaves the (current) directory.
    (tmp_path / "releases" / "2" / "public" / "old.txt").symlink_to(tmp_path / "releases" / "1" / "public" / "v.txt")
    assert files.find(b"GET", b"/old.txt") is REFUSED


PIECES = ["..", ".", "%2e%2e", "%2E.", ".%2e", "%252e%252e", "%25252e", "%2f", "%2F", "%252f", "%5c", "%255c", "\\",
          "%00", "%2500", "evil.txt", "evildir", "hop.txt", "sibling", "relative-evil.txt", "secret.txt", "x.txt",
          "s.txt", "css", "gooddir", "public", "..%2f", "%c0%ae", "", "?", "#"]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=st.lists(st.sampled_from(PIECES), min_size=1, max_size=8), slash=st.booleans())
def test_no_target_reaches_outside(files: StaticFiles, public: Path, parts: list[str], slash: bool) -> None:
    target = ("/" + "/".join(parts) + ("/" if slash else "")).encode()
    root = os.path.realpath(public)
    for method in (b"GET", b"HEAD"):
        found = files.find(method, target)
        if found is None or found is REFUSED:
            continue
        assert found.path is not None
        real = os.path.realpath(found.path)
        assert real.startswith(os.fsencode(root) + b"/"), (target, real)
        assert SECRET not in get(files, target).body


# The response.
def test_full_response_head(files: StaticFiles) -> None:
    reply = get(files, b"/robots.txt")
    assert reply.status == 200 and reply.reason == b"OK"
    assert reply.headers == {
        b"date": b"Tue, 14 Nov 2023 22:13:20 GMT",
        b"content-type": b"text/plain; charset=utf-8",
        b"content-length": b"14",
        b"last-modified": b"Sun, 13 Sep 2020 12:26:40 GMT",
        b"etag": b'"%x-%x"' % (MTIME, 14),
        b"accept-ranges": b"bytes",
    }
    assert reply.body == b"User-agent: *\n"
    assert reply.headers[b"etag"] == b'"5f5e1000-e"'  # nginx: "<mtime hex>-<size hex>"


def test_the_head_describes_the_file_as_it_is_now(files: StaticFiles, public: Path) -> None:
    found = files.find(b"GET", b"/robots.txt")
    assert found is not None
    (public / "robots.txt").write_bytes(b"changed!")
    os.utime(public / "robots.txt", (MTIME + 17, MTIME + 17))
    reply = respond(files, found)
    assert reply.body == b"changed!"
    assert reply.headers[b"etag"] == b'"%x-8"' % (MTIME + 17)
    assert reply.headers[b"last-modified"] == http_date(MTIME + 17)


@pytest.mark.parametrize(("version", "keep_alive", "connection"), [
    ("1.1", True, None),
    ("1.1", False, b"close"),
    ("1.0", True, b"keep-alive"),
    ("1.0", False, b"close"),
])
def test_connection_header(files: StaticFiles, version: str, keep_alive: bool, connection: bytes | None) -> None:
    for target, headers in [(b"/robots.txt", []), (b"/robots.txt", [(b"If-None-Match", b"*")]),
                            (b"/sized.bin", [(b"Range", b"bytes=5000-")]), (b"/sized.bin", [(b"Range", b"bytes=1-2")]),
                            (b"/robots.txt", [(b"If-Match", b'"nope"')]), (b"/../x", [])]:
        for method in (b"GET", b"HEAD"):
            reply = get(files, target, headers, method, version, keep_alive)
            assert reply.headers.get(b"connection") == connection, (target, headers, method)
            assert reply.headers[b"date"] == b"Tue, 14 Nov 2023 22:13:20 GMT"


def test_date_follows_the_clock(files: StaticFiles, clock: Clock) -> None:
    assert get(files, b"/robots.txt").headers[b"date"] == b"Tue, 14 Nov 2023 22:13:20 GMT"
    clock.advance(0.5)
    assert get(files, b"/robots.txt").headers[b"date"] == b"Tue, 14 Nov 2023 22:13:20 GMT"
    clock.advance(0.5)
    assert get(files, b"/robots.txt").headers[b"date"] == b"Tue, 14 Nov 2023 22:13:21 GMT"
    clock.advance(86400 * 40)
    assert get(files, b"/robots.txt").headers[b"date"] == b"Sun, 24 Dec 2023 22:13:21 GMT"


def test_head_is_the_head_of_get(files: StaticFiles) -> None:
    for target in (b"/robots.txt", b"/", b"/about", b"/zero.bin", b"/sized.bin"):
        got, head = get(files, target), get(files, target, method=b"HEAD")
        assert head.status == got.status == 200
        assert head.headers == got.headers
        assert head.body == b""


def test_empty_file(files: StaticFiles) -> None:
    reply = get(files, b"/zero.bin")
    assert reply.status == 200
    assert reply.headers[b"content-length"] == b"0" and reply.body == b""


@pytest.mark.parametrize(("name", "kind"), [
    ("a.html", b"text/html; charset=utf-8"),
    ("a.htm", b"text/html; charset=utf-8"),
    ("a.css", b"text/css; charset=utf-8"),
    ("a.js", b"text/javascript; charset=utf-8"),
    ("a.mjs", b"text/javascript; charset=utf-8"),
    ("a.txt", b"text/plain; charset=utf-8"),
    ("a.csv", b"text/csv; charset=utf-8"),
    ("a.md", b"text/markdown; charset=utf-8"),
    ("a.xml", b"application/xml; charset=utf-8"),
    ("a.svg", b"image/svg+xml; charset=utf-8"),
    ("a.json", b"application/json"),
    ("a.js.map", b"application/json"),
    ("a.webmanifest", b"application/manifest+json"),
    ("a.png", b"image/png"),
    ("a.PNG", b"image/png"),
    ("a.jpg", b"image/jpeg"),
    ("a.jpeg", b"image/jpeg"),
    ("a.gif", b"image/gif"),
    ("a.webp", b"image/webp"),
    ("a.avif", b"image/avif"),
    ("favicon.ico", b"image/x-icon"),
    ("a.woff", b"font/woff"),
    ("a.woff2", b"font/woff2"),
    ("a.ttf", b"font/ttf"),
    ("a.wasm", b"application/wasm"),
    ("a.pdf", b"application/pdf"),
    ("a.zip", b"application/zip"),
    ("a.tar.gz", b"application/gzip"),
    ("a.mp4", b"video/mp4"),
    ("a.mp3", b"audio/mpeg"),
    ("a.doc", b"application/msword"),  # Python's built-in table
    ("a.tsv", b"text/tab-separated-values; charset=utf-8"),
    ("LICENSE", b"application/octet-stream"),
    (".htaccess", b"application/octet-stream"),
    ("a.unknownext", b"application/octet-stream"),
    ("a.", b"application/octet-stream"),
])
def test_content_types(files: StaticFiles, public: Path, name: str, kind: bytes) -> None:
    (public / name).write_bytes(b"x")
    found = files.find(b"GET", b"/" + name.encode())
    assert found is not None and found.content_type == kind
    assert get(files, b"/" + name.encode()).headers[b"content-type"] == kind


def test_content_types_do_not_depend_on_the_host(public: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    """A host whose /etc/mime.types says otherwise changes nothing (neither the web table nor Python's own)."""
    odd = tmp_path / "mime.types"
    odd.write_text("application/x-odd css js html png doc\n")
    (public / "a.doc").write_bytes(b"x")
    static._content_types.cache_clear()
    try:
        with monkeypatch.context() as patch:
            patch.setattr(mimetypes, "knownfiles", [str(odd)])
            patch.setattr(mimetypes, "inited", False)
            files = StaticFiles(str(public), clock)
            assert mimetypes.guess_type("a.doc")[0] == "application/x-odd"  # the host's table is in effect
        for target, kind in [(b"/css/app.css", b"text/css; charset=utf-8"), (b"/index.html", b"text/html; charset=utf-8"),
                             (b"/a.doc", b"application/msword")]:
            found = files.find(b"GET", target)
            assert found is not None and found.content_type == kind
    finally:
        static._content_types.cache_clear()
        mimetypes.init()  # with the real files again


def test_page_cache_file_is_html(files: StaticFiles) -> None:
    for target in (b"/", b"/about", b"/docs/", b"/blog"):
        assert get(files, target).headers[b"content-type"] == b"text/html; charset=utf-8"


# Conditional GET.
def etag_of(files: StaticFiles, target: bytes) -> bytes:
    return get(files, target).headers[b"etag"]


@pytest.mark.parametrize("method", [b"GET", b"HEAD"])
def test_if_none_match(files: StaticFiles, method: bytes) -> None:
    etag = etag_of(files, b"/robots.txt")
    for value in (etag, b'"a", ' + etag, b'"a",' + etag + b',"b"', b"W/" + etag, b"*", b'  "x" ,W/' + etag):
        reply = get(files, b"/robots.txt", [(b"If-None-Match", value)], method)
        assert reply.status == 304 and reply.reason == b"Not Modified", value
        assert reply.body == b""
        assert reply.headers == {
            b"date": b"Tue, 14 Nov 2023 22:13:20 GMT",
            b"last-modified": b"Sun, 13 Sep 2020 12:26:40 GMT",
            b"etag": etag,
        }
    for value in (b'"other"', b'"5f5e1000-f"', etag[:-1], b"garbage", b""):
        assert get(files, b"/robots.txt", [(b"If-None-Match", value)], method).status == 200, value
    # Split over two header lines.
    assert get(files, b"/robots.txt", [(b"If-None-Match", b'"a"'), (b"if-none-match", etag)], method).status == 304


def test_if_none_match_takes_precedence_over_if_modified_since(files: StaticFiles) -> None:
    etag = etag_of(files, b"/robots.txt")
    lm = b"Sun, 13 Sep 2020 12:26:40 GMT"
    assert get(files, b"/robots.txt", [(b"If-None-Match", b'"other"'), (b"If-Modified-Since", lm)]).status == 200
    old = http_date(MTIME - 3600)
    assert get(files, b"/robots.txt", [(b"If-Modified-Since", old), (b"If-None-Match", etag)]).status == 304


@pytest.mark.parametrize(("value", "status"), [
    (b"Sun, 13 Sep 2020 12:26:40 GMT", 304),  # our Last-Modified, echoed
    (b"Sun, 13 Sep 2020 12:26:41 GMT", 304),  # later
    (b"Tue, 14 Nov 2023 22:13:20 GMT", 304),  # now
    (b"Sun, 13 Sep 2020 12:26:39 GMT", 200),  # one second before the change
    (b"Sunday, 13-Sep-20 12:26:40 GMT", 304),  # RFC 850
    (b"Sun Sep 13 12:26:40 2020", 304),  # asctime
    (b"Wed, 15 Nov 2023 00:00:00 GMT", 200),  # later than now: invalid, ignored
    (b"yesterday", 200),
    (b"", 200),
    (b"Sun, 13 Sep 2020 12:26:40 GMT\xff", 200),
])
def test_if_modified_since(files: StaticFiles, value: bytes, status: int) -> None:
    reply = get(files, b"/robots.txt", [(b"If-Modified-Since", value)])
    assert reply.status == status
    assert get(files, b"/robots.txt", [(b"if-modified-since", value)], b"HEAD").status == status


def test_if_modified_since_twice_is_ignored(files: StaticFiles) -> None:
    lm = b"Sun, 13 Sep 2020 12:26:40 GMT"
    assert get(files, b"/robots.txt", [(b"If-Modified-Since", lm), (b"If-Modified-Since", lm)]).status == 200


def test_if_modified_since_with_a_file_from_the_future(files: StaticFiles, public: Path) -> None:
    """A file stamped after now (clock skew at deploy): the echo of its own Last-Modified still validates."""
    future = NOW + 3600
    os.utime(public / "robots.txt", (future, future))
    lm = http_date(future)
    assert get(files, b"/robots.txt", [(b"If-Modified-Since", lm)]).status == 304
    assert get(files, b"/robots.txt", [(b"If-Modified-Since", http_date(future + 1))]).status == 200


def test_304_on_a_changed_file_becomes_200(files: StaticFiles, public: Path) -> None:
    etag = etag_of(files, b"/robots.txt")
    (public / "robots.txt").write_bytes(b"User-agent: bot\n")
    os.utime(public / "robots.txt", (MTIME, MTIME))  # same time, other size
    assert get(files, b"/robots.txt", [(b"If-None-Match", etag)]).status == 200


def test_if_match_and_if_unmodified_since(files: StaticFiles) -> None:
    etag = etag_of(files, b"/robots.txt")
    for value in (etag, b"*", b'"x", ' + etag):
        assert get(files, b"/robots.txt", [(b"If-Match", value)]).status == 200
    for value in (b'"x"', b"W/" + etag):  # strong comparison: a weak tag never matches
        reply = get(files, b"/robots.txt", [(b"If-Match", value)])
        assert reply.status == 412 and reply.reason == b"Precondition Failed"
        assert reply.headers[b"content-length"] == b"0" and reply.body == b""
    assert get(files, b"/robots.txt", [(b"If-Unmodified-Since", http_date(MTIME))]).status == 200
    assert get(files, b"/robots.txt", [(b"If-Unmodified-Since", http_date(MTIME - 1))]).status == 412
    assert get(files, b"/robots.txt", [(b"If-Unmodified-Since", b"garbage")]).status == 200
    # If-Match wins over If-Unmodified-Since, and a failed precondition wins over a Range.
    headers = [(b"If-Match", etag), (b"If-Unmodified-Since", http_date(MTIME - 1))]
    assert get(files, b"/robots.txt", headers).status == 200
    assert get(files, b"/robots.txt", [(b"If-Match", b'"x"'), (b"Range", b"bytes=0-1")]).status == 412


# Ranges.
SIZED = bytes(i % 251 for i in range(1000))


@pytest.mark.parametrize(("value", "first", "last"), [
    (b"bytes=0-99", 0, 99),
    (b"bytes=0-0", 0, 0),
    (b"bytes=999-999", 999, 999),
    (b"bytes=100-", 100, 999),
    (b"bytes=0-", 0, 999),
    (b"bytes=-100", 900, 999),
    (b"bytes=-1", 999, 999),
    (b"bytes=-1000", 0, 999),
    (b"bytes=-5000", 0, 999),
    (b"bytes=990-5000", 990, 999),
    (b"bytes=0-99999999999999999999999999999", 0, 999),
    (b"bytes=-99999999999999999999999999999", 0, 999),
    (b"Bytes=10-19", 10, 19),
    (b" bytes = 10 - 19 ", 10, 19),
    (b"bytes=10-19,", 10, 19),
    (b"bytes=, 10-19", 10, 19),
])
def test_range(files: StaticFiles, value: bytes, first: int, last: int) -> None:
    reply = get(files, b"/sized.bin", [(b"Range", value)])
    assert reply.status == 206 and reply.reason == b"Partial Content"
    assert reply.headers[b"content-range"] == b"bytes %d-%d/1000" % (first, last)
    assert reply.headers[b"content-length"] == b"%d" % (last - first + 1)
    assert reply.headers[b"accept-ranges"] == b"bytes"
    assert reply.headers[b"etag"] == b'"%x-3e8"' % MTIME
    assert reply.body == SIZED[first:last + 1]
    head = get(files, b"/sized.bin", [(b"Range", value)], b"HEAD")
    assert head.status == 206 and head.headers == reply.headers and head.body == b""


@pytest.mark.parametrize("value", [
    b"bytes=1000-",
    b"bytes=1000-1000",
    b"bytes=5000-6000",
    b"bytes=-0",
    b"bytes=99999999999999999999999999999-",
])
def test_unsatisfiable_range(files: StaticFiles, value: bytes) -> None:
    for method in (b"GET", b"HEAD"):
        reply = get(files, b"/sized.bin", [(b"Range", value)], method)
        assert reply.status == 416 and reply.reason == b"Range Not Satisfiable"
        assert reply.headers[b"content-range"] == b"bytes */1000"
        assert reply.headers[b"content-length"] == b"0" and reply.body == b""


@pytest.mark.parametrize("value", [
    b"bytes=0-1,5-6",  # several ranges: the whole file (documented)
    b"bytes=0-1, 2000-3000",
    b"bytes=5-2",  # last < first: invalid, ignored
    b"items=0-5",
    b"bytes 0-5",
    b"bytes=abc",
    b"bytes=",
    b"bytes=-",
    b"bytes=1-2-3",
    b"bytes=0x10-0x20",
    b"bytes=+1-2",
    b"",
])
def test_range_answered_with_the_whole_file(files: StaticFiles, value: bytes) -> None:
    reply = get(files, b"/sized.bin", [(b"Range", value)])
    assert reply.status == 200, value
    assert b"content-range" not in reply.headers
    assert reply.body == SIZED


def test_two_range_headers_are_several_ranges(files: StaticFiles) -> None:
    assert get(files, b"/sized.bin", [(b"Range", b"bytes=0-1"), (b"Range", b"bytes=3-4")]).status == 200


def test_ranges_of_an_empty_file(files: StaticFiles) -> None:
    reply = get(files, b"/zero.bin", [(b"Range", b"bytes=0-")])
    assert reply.status == 416 and reply.headers[b"content-range"] == b"bytes */0"
    reply = get(files, b"/zero.bin", [(b"Range", b"bytes=-5")])
    assert reply.status == 200 and reply.body == b""


def test_if_range(files: StaticFiles) -> None:
    etag = etag_of(files, b"/sized.bin")
    lm = http_date(MTIME)
    rng = (b"Range", b"bytes=10-19")
    assert get(files, b"/sized.bin", [rng, (b"If-Range", etag)]).status == 206
    assert get(files, b"/sized.bin", [(b"If-Range", lm), rng]).status == 206
    assert get(files, b"/sized.bin", [(b"If-Range", b"Sunday, 13-Sep-20 12:26:40 GMT"), rng]).status == 206
    for stale in (b'"other"', b"W/" + etag, http_date(MTIME - 1), http_date(MTIME + 1), b"garbage"):
        reply = get(files, b"/sized.bin", [rng, (b"If-Range", stale)])
        assert reply.status == 200 and reply.body == SIZED, stale
    # A stale If-Range also saves an unsatisfiable range from 416.
    assert get(files, b"/sized.bin", [(b"Range", b"bytes=5000-"), (b"If-Range", b'"other"')]).status == 200
    # If-Range alone does nothing.
    assert get(files, b"/sized.bin", [(b"If-Range", b'"other"')]).status == 200


def test_conditional_and_range_together(files: StaticFiles) -> None:
    etag = etag_of(files, b"/sized.bin")
    assert get(files, b"/sized.bin", [(b"Range", b"bytes=0-1"), (b"If-None-Match", etag)]).status == 304
    assert get(files, b"/sized.bin", [(b"Range", b"bytes=0-1"), (b"If-None-Match", b'"x"')]).status == 206


# Streaming.
@pytest.fixture
def big(public: Path) -> bytes:
    data = random.Random(7).randbytes(5 * 1024 * 1024 + 123)
    (public / "big.bin").write_bytes(data)
    return data


def test_big_file_streams_with_back_pressure(files: StaticFiles, big: bytes) -> None:
    found = files.find(b"GET", b"/big.bin")
    assert found is not None
    fds = open_fds()
    transport = RecordingTransport()
    d = files.respond(found, b"GET", [], "1.1", True, transport)
    # The head is out, the producer registered (pull), and nothing else is read until the transport asks.
    assert len(transport.writes) == 1
    reply = parse(transport.writes[0])
    assert reply.status == 200 and reply.headers[b"content-length"] == str(len(big)).encode()
    producer = transport.producer
    assert producer is not None and transport.streaming is False
    assert IPullProducer.providedBy(producer)
    assert open_fds() == fds + 1
    pieces = 0
    while transport.producer is not None:
        assert not d.called
        before = len(transport.writes)
        producer.resumeProducing()
        assert len(transport.writes) == before + 1  # exactly one piece per request for more
        assert len(transport.writes[-1]) <= CHUNK
        pieces += 1
    assert pieces == -(-len(big) // CHUNK)
    assert outcome(d) is None
    assert b"".join(transport.writes[1:]) == big
    assert hashlib.sha256(parse(transport.value()).body).digest() == hashlib.sha256(big).digest()
    assert open_fds() == fds
    producer.resumeProducing()  # a late call does nothing
    assert len(transport.writes) == pieces + 1


def test_big_range_streams(files: StaticFiles, big: bytes) -> None:
    reply = get(files, b"/big.bin", [(b"Range", b"bytes=1000-3000999")])
    assert reply.status == 206
    assert reply.headers[b"content-range"] == b"bytes 1000-3000999/%d" % len(big)
    assert reply.body == big[1000:3001000]
    reply = get(files, b"/big.bin", [(b"Range", b"bytes=-200000")])
    assert reply.body == big[-200000:]


def test_big_head_and_304_do_not_stream(files: StaticFiles, big: bytes) -> None:
    for method, headers in [(b"HEAD", []), (b"GET", [(b"If-None-Match", b"*")])]:
        found = files.find(method, b"/big.bin")
        assert found is not None
        transport = StringTransport()
        d = files.respond(found, method, headers, "1.1", True, transport)
        assert transport.producer is None
        assert outcome(d) is None


def test_body_of_exactly_one_chunk_is_written_at_once(files: StaticFiles, public: Path) -> None:
    for size, streamed in [(CHUNK, False), (CHUNK + 1, True)]:
        (public / "edge.bin").write_bytes(b"e" * size)
        found = files.find(b"GET", b"/edge.bin")
        assert found is not None
        transport = RecordingTransport()
        d = files.respond(found, b"GET", [], "1.1", True, transport)
        assert (transport.producer is not None) is streamed
        if not streamed:
            assert len(transport.writes) == 1 and outcome(d) is None  # head and body in one write


def test_client_gone_while_streaming(files: StaticFiles, big: bytes) -> None:
    found = files.find(b"GET", b"/big.bin")
    assert found is not None
    fds = open_fds()
    transport = RecordingTransport()
    d = files.respond(found, b"GET", [], "1.1", True, transport)
    producer = transport.producer
    producer.resumeProducing()
    producer.resumeProducing()
    producer.stopProducing()  # what a transport does when the connection is lost
    failure = outcome(d)
    assert isinstance(failure, Failure) and failure.check(ConnectionLost)
    assert open_fds() == fds
    written = len(transport.writes)
    producer.resumeProducing()
    producer.stopProducing()
    assert len(transport.writes) == written


class GoneTransport(StringTransport):
    """Like a FileDescriptor that is already disconnected: registering a producer stops it."""

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        producer.stopProducing()


def test_client_gone_before_streaming(files: StaticFiles, big: bytes) -> None:
    found = files.find(b"GET", b"/big.bin")
    assert found is not None
    fds = open_fds()
    failure = outcome(files.respond(found, b"GET", [], "1.1", True, GoneTransport()))
    assert isinstance(failure, Failure) and failure.check(ConnectionLost)
    assert open_fds() == fds


def test_producer_already_registered(files: StaticFiles, big: bytes) -> None:
    found = files.find(b"GET", b"/big.bin")
    assert found is not None
    fds = open_fds()
    transport = StringTransport()
    transport.registerProducer(object(), True)
    failure = outcome(files.respond(found, b"GET", [], "1.1", True, transport))
    assert isinstance(failure, Failure) and failure.check(RuntimeError)
    assert open_fds() == fds


def test_file_truncated_while_streaming(files: StaticFiles, public: Path, big: bytes) -> None:
    found = files.find(b"GET", b"/big.bin")
    assert found is not None
    fds = open_fds()
    transport = RecordingTransport()
    d = files.respond(found, b"GET", [], "1.1", True, transport)
    transport.producer.resumeProducing()
    os.truncate(public / "big.bin", CHUNK + 10)
    transport.producer.resumeProducing()  # the last 10 bytes
    assert transport.producer is not None
    transport.producer.resumeProducing()  # nothing left: the promised length cannot be met
    failure = outcome(d)
    assert isinstance(failure, Failure) and failure.check(FileChanged)
    assert transport.producer is None and transport.disconnecting
    assert open_fds() == fds


def test_small_file_truncated_while_read(files: StaticFiles, monkeypatch: pytest.MonkeyPatch) -> None:
    found = files.find(b"GET", b"/sized.bin")
    assert found is not None
    fds = open_fds()
    monkeypatch.setattr(static, "_read", lambda fd, offset, length: b"short")
    transport = StringTransport()
    failure = outcome(files.respond(found, b"GET", [], "1.1", True, transport))
    assert isinstance(failure, Failure) and failure.check(FileChanged)
    assert transport.value() == b"" and transport.disconnecting
    assert open_fds() == fds


def test_no_descriptor_leaks(files: StaticFiles, big: bytes) -> None:
    fds = open_fds()
    for target, headers in [(b"/robots.txt", []), (b"/big.bin", []), (b"/big.bin", [(b"Range", b"bytes=5-")]),
                            (b"/sized.bin", [(b"Range", b"bytes=5000-")]), (b"/sized.bin", [(b"If-None-Match", b"*")]),
                            (b"/sized.bin", [(b"If-Match", b'"x"')]), (b"/zero.bin", [])]:
        get(files, target, headers)
        get(files, target, headers, b"HEAD")
    assert open_fds() == fds


# Files that change between find() and respond().
def test_file_gone_before_respond(files: StaticFiles, public: Path) -> None:
    found = files.find(b"GET", b"/robots.txt")
    assert found is not None
    (public / "robots.txt").unlink()
    reply = respond(files, found)
    assert reply.status == 404 and reply.headers[b"content-type"] == b"text/html; charset=utf-8"


def test_file_swapped_for_a_symlink_before_respond(files: StaticFiles, public: Path, tmp_path: Path) -> None:
    found = files.find(b"GET", b"/robots.txt")
    assert found is not None
    (public / "robots.txt").unlink()
    (public / "robots.txt").symlink_to(tmp_path / "secret.txt")
    reply = respond(files, found)
    assert reply.status == 404 and SECRET not in reply.body
    assert files.find(b"GET", b"/robots.txt") is REFUSED


def test_file_swapped_for_a_fifo_before_respond(files: StaticFiles, public: Path) -> None:
    found = files.find(b"GET", b"/robots.txt")
    assert found is not None
    (public / "robots.txt").unlink()
    os.mkfifo(public / "robots.txt")
    assert respond(files, found).status == 404  # and open() did not block on the FIFO


def test_unreadable_file_gives_403(files: StaticFiles, monkeypatch: pytest.MonkeyPatch) -> None:
    found = files.find(b"GET", b"/robots.txt")
    assert found is not None

    def denied(path: Any, flags: int, mode: int = 0o777) -> int:
        raise PermissionError(13, "Permission denied", path)

    with monkeypatch.context() as patch:
        patch.setattr(os, "open", denied)  # (the tests run as root, who reads every file)
        reply = respond(files, found)
        head = respond(files, found, b"HEAD")
    assert reply.status == 403 and reply.reason == b"Forbidden"
    assert reply.headers[b"content-type"] == b"text/html; charset=utf-8"
    assert head.status == 403 and head.body == b""


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_unreadable_file_gives_403_for_real(files: StaticFiles, public: Path) -> None:
    os.chmod(public / "robots.txt", 0)
    assert get(files, b"/robots.txt").status == 403
    os.chmod(public / "css", 0)  # cannot even look inside: the app
    assert files.find(b"GET", b"/css/app.css") is None
    os.chmod(public / "css", stat.S_IRWXU)


# Mounted below a base URI.
@pytest.mark.parametrize(("target", "expected"), [
    (b"/app/robots.txt", b"robots.txt"),
    (b"/app/robots.txt?q", b"robots.txt"),
    (b"/app", b"index.html"),
    (b"/app/", b"index.html"),
    (b"/app?x", b"index.html"),
    (b"/app/about", b"about.html"),
    (b"/app/docs/", b"docs/index.html"),
    (b"/robots.txt", None),
    (b"/", None),
    (b"/apprentice/robots.txt", None),
    (b"/app%2frobots.txt", None),  # the router matched the raw prefix; so do we
    (b"/app/../secret.txt", b"REFUSED"),
    (b"/app/../app/robots.txt", b"REFUSED"),  # ".." may not climb above the mount point either
    (b"http://example.com/app/robots.txt", b"robots.txt"),
])
def test_base_uri(public: Path, clock: Clock, target: bytes, expected: bytes | None) -> None:
    for base_uri in ("/app", "/app/"):
        files = StaticFiles(str(public), clock, base_uri=base_uri)
        assert served(files, target) == expected


# Dates.
@pytest.mark.parametrize("seconds", [0, 1, 784111777, MTIME, NOW, 951782400, 4102444800, 1_000_000_000.9])
def test_http_date(seconds: float) -> None:
    assert http_date(seconds) == email.utils.formatdate(int(seconds), usegmt=True).encode()
    assert parse_http_date(http_date(seconds)) == int(seconds)


@pytest.mark.parametrize(("value", "seconds"), [
    (b"Sun, 06 Nov 1994 08:49:37 GMT", 784111777),
    (b"Sunday, 06-Nov-94 08:49:37 GMT", 784111777),
    (b"Sun Nov  6 08:49:37 1994", 784111777),
    (b"Sun, 06 Nov 1994 08:49:37 +0100", 784111777 - 3600),
    (b"not a date", None),
    (b"", None),
    (b"\xff\xfe", None),
    (b"Sun, 06 Xyz 1994 08:49:37 GMT", None),
])
def test_parse_http_date(value: bytes, seconds: int | None) -> None:
    assert parse_http_date(value) == seconds


# A real connection: the transport's own producer calls, and TLS's pull-to-push adapter.
class Serve(protocol.Protocol):
    def __init__(self, files: StaticFiles, target: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        self.files, self.target, self.headers = files, target, headers
        self.done: defer.Deferred[None] | None = None
        self.lost: defer.Deferred[None] = defer.Deferred()

    def connectionMade(self) -> None:
        found = self.files.find(b"GET", self.target)
        assert found is not None
        transport: Any = self.transport
        self.done = self.files.respond(found, b"GET", self.headers, "1.1", False, transport)
        self.done.addCallback(lambda _: transport.loseConnection())

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:
        self.lost.callback(None)


class Collect(protocol.Protocol):
    def __init__(self, finished: defer.Deferred[bytes]) -> None:
        self.finished = finished
        self.data: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        self.data.append(data)

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:
        self.finished.callback(b"".join(self.data))


async def fetch_over_loopback(files: StaticFiles, target: bytes, headers: list[tuple[bytes, bytes]],
                              tls: bool) -> tuple[bytes, Serve]:
    from twisted.internet import reactor as installed
    from twisted.internet import ssl

    reactor: Any = installed
    servers: list[Serve] = []

    class ServerFactory(protocol.ServerFactory):
        def buildProtocol(self, addr: Any) -> Serve:
            servers.append(Serve(files, target, headers))
            return servers[-1]

    finished: defer.Deferred[bytes] = defer.Deferred()
    client: Any = protocol.ClientFactory.forProtocol(lambda: Collect(finished))
    if tls:
        import twisted.test

        pem = (Path(twisted.test.__file__).parent / "server.pem").read_bytes()
        certificate = ssl.PrivateCertificate.loadPEM(pem)
        port = reactor.listenSSL(0, ServerFactory(), certificate.options(), interface="127.0.0.1")
        reactor.connectSSL("127.0.0.1", port.getHost().port, client, ssl.CertificateOptions())
    else:
        port = reactor.listenTCP(0, ServerFactory(), interface="127.0.0.1")
        reactor.connectTCP("127.0.0.1", port.getHost().port, client)
    try:
        raw = await finished
        await servers[0].lost  # (TLS: the server's socket closes when the client's close_notify arrives)
    finally:
        await port.stopListening()
    return raw, servers[0]


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
@pytest.mark.filterwarnings("ignore:Passing pyOpenSSL:DeprecationWarning")  # Twisted's loadPEM of its test certificate
@pytest_twisted.ensureDeferred
async def test_big_file_over_a_real_connection(files: StaticFiles, big: bytes, tls: bool) -> None:
    sockets = open_sockets()
    raw, server = await fetch_over_loopback(files, b"/big.bin", [], tls)
    reply = parse(raw)
    assert reply.status == 200 and reply.headers[b"connection"] == b"close"
    assert hashlib.sha256(reply.body).digest() == hashlib.sha256(big).digest()
    assert server.done is not None and outcome(server.done) is None
    raw, server = await fetch_over_loopback(files, b"/big.bin", [(b"Range", b"bytes=100-2000099")], tls)
    reply = parse(raw)
    assert reply.status == 206 and reply.body == big[100:2000100]
    assert open_sockets() == sockets
    assert not [target for target in open_targets() if "big.bin" in target]

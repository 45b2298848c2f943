"""Static files of an app's public/ directory, served by the real server without an app process."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

from tests.integration.conftest import APP_PYTHON, APPS, Server, world_dir


def raw(server: Server, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


def get(server: Server, target: str, *headers: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    lines = [f"{method} {target} HTTP/1.1", "Host: t", "Connection: close", *headers, "", ""]
    answer = raw(server, "\r\n".join(lines).encode())
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *fields = head.decode("latin-1").split("\r\n")
    found = {}
    for field in fields:
        name, _, value = field.partition(":")
        found[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), found, body


def app_with_public() -> Path:
    root = world_dir("static", 0o755)
    shutil.copy(APPS / "echo_app.py", root / "echo_app.py")
    public = root / "public"
    (public / "css").mkdir(parents=True)
    (public / "index.html").write_text("<h1>home</h1>")
    (public / "about.html").write_text("<h1>about</h1>")
    (public / "css" / "site.css").write_text("body{}" * 1000)
    (root / "secret.txt").write_text("do not serve")
    os.symlink(root / "secret.txt", public / "leak.txt")
    for folder, _dirs, files in os.walk(root):
        os.chmod(folder, 0o755)
        for name in files:
            os.chmod(os.path.join(folder, name), 0o644)
    return root


def test_public_files_are_served_without_starting_the_app(serve) -> None:  # type: ignore[no-untyped-def]
    root = app_with_public()
    server = serve(["--app-root", str(root), "--app-start-command", f"{APP_PYTHON} echo_app.py",
                    "--min-instances", "0"], ready=0)
    server.wait_log(r"passenger \S+ serving")
    status, headers, body = get(server, "/")
    assert (status, body) == (200, b"<h1>home</h1>")
    assert headers["content-type"].startswith("text/html")
    assert get(server, "/about")[2] == b"<h1>about</h1>", "Passenger's page cache: /about -> about.html"
    status, headers, body = get(server, "/css/site.css")
    assert status == 200 and headers["content-type"].startswith("text/css") and len(body) == 6000
    assert get(server, "/css/site.css", f"If-None-Match: {headers['etag']}")[0] == 304
    status, headers, body = get(server, "/css/site.css", "Range: bytes=0-9")
    assert (status, headers["content-range"], body) == (206, "bytes 0-9/6000", b"body{}body")
    status, headers, body = get(server, "/css/site.css", method="HEAD")
    assert status == 200 and body == b"" and headers["content-length"] == "6000"
    assert "Spawning process" not in server.log(), "no app process was needed"


def test_nothing_outside_public_is_served(serve) -> None:  # type: ignore[no-untyped-def]
    root = app_with_public()
    server = serve(["--app-root", str(root), "--app-start-command", f"{APP_PYTHON} echo_app.py"])
    for target in ("/../secret.txt", "/%2e%2e/secret.txt", "/%252e%252e/secret.txt", "/css/..%2f..%2fsecret.txt",
                   "/leak.txt"):
        status, _, body = get(server, target)
        assert b"do not serve" not in body, target
        assert status == 404, (target, status)


def test_other_paths_and_methods_go_to_the_app(serve) -> None:  # type: ignore[no-untyped-def]
    root = app_with_public()
    server = serve(["--app-root", str(root), "--app-start-command", f"{APP_PYTHON} echo_app.py"])
    status, headers, body = get(server, "/pid")
    assert status == 200 and body.isdigit() and "x-pid" in headers
    status, _, body = get(server, "/index.html", "Content-Length: 0", method="POST")
    assert status == 200 and b"home" not in body, "only GET and HEAD are served from public/"


def test_static_files_dir_can_be_switched_off(serve) -> None:  # type: ignore[no-untyped-def]
    root = app_with_public()
    server = serve(["--app-root", str(root), "--app-start-command", f"{APP_PYTHON} echo_app.py",
                    "--static-files-dir", ""])
    assert get(server, "/index.html")[2] != b"<h1>home</h1>"

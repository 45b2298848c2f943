"""Request buffering (buffer_upload): slow uploads never hold an app process."""

from __future__ import annotations

import hashlib
import json
import os
import socket

from tests.integration.conftest import echo_app_args


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def answer(sock: socket.socket) -> tuple[bytes, bytes]:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return head, body


def quick_get(port: int) -> bytes:
    with connect(port) as sock:
        sock.sendall(b"GET /pid HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        return answer(sock)[0]


ONE_PROCESS = ("--concurrency", "1", "--min-instances", "1", "--max-pool-size", "1", "--max-request-queue-time", "2")


def test_a_slow_upload_does_not_hold_the_only_process(serve) -> None:  # type: ignore[no-untyped-def]
    server = serve(echo_app_args(*ONE_PROCESS))  # a known concurrency: buffered by default
    body = os.urandom(300_000)
    with connect(server.port) as uploader:
        uploader.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: %d\r\n\r\n"
                         % len(body) + body[:100_000])
        assert quick_get(server.port).startswith(b"HTTP/1.1 200 "), "served while the upload is half way"
        uploader.sendall(body[100_000:])
        head, reply = answer(uploader)
    assert head.startswith(b"HTTP/1.1 200 ")
    seen = json.loads(reply)
    assert (seen["body_length"], seen["body_sha256"]) == (len(body), hashlib.sha256(body).hexdigest())


def test_a_buffered_upload_that_expects_100_continue_gets_it_at_once(serve) -> None:  # type: ignore[no-untyped-def]
    server = serve(echo_app_args(*ONE_PROCESS))  # buffered: no process is chosen before the body is in
    body = os.urandom(200_000)
    with connect(server.port) as uploader:
        uploader.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: %d\r\n"
                         b"Expect: 100-continue\r\n\r\n" % len(body))
        uploader.settimeout(5)  # curl waits 1 s and then sends anyway; other clients wait longer or for good
        interim = b""
        while b"\r\n\r\n" not in interim:
            interim += uploader.recv(1)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        uploader.sendall(body)
        head, reply = answer(uploader)
    assert head.startswith(b"HTTP/1.1 200 "), head
    seen = json.loads(reply)
    assert (seen["body_length"], seen["body_sha256"]) == (len(body), hashlib.sha256(body).hexdigest())


def test_a_buffered_chunked_upload_reaches_the_app_with_its_length(serve) -> None:  # type: ignore[no-untyped-def]
    server = serve(echo_app_args(*ONE_PROCESS))
    body = os.urandom(3 * 1024 * 1024)  # past the memory part: spooled to a file
    with connect(server.port) as uploader:
        uploader.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n")
        for start in range(0, len(body), 100_000):
            piece = body[start:start + 100_000]
            uploader.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
        uploader.sendall(b"0\r\n\r\n")
        head, reply = answer(uploader)
    assert head.startswith(b"HTTP/1.1 200 "), head
    seen = json.loads(reply)
    headers = {name.lower(): value for name, value in seen["headers"]}
    assert headers.get("content-length") == str(len(body)) and "transfer-encoding" not in headers
    assert seen["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_without_buffering_a_slow_upload_holds_the_process(serve) -> None:  # type: ignore[no-untyped-def]
    server = serve(echo_app_args(*ONE_PROCESS, "--no-buffer-upload"))
    with connect(server.port) as uploader:
        uploader.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: 10\r\n\r\nabc")
        assert quick_get(server.port).startswith(b"HTTP/1.1 504 "), "the only process waits for the upload"

"""Error pages the front end answers with itself (502, 503, 400, ...)."""

from __future__ import annotations

import html
from http import HTTPStatus

from passenger.http.dates import date_line

#: Reason phrases by status: Python's table, with RFC 9110's newer names for 413 and 414.
REASONS = {status.value: status.phrase for status in HTTPStatus} | {413: "Content Too Large", 414: "URI Too Long"}


def reason(status: int) -> str:
    return REASONS.get(status, "Error")


def error_response(status: int, title: str, detail: str, keep_alive: bool) -> bytes:
    """A complete HTTP/1.1 response with a small HTML page."""
    body = (
        f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{status} {html.escape(title)}</title></head>\n"
        f"<body><h1>{status} {html.escape(title)}</h1>\n<p>{html.escape(detail)}</p>\n<hr><p>passenger</p></body></html>\n"
    ).encode()
    return page_response(status, body, "text/html; charset=utf-8", keep_alive)


def page_response(status: int, body: bytes, content_type: str, keep_alive: bool) -> bytes:
    """A complete HTTP/1.1 response the server answers itself; never cached."""
    head = (
        f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Cache-Control: no-cache, no-store, must-revalidate\r\n"
        + ("" if keep_alive else "Connection: close\r\n")
        + "\r\n"
    ).encode("ascii")
    return head[:-2] + date_line() + b"\r\n" + body

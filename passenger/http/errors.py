"""Error pages the front end answers with itself (502, 503, 400, ...)."""

from __future__ import annotations

import html

from passenger.http.dates import date_line

REASONS = {
    400: "Bad Request",
    404: "Not Found",
    413: "Content Too Large",
    414: "URI Too Long",
    417: "Expectation Failed",
    431: "Request Header Fields Too Large",
    505: "HTTP Version Not Supported",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


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

"""Header rules of the relay: what is hop-by-hop and what the server sets itself."""

from __future__ import annotations

from typing import Final

#: Hop-by-hop headers (RFC 9110 §7.6.1 and the legacy Keep-Alive/Proxy-Connection),
#: plus the framing headers the relay re-emits itself.
HOP_BY_HOP: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
    }
)

#: Request headers the client may not set: the server sets them from what it saw
#: (a trusted proxy's are kept and extended).
FORWARDED: Final = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-forwarded-port",
                              b"x-forwarded-prefix", b"forwarded"})

#: Request headers the server handles itself before passing (or replacing) them.
SERVER_HANDLED: Final = frozenset({b"expect", b"x-request-id"})

REQUEST_DROPPED: Final = HOP_BY_HOP | FORWARDED | SERVER_HANDLED
RESPONSE_DROPPED: Final = HOP_BY_HOP

# What the relay does with a response header (by lower-case name); a name not listed passes as it is.
DROP: Final = 0  # hop-by-hop: left out
LENGTH: Final = 1  # Content-Length: re-emitted by the relay
CHUNKED: Final = 2  # Transfer-Encoding: the relay frames the body itself
CONNECTION: Final = 3  # left out, and so are the headers it lists
DATE: Final = 4  # passed on; the relay adds one when the app sent none
RESPONSE_SPECIAL: Final = {name: DROP for name in HOP_BY_HOP} | {
    b"content-length": LENGTH, b"transfer-encoding": CHUNKED, b"connection": CONNECTION, b"date": DATE}
#: The kinds of response header passed on to the client.
PASSED: Final = (None, DATE)

#: Characters of header names passed to apps: [A-Za-z0-9-] (Passenger drops others, CVE-2015-7519).
NAME_CHARS: Final = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-"
#: With --allow-underscore-headers.
NAME_CHARS_UNDERSCORE: Final = NAME_CHARS + b"_"
#: Characters of a Host header: a reg-name, an IPv4 or [IPv6] literal, and a port (RFC 3986 section 3.2.2).
HOST_CHARS: Final = NAME_CHARS + b"._~!$&'()*+,;=:[]%"
#: Characters of an X-Request-Id that is kept (up to 200 of them).
REQUEST_ID_CHARS: Final = NAME_CHARS + b"._"


def connection_tokens(value: bytes) -> set[bytes]:
    """The header names listed in a ``Connection`` header, lower-cased."""
    return {token.strip().lower() for token in value.split(b",") if token.strip()}


def pick(headers: list[tuple[bytes, bytes]], first: bytes, second: bytes) -> tuple[bytes | None, bytes | None]:
    """The values of two headers (lower-case names; the last of each wins), in one pass over the list."""
    one = two = None
    for name, value in headers:
        lname = name.lower()
        if lname == first:
            one = value
        elif lname == second:
            two = value
    return one, two

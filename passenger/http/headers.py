"""Header rules of the relay: what is hop-by-hop and what the server sets itself."""

from __future__ import annotations

#: Hop-by-hop headers (RFC 9110 §7.6.1 and the legacy Keep-Alive/Proxy-Connection),
#: plus the framing headers the relay re-emits itself.
HOP_BY_HOP = frozenset(
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

#: Request headers the client may not set: the server sets them from what it saw.
FORWARDED = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"})

REQUEST_DROPPED = HOP_BY_HOP | FORWARDED
RESPONSE_DROPPED = HOP_BY_HOP


def connection_tokens(value: bytes) -> set[bytes]:
    """The header names listed in a ``Connection`` header, lower-cased."""
    return {token.strip().lower() for token in value.split(b",") if token.strip()}

"""Which app a request is for: by Host (``server_names``) and path prefix (``base_uri``).

A name matches exactly first, then the longest ``*.suffix`` wildcard, then the
apps that answer every host (no server_names, or ``*``).  Among the apps of
the matching name the longest ``base_uri`` that prefixes the path wins, on a
segment boundary (``/blog`` takes ``/blog`` and ``/blog/x``, not ``/blogs``).
One app answering everything (the common case) costs one comparison.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Generic, TypeVar

T = TypeVar("T")
#: (prefix, prefix + "/", target), longest prefix first; the prefix of "/" is empty.
Mounts = list[tuple[bytes, bytes, T]]


def _mount_order(mounts: Mounts[T]) -> Mounts[T]:
    return sorted(mounts, key=lambda mount: len(mount[0]), reverse=True)


class Router(Generic[T]):
    def __init__(self, targets: Iterable[tuple[tuple[str, ...], str, T]]) -> None:
        """``targets``: (server_names, base_uri, target) for each app."""
        self._exact: dict[bytes, Mounts[T]] = {}
        self._wildcards: list[tuple[bytes, Mounts[T]]] = []
        self._anywhere: Mounts[T] = []
        wildcards: dict[bytes, Mounts[T]] = {}
        entries = list(targets)
        for names, base_uri, target in entries:
            prefix = b"" if base_uri == "/" else base_uri.encode()
            mount = (prefix, prefix + b"/", target)
            for name in names or ("*",):
                if name == "*":
                    self._anywhere.append(mount)
                elif name.startswith("*."):
                    wildcards.setdefault(name[1:].encode(), []).append(mount)
                else:
                    self._exact.setdefault(name.encode(), []).append(mount)
        for key, mounts in self._exact.items():
            self._exact[key] = _mount_order(mounts)
        self._wildcards = sorted(((suffix, _mount_order(m)) for suffix, m in wildcards.items()),
                                 key=lambda item: len(item[0]), reverse=True)
        self._anywhere = _mount_order(self._anywhere)
        only = entries[0] if len(entries) == 1 else None
        #: The one app that takes every request, if that is the whole configuration.
        self.only: T | None = only[2] if only is not None and not only[0] and only[1] == "/" else None

    def route(self, host: bytes | None, target: bytes) -> T | None:
        """The app for this Host header and request target, or None (no app answers it)."""
        if self.only is not None:
            return self.only
        if target.startswith(b"/"):
            path = _path_of(target)
        else:
            # absolute-form: its own authority wins over the Host header (RFC 9112 section 3.2.2)
            authority, path = _split_absolute(target)
            if authority is not None:
                host = authority
        if host:
            name = host.lower()
            if not name.endswith(b"]") and b":" in name:
                name = name.rsplit(b":", 1)[0]  # names match whatever the port
            mounts = self._exact.get(name)
            if mounts is not None:
                found = _match(mounts, path)
                if found is not None:
                    return found
            for suffix, wild in self._wildcards:
                if name.endswith(suffix) and len(name) > len(suffix):
                    found = _match(wild, path)
                    if found is not None:
                        return found
        return _match(self._anywhere, path)


def _path_of(target: bytes) -> bytes:
    """The path of an origin-form target: up to ``?`` or ``#``."""
    end = len(target)
    for mark in (b"?", b"#"):
        at = target.find(mark, 0, end)
        if at != -1:
            end = at
    return target[:end]


def _split_absolute(target: bytes) -> tuple[bytes | None, bytes]:
    """(authority, path) of ``scheme://authority/path?query``; (None, "/") for the other forms (``*``, CONNECT)."""
    scheme_end = target.find(b"://")
    if scheme_end == -1:
        return None, b"/"
    start = scheme_end + 3
    end = len(target)
    for mark in (b"/", b"?", b"#"):
        at = target.find(mark, start, end)
        if at != -1:
            end = at
    authority = target[start:end].rsplit(b"@", 1)[-1]  # no userinfo
    rest = target[end:]
    return authority, _path_of(rest) if rest.startswith(b"/") else b"/"


def _match(mounts: Mounts[T], path: bytes) -> T | None:
    for prefix, below, target in mounts:
        if not prefix or path == prefix or path.startswith(below):
            return target
    return None

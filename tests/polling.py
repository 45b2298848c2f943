"""Waiting in tests: poll a condition until it holds or a deadline passes (never a bare sleep)."""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from typing import Any, TypeVar

from twisted.internet import task
from twisted.internet.defer import Deferred, inlineCallbacks

T = TypeVar("T")


def wait_for(predicate: Callable[[], T | None], timeout: float = 10.0, interval: float = 0.02, what: str = "") -> T:
    """Return ``predicate()``'s first truthy value; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


def until(predicate: Callable[[], object], timeout: float = 20.0, what: str = "") -> Deferred[None]:
    """On the running reactor (pytest-twisted): fires once ``predicate()`` is true; fails at the deadline."""
    from twisted.internet import reactor

    deadline = reactor.seconds() + timeout

    @inlineCallbacks
    def poll() -> Generator[Deferred[Any], Any, None]:
        while not predicate():
            if reactor.seconds() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
            yield task.deferLater(reactor, 0.02, lambda: None)

    return poll()

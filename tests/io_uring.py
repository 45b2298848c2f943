"""Where the kernel refuses io_uring (older than 5.18, a seccomp profile, ``kernel.io_uring_disabled``),
the tests that need it skip, unless PASSENGER_REQUIRE_IO_URING is set: ``.ci/run`` sets it, because
its kernel allows io_uring, so a refusal there means the ring's own setup broke and must fail."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def no_io_uring(reason: str) -> NoReturn:
    message = f"the kernel refuses io_uring here: {reason}"
    if os.environ.get("PASSENGER_REQUIRE_IO_URING"):
        pytest.fail(f"{message}, and PASSENGER_REQUIRE_IO_URING is set")
    pytest.skip(message)

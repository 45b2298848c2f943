"""Builds the package, with the request path compiled by mypyc (docs/performance.md).

The modules in COMPILED run for every request; mypyc turns their type-annotated
Python into C extensions, which cuts the server's CPU per request by about a
sixth.  The same sources run as plain Python when not compiled: set
PASSENGER_PURE_PYTHON=1 to build without a C compiler.
"""

from __future__ import annotations

import os

from setuptools import setup

COMPILED = [
    "passenger/http/access_log.py",
    "passenger/http/connection.py",
    "passenger/http/dates.py",
    "passenger/http/fastpath.py",
    "passenger/http/front.py",
    "passenger/http/headers.py",
    "passenger/http/response_buffer.py",
    "passenger/http/upstream.py",
    "passenger/http/uring.py",
    "passenger/pool/routing.py",
    "passenger/pool/stats.py",
]


def ext_modules() -> list:
    if os.environ.get("PASSENGER_PURE_PYTHON"):
        return []
    from mypyc.build import mypycify

    return mypycify(COMPILED, opt_level="3", group_name="passenger")


setup(ext_modules=ext_modules())

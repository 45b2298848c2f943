"""The request path runs compiled (setup.py's mypyc modules), and a stale build is refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import passenger
from passenger import EXT_SUFFIX, stale_compiled_module

ROOT = Path(passenger.__file__).resolve().parent


@pytest.mark.skipif(bool(os.environ.get("PASSENGER_PURE_PYTHON")), reason="PASSENGER_PURE_PYTHON runs the sources")
def test_the_request_path_runs_compiled() -> None:
    import passenger.http.front
    import passenger.http.upstream

    for module in (passenger.http.front, passenger.http.upstream):
        assert module.__file__ is not None and module.__file__.endswith(EXT_SUFFIX), (
            f"{module.__name__} runs from {module.__file__}: `make build` compiles it "
            "(or set PASSENGER_PURE_PYTHON=1 to test the sources)")


def checkout(tmp_path: Path) -> Path:
    (tmp_path / ".git").mkdir()
    root = tmp_path / "passenger"
    for package in ("http", "pool"):
        (root / package).mkdir(parents=True)
    return root


def module(root: Path, name: str, source_time: int, compiled_time: int) -> Path:
    """``name``.py and its compiled module under ``root``, with these modification times; the source."""
    source = root / (name + ".py")
    compiled = root / (name + EXT_SUFFIX)
    source.write_text("")
    compiled.write_bytes(b"")
    os.utime(compiled, (compiled_time, compiled_time))
    os.utime(source, (source_time, source_time))
    return source


def test_a_source_newer_than_its_compiled_module_is_named(tmp_path: Path) -> None:
    root = checkout(tmp_path)
    source = module(root / "http", "front", source_time=2_000_000, compiled_time=1_000_000)
    message = stale_compiled_module(str(root))
    assert message is not None and str(source) in message and "make build" in message


def test_a_fresh_build_or_an_installed_package_passes(tmp_path: Path) -> None:
    root = checkout(tmp_path)
    source = module(root / "pool", "stats", source_time=1_000_000, compiled_time=2_000_000)
    assert stale_compiled_module(str(root)) is None
    library = tmp_path / ("passenger__mypyc" + EXT_SUFFIX)  # the code of every compiled module
    os.utime(source, (3_000_000, 3_000_000))
    library.write_bytes(b"")
    os.utime(library, (4_000_000, 4_000_000))
    assert stale_compiled_module(str(root)) is None, "the library was rebuilt after the edit"
    os.utime(source, (5_000_000, 5_000_000))
    assert stale_compiled_module(str(root)) is not None
    (tmp_path / ".git").rmdir()  # no checkout: sources and modules came in one package
    assert stale_compiled_module(str(root)) is None

"""Unit tests write nothing outside their own temporary directory (spawn work dirs, reports)."""

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def private_tmpdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    return tmp_path

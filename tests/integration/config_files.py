"""Writing TOML config files and reading what the server spawned, for the integration tests."""

from __future__ import annotations

import json
import re
import textwrap
from collections import defaultdict
from pathlib import Path


def q(value: object) -> str:
    """A TOML basic string (JSON's escapes are TOML's)."""
    return json.dumps(str(value))


def write_toml(path: Path, text: str) -> Path:
    """Write ``text`` (dedented) to ``path``; ``path`` may be a directory, for ``passenger.toml`` in it."""
    if path.is_dir():
        path = path / "passenger.toml"
    path.write_text(textwrap.dedent(text))
    return path


def spawned_by_app(log: str) -> dict[str, list[int]]:
    """The pids the server spawned, by app name, in spawn order (from its log)."""
    result: dict[str, list[int]] = defaultdict(list)
    for pid, app in re.findall(r"Spawning process (\d+) of (\S+)", log):
        result[app].append(int(pid))
    return dict(result)

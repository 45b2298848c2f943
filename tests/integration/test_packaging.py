"""The wheel a user installs: twistd finds the plugin, Twisted's packages are not clobbered,
and the request path is compiled (setup.py's mypyc modules).

Builds a wheel from a copy of this checkout (so nothing is written into the
work tree), installs it with its dependencies into a fresh venv, and asks that
venv's twistd for its commands.  Needs the package index for the build
backend and the dependencies.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IGNORED = shutil.ignore_patterns(
    ".git", ".venv", "venv", "build", "dist", "*.egg-info", "__pycache__", "*.pyc",
    ".mypy_cache", ".ruff_cache", ".pytest_cache", ".hypothesis", "results", "twistd.pid", "*.log",
    "*.so",  # a developer's in-place build: the wheel must compile its own
)


def run(cmd: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(cmd)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.mark.slow
def test_wheel_installs_a_twistd_plugin_and_nothing_of_twisted(tmp_path: Path) -> None:
    timings: dict[str, float] = {}
    started = time.monotonic()

    # A copy of the checkout, with the stray files a developer's tree may have.
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=IGNORED)
    (source / "twisted" / "plugins" / "dropin.cache").write_bytes(b"stale cache from a dev checkout")

    dist = tmp_path / "dist"
    run([sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(source)], cwd=tmp_path)
    timings["build"] = time.monotonic() - started
    [wheel] = dist.glob("*.whl")

    names = zipfile.ZipFile(wheel).namelist()
    assert "twisted/plugins/passenger_plugin.py" in names
    assert "twisted/__init__.py" not in names, "would shadow Twisted's own package"
    assert "twisted/plugins/__init__.py" not in names, "would shadow Twisted's own plugins package"
    assert not [n for n in names if n.endswith("dropin.cache")], "a stale plugin cache must not ship"
    assert "passenger/__init__.py" in names and "passenger/pool/group.py" in names
    assert "passenger/admin/dashboard.html" in names, "the dashboard page is package data"
    compiled = [n for n in names if n.startswith("passenger/http/front.") and n.endswith(".so")]
    assert compiled, "the request path is compiled into the wheel"
    strays = [n for n in names if not re.match(
        r"(passenger/|twisted/plugins/passenger_plugin\.py$|[^/]+\.dist-info/|passenger__mypyc\.[^/]+\.so$)", n)]
    assert strays == [], f"unexpected files in the wheel: {strays}"

    mark = time.monotonic()
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path)
    python = venv / "bin" / "python"
    run([str(python), "-m", "pip", "install", "-q", str(wheel)], cwd=tmp_path)
    timings["venv+install"] = time.monotonic() - mark

    mark = time.monotonic()
    where = run([str(python), "-c", "import passenger; print(passenger.__file__)"], cwd=tmp_path).stdout.strip()
    assert where.startswith(str(venv)), f"passenger imported from {where}, not the fresh venv"
    front = run([str(python), "-c", "import passenger.http.front as m; print(m.__file__)"], cwd=tmp_path).stdout
    assert front.strip().endswith(".so"), f"the installed front end is not the compiled one: {front}"

    help_text = run([str(venv / "bin" / "twistd"), "--help"], cwd=tmp_path).stdout
    assert re.search(r"^\s+passenger\s+Run any web app", help_text, re.MULTILINE), help_text
    # Twisted's own plugins are still found next to ours.
    assert re.search(r"^\s+web\s", help_text, re.MULTILINE), help_text

    sub_help = run([str(venv / "bin" / "twistd"), "passenger", "--help"], cwd=tmp_path).stdout
    assert "--app-start-command" in sub_help
    for tool, expected in (("passenger-status", "--show"), ("passenger-config", "restart-app")):
        assert expected in run([str(venv / "bin" / tool), "--help"], cwd=tmp_path).stdout, tool
    timings["twistd"] = time.monotonic() - mark

    total = time.monotonic() - started
    print(f"packaging timings: {', '.join(f'{k} {v:.1f}s' for k, v in timings.items())}; total {total:.1f}s")

"""The documentation and the example config keep up with the settings in passenger/options.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from passenger.loader import build_config
from passenger.options import SETTINGS

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "conf" / "passenger.toml"


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.key)
def test_every_setting_is_in_the_docs_and_the_example(setting) -> None:  # type: ignore[no-untyped-def]
    docs = (ROOT / "docs" / "configuration.md").read_text()
    assert f"`{setting.option}" in docs, f"{setting.option} is not in docs/configuration.md"
    assert f"`{setting.key}`" in docs, f"the file key {setting.key} is not in docs/configuration.md"
    if setting.key not in ("address", "port"):  # the example uses listen
        assert re.search(rf"^#? ?{setting.key} = ", EXAMPLE.read_text(), re.M), f"{setting.key} not in {EXAMPLE}"


def test_the_example_config_loads() -> None:
    config = build_config({}, str(EXAMPLE))
    [app] = config.apps
    assert app.root == str(ROOT / "examples" / "hello"), "relative to the file"
    assert app.name == "hello" and dict(app.envvars) == {"GREETING": "hello"}

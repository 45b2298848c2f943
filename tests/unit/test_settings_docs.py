"""The documentation and the example config keep up with the settings in passenger/options.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from passenger import reference
from passenger.loader import build_config
from passenger.options import SETTINGS, Setting

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "conf" / "passenger.toml"
DOCS = ROOT / "docs" / "configuration.md"


def test_the_reference_in_the_docs_is_what_the_settings_generate() -> None:
    block = reference.current_block(DOCS.read_text())
    assert block is not None, f"docs/configuration.md lost its {reference.BEGIN} ... {reference.END} markers"
    assert block == reference.render(), (
        f"docs/configuration.md's settings reference is out of date: run `{reference.COMMAND}` and commit the result")


def test_the_generator_rewrites_only_the_block(tmp_path: Path) -> None:
    document = tmp_path / "configuration.md"
    document.write_text(f"prose before\n\n{reference.BEGIN}\nstale\n{reference.END}\n\nprose after\n")
    assert reference.main(["--check", "--document", str(document)]) == 1
    assert reference.main(["--write", "--document", str(document)]) == 0
    assert document.read_text() == f"prose before\n\n{reference.render()}\n\nprose after\n"
    assert reference.main(["--check", "--document", str(document)]) == 0
    document.write_text("no markers\n")
    assert reference.main(["--write", "--document", str(document)]) == 1


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.key)
def test_every_setting_is_in_the_docs_and_the_example(setting: Setting) -> None:
    docs = DOCS.read_text()
    assert f"`{setting.option}" in docs, f"{setting.option} is not in docs/configuration.md"
    assert f"`{setting.key}`" in docs, f"the file key {setting.key} is not in docs/configuration.md"
    if setting.key not in ("address", "port"):  # the example uses listen
        assert re.search(rf"^#? ?{setting.key} = ", EXAMPLE.read_text(), re.M), f"{setting.key} not in {EXAMPLE}"


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.key)
def test_every_setting_has_what_the_reference_shows(setting: Setting) -> None:
    assert setting.passenger, f"{setting.key}: say its Passenger equivalent (passenger=..., NONE when it has none)"
    assert reference.meaning_cell(setting).strip()
    assert reference.default_cell(setting).strip()
    if not setting.is_flag:
        assert reference.metavar(setting)


def test_every_command_line_alias_is_in_the_reference() -> None:
    aliases = [alias for spellings in reference._cli_aliases().values() for alias in spellings]
    assert "--app-support-kuria-protocol" in aliases and "--force-max-concurrent-requests-per-process" in aliases
    block = reference.render()
    for alias in aliases:
        assert f"`{alias}`" in block


def test_defaults_are_shown_as_a_user_writes_them() -> None:
    by_key = {s.key: reference.default_cell(s) for s in SETTINGS}
    assert by_key["response_buffer_high_watermark"] == "`128m`"
    assert by_key["max_body_size"] == "`1g`"
    assert by_key["send_timeout"] == "`60`"
    assert by_key["sticky_sessions"] == "off"
    assert by_key["buffer_upload"].startswith("on when `concurrency` is known")
    assert by_key["name"] == "the app root's directory name", "from the help's [default: ...]"


def test_the_example_config_loads() -> None:
    config = build_config({}, str(EXAMPLE))
    [app] = config.apps
    assert app.root == str(ROOT / "examples" / "hello"), "relative to the file"
    assert app.name == "hello" and dict(app.envvars) == {"GREETING": "hello"}

"""Driving passenger.tap.Options as the command line does, for the option and config-file tests."""

from __future__ import annotations

import pytest

from passenger.tap import ConfigExit, Options


def parse(*args: str) -> Options:
    options = Options()
    options.parseOptions(list(args))
    return options


def config_error(*args: str) -> str:
    """The one-line message of the ConfigExit these arguments cause."""
    with pytest.raises(ConfigExit) as info:
        parse(*args)
    code = info.value.code
    assert isinstance(code, str), "SystemExit with a str: Python prints it and exits 1"
    assert code == f"passenger: {info.value.message}"
    assert "\n" not in code and code.strip() == code, f"not one line: {code!r}"
    assert "Traceback" not in code
    return info.value.message

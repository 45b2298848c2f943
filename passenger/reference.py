"""The settings reference in docs/configuration.md, generated from the settings in ``options.py``.

``python -m passenger.reference --write`` rewrites the block between the marker
comments in docs/configuration.md (the prose around it stays hand-written);
``--check`` exits 1 when the block is out of date; with neither, the block is
printed.  tests/unit/test_settings_docs.py fails when the block differs from
what :func:`render` gives, so the reference cannot drift from the code.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterable
from pathlib import Path

from passenger import options
from passenger.options import NONE, SETTINGS, Setting

BEGIN = "<!-- settings:begin -->"
END = "<!-- settings:end -->"
COMMAND = "python -m passenger.reference --write"
DOCUMENT = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"

#: The value's name on the command line, by converter (a factory's converter by the factory's name).
METAVARS = {
    "whole": "N", "seconds": "S", "size": "SIZE", "port": "N", "status": "N", "concurrency": "N",
    "directory": "DIR", "writable_directory": "DIR", "page_file": "FILE", "stop_signal": "SIG",
    "health_path": "PATH", "base_uri": "PATH", "cookie_name": "NAME", "server_names": "HOST",
    "networks": "CIDR", "listen_list": "STRPORT", "endpoint_list": "ENDPOINT", "command": "CMD",
    "envvars": "NAME=VALUE", "hooks": "EVENT=COMMAND",
}
#: Settings whose value is a table (NAME = "value") rather than a list.
TABLES = (options.envvars, options.hooks)
#: Converters whose default is a number of bytes, shown with a k, m or g suffix.
SIZES = (options.size,)

_DEFAULT_IN_HELP = re.compile(r"\s*\[default: (.*)\]\s*$")


def _converter_name(setting: Setting) -> str:
    """``whole`` for ``whole(1)``'s converter, ``size`` for ``size``."""
    return setting.convert.__qualname__.split(".")[0]


def metavar(setting: Setting) -> str:
    if setting.metavar:
        return setting.metavar
    try:
        return METAVARS[_converter_name(setting)]
    except KeyError:
        raise ValueError(f"{setting.key}: give it a metavar (its converter does not say what its value is)") from None


def _cli_aliases() -> dict[str, list[str]]:
    """Other command-line spellings of an option, by the option: the ``opt_`` methods documented as an "Alias of"."""
    from passenger.tap import Options

    aliases: dict[str, list[str]] = {}
    for name in sorted(dir(Options)):
        found = re.match(r"Alias of (--[a-z-]+)", getattr(Options, name).__doc__ or "") if name.startswith("opt_") else None
        if found:
            aliases.setdefault(found.group(1), []).append("--" + name[4:].replace("_", "-"))
    return aliases


def option_cell(setting: Setting, aliases: dict[str, list[str]]) -> str:
    from passenger.tap import OFF_FLAGS

    if setting.is_flag:
        shown = f"`{setting.option}`"
        if setting.key in OFF_FLAGS:
            shown += f" / `--no-{setting.option[2:]}`"
    else:
        shown = f"`{setting.option} {metavar(setting)}`"
    also = aliases.get(setting.option, [])
    if also:
        shown += " (also " + ", ".join(f"`{alias}`" for alias in also) + ")"
    return shown


def key_cell(setting: Setting) -> str:
    shown = f"`{setting.key}`"
    if setting.convert in TABLES:
        shown += " (a table)"
    elif setting.repeatable:
        shown += " (a list)"
    if setting.aliases:
        shown += " (also " + ", ".join(f"`{alias}`" for alias in setting.aliases) + ")"
    return shown


def _size(value: int) -> str:
    for suffix, unit in (("g", 1024**3), ("m", 1024**2), ("k", 1024)):
        if value and value % unit == 0:
            return f"{value // unit}{suffix}"
    return str(value)


def default_cell(setting: Setting) -> str:
    """The default as a user writes it: ``128m``, ``60``, ``off``, or what the setting says it is."""
    if setting.shown_default:
        return setting.shown_default
    in_help = _DEFAULT_IN_HELP.search(setting.help)
    if in_help:
        return in_help.group(1)
    value = setting.default
    if value is None or value == "":
        return NONE
    if isinstance(value, bool):
        return "on" if value else "off"
    if value in ((), {}):
        return "none"
    if setting.convert in SIZES:
        return f"`{_size(value)}`"
    if isinstance(value, float) and value.is_integer():
        return f"`{int(value)}`"
    return f"`{value}`"


def meaning_cell(setting: Setting) -> str:
    return setting.details or _DEFAULT_IN_HELP.sub("", setting.help)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table(settings: Iterable[Setting]) -> list[str]:
    aliases = _cli_aliases()
    lines = ["| option | file key | default | Passenger equivalent | meaning |", "|---|---|---|---|---|"]
    for s in settings:
        cells = (option_cell(s, aliases), key_cell(s), default_cell(s), s.passenger or NONE, meaning_cell(s))
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return lines


def render() -> str:
    """The generated block, markers included."""
    lines = [
        BEGIN,
        f"<!-- Generated from passenger/options.py by `{COMMAND}`; edit the settings there, not here. -->",
        "",
        "### Server settings",
        "",
        "One per server: on the command line, in the environment, or at the top of the config file.",
        "",
        *table(s for s in SETTINGS if s.scope == "server"),
        "",
        "### App settings",
        "",
        "Per app: also in an `[[app]]` table and in the app's `Passengerfile.json`; at the top of the config "
        "file they are defaults for every app.",
        "",
        *table(s for s in SETTINGS if s.scope == "app"),
        "",
        END,
    ]
    return "\n".join(lines)


def current_block(document: str) -> str | None:
    """The block between the markers (markers included), or None when the markers are missing."""
    start, end = document.find(BEGIN), document.find(END)
    if start < 0 or end < start:
        return None
    return document[start:end + len(END)]


def rewrite(document: str) -> str:
    block = current_block(document)
    if block is None:
        raise ValueError(f"no {BEGIN} ... {END} block to rewrite")
    return document.replace(block, render(), 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m passenger.reference", description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="rewrite the block in the document")
    mode.add_argument("--check", action="store_true", help="exit 1 if the block in the document is out of date")
    parser.add_argument("--document", type=Path, default=DOCUMENT, help=f"default: {DOCUMENT}")
    args = parser.parse_args(argv)
    if not (args.write or args.check):
        print(render())
        return 0
    text = args.document.read_text()
    try:
        updated = rewrite(text)
    except ValueError as e:
        print(f"{args.document}: {e}", file=sys.stderr)
        return 1
    if args.check:
        if updated != text:
            print(f"{args.document}: the settings reference is out of date; run {COMMAND}", file=sys.stderr)
            return 1
        return 0
    if updated != text:
        args.document.write_text(updated)
        print(f"{args.document}: settings reference rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())

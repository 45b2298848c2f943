"""passenger.loader and passenger.options: one ServerConfig from the command line, --config FILE and Passengerfile.json.

Precedence, for each app: the command line > the file's [[app]] table > the
file's top level > the app's Passengerfile.json > the defaults in options.py.
Every mistake is a ConfigExit with one line naming its source: the option, or
the file (and the app) and the key, and what is wrong with the value.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from passenger import tap
from passenger.config import AppConfig, ConfigError, ServerConfig
from passenger.loader import PASSENGERFILE_CAP, build_config, read_config_file
from passenger.options import (
    APP_SETTINGS,
    BY_KEY,
    SERVER_SETTINGS,
    SETTINGS,
    base_uri,
    command,
    concurrency,
    cookie_name,
    envvars,
    flag,
    header_value,
    health_path,
    listen_list,
    microseconds,
    page_file,
    parse_envvar,
    port,
    seconds,
    server_names,
    status,
    text,
    whole,
)
from passenger.tap import Options
from tests.unit.cli import config_error, parse

# Helpers and fixtures.


@pytest.fixture(autouse=True)
def checked(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record the endpoints Options would check, without binding anything."""
    seen: list[str] = []

    def check(description: str, option: str = "--listen") -> None:
        seen.append(description)

    monkeypatch.setattr(tap, "_check_listen", check)
    return seen


@pytest.fixture(autouse=True)
def tls_stays_importable() -> Iterator[None]:
    """Options blocks "OpenSSL" in sys.modules when no endpoint needs TLS; undo that for later tests."""
    absent = object()
    before = sys.modules.get("OpenSSL", absent)
    yield
    if before is absent:
        sys.modules.pop("OpenSSL", None)
    else:
        sys.modules["OpenSSL"] = before  # type: ignore[assignment]


@pytest.fixture
def api(tmp_path: Path) -> Path:
    root = tmp_path / "api"
    root.mkdir()
    return root


@pytest.fixture
def web(tmp_path: Path) -> Path:
    root = tmp_path / "web"
    root.mkdir()
    return root


def write_config(tmp_path: Path, body: str, name: str = "passenger.toml") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return str(path)


def write_passengerfile(root: Path, document: object) -> str:
    path = root / "Passengerfile.json"
    path.write_text(json.dumps(document))
    return str(path)


def app_table(name: str, root: Path, *lines: str, start_command: str | None = "run") -> str:
    """An [[app]] table in TOML (root as a literal string, so any path works)."""
    head = ["[[app]]", f'name = "{name}"', f"root = '{root}'"]
    if start_command is not None:
        head.append(f'start_command = "{start_command}"')
    return "\n".join([*head, *lines]) + "\n"




def load(*args: str) -> ServerConfig:
    config = parse(*args)["config"]
    assert isinstance(config, ServerConfig)
    return config




def by_name(config: ServerConfig) -> dict[str, AppConfig]:
    return {app.name: app for app in config.apps}


# A whole file: two apps, server settings, defaults for every app.


def test_two_apps_with_server_settings_and_top_level_defaults(tmp_path: Path, api: Path, web: Path,
                                                              checked: list[str]) -> None:
    path = write_config(tmp_path, f"""\
        listen = ["tcp:8080:interface=127.0.0.1", "unix:{tmp_path}/p.sock"]
        max_pool_size = 10
        drain_timeout = 5
        environment = "staging"
        min_instances = 2
        start_timeout = 20
        sticky_sessions = true

        [envvars]
        COMMON = "1"
        SHARED = "top"

        [[app]]
        name = "api"
        root = '{api}'
        start_command = "python -m api --port $PORT"
        server_names = ["API.Example.com", "api.example.org"]
        base_uri = "/v1/"
        min_instances = 3
        concurrency = 4
        max_request_queue_time = 2.5
        sticky_sessions = false

        [app.envvars]
        SHARED = "api"
        ONLY_API = "yes"

        [[app]]
        name = "web"
        root = '{web}'
        start_command = "node server.js"
        server_names = ["*.example.com", "example.com"]
        environment = "production"
        """)
    config = load("--config", path)
    assert config.listen == ("tcp:8080:interface=127.0.0.1", f"unix:{tmp_path}/p.sock")
    assert checked == list(config.listen)
    assert config.max_pool_size == 10
    assert config.drain_timeout == 5.0
    assert [app.name for app in config.apps] == ["api", "web"], "in the file's order"
    api_app, web_app = config.apps
    assert api_app == AppConfig(
        name="api", root=str(api), start_command="python -m api --port $PORT", environment="staging",
        envvars={"COMMON": "1", "SHARED": "api", "ONLY_API": "yes"},
        server_names=("api.example.com", "api.example.org"), base_uri="/v1", min_instances=3,
        concurrency=4, max_request_queue_time=2.5, sticky_sessions=False, start_timeout=20.0)
    assert web_app == AppConfig(
        name="web", root=str(web), start_command="node server.js", environment="production",
        envvars={"COMMON": "1", "SHARED": "top"}, server_names=("*.example.com", "example.com"),
        base_uri="/", min_instances=2, sticky_sessions=True, start_timeout=20.0)


def test_an_app_without_a_name_is_named_after_its_root(tmp_path: Path, api: Path) -> None:
    path = write_config(tmp_path, f"""\
        [[app]]
        root = '{api}'
        start_command = "run"
        """)
    assert load("--config", path).apps[0].name == "api"


def test_a_file_with_only_server_settings_at_the_top_and_no_app_defaults(tmp_path: Path, api: Path) -> None:
    path = write_config(tmp_path, "max_pool_size = 2\n" + app_table("api", api))
    config = load("--config", path)
    app = config.apps[0]
    defaults = AppConfig(name="api", root=str(api), start_command="run")
    assert app == defaults
    assert config.listen == ("tcp:3000:interface=0.0.0.0",)
    assert config.max_pool_size == 2
    assert config.drain_timeout == 60.0


def test_passengers_spellings_are_accepted_in_the_file(tmp_path: Path, api: Path) -> None:
    path = write_config(tmp_path, f"""\
        [[app]]
        name = "api"
        app_root = '{api}'
        app_start_command = "run it"
        force_max_concurrent_requests_per_process = 3
        """)
    app = load("--config", path).apps[0]
    assert (app.root, app.start_command, app.concurrency) == (str(api), "run it", 3)


def test_a_setting_given_twice_through_an_alias_is_an_error(tmp_path: Path, api: Path) -> None:
    path = write_config(tmp_path, app_table("api", api, 'app_start_command = "other"'))
    assert config_error("--config", path) == (
        f"{path}: app 'api': 'app_start_command' is given twice (as 'start_command' and 'app_start_command')")


def test_native_toml_values(tmp_path: Path, api: Path) -> None:
    page = tmp_path / "oops.html"
    page.write_bytes(b"<h1>down</h1>")
    path = write_config(tmp_path, app_table(
        "api", api,
        "max_request_queue_size = 0", "pool_idle_time = 0", "max_requests = 1000", "memory_limit = 512",
        "max_request_time = 30", "max_spawns_in_parallel = 2", "max_instances = 4",
        'sticky_sessions_cookie_name = "route"', 'sticky_sessions_cookie_attributes = "SameSite=Strict"',
        "debug_spawn_dir = true", "friendly_error_pages = false", f"custom_error_page = '{page}'",
        'health_check_path = "/up"', "health_check_interval = 2", "health_check_timeout = 0.5",
        "health_check_failures = 5", "request_queue_overflow_status_code = 429", "spawn_error_status = 503",
        "load_shell_envvars = true", "app_supports_kuria_protocol = true", f"spawn_dir = '{tmp_path}'",
        "shutdown_timeout = 1.5"))
    app = load("--config", path).apps[0]
    assert (app.max_request_queue_size, app.pool_idle_time, app.max_requests, app.memory_limit) == (0, 0.0, 1000, 512)
    assert (app.max_request_time, app.max_spawns_in_parallel, app.max_instances) == (30.0, 2, 4)
    assert (app.sticky_sessions_cookie_name, app.sticky_sessions_cookie_attributes) == ("route", "SameSite=Strict")
    assert (app.debug_spawn_dir, app.friendly_error_pages, app.custom_error_page) == (True, False, b"<h1>down</h1>")
    assert (app.health_check_path, app.health_check_interval, app.health_check_timeout) == ("/up", 2.0, 0.5)
    assert (app.health_check_failures, app.request_queue_overflow_status_code, app.spawn_error_status) == (5, 429, 503)
    assert (app.load_shell_envvars, app.kuria, app.spawn_dir, app.shutdown_timeout) == (True, True, str(tmp_path), 1.5)
    assert isinstance(app.pool_idle_time, float) and isinstance(app.max_request_time, float)


@pytest.mark.parametrize(("value", "expected"), [
    ("0", 0), ("5", 5), ('"unknown"', None), ('"Unknown"', None), ("-1", None), ('"-1"', None), ('""', None),
    ('"7"', 7),
])
def test_concurrency_in_the_file(tmp_path: Path, api: Path, value: str, expected: int | None) -> None:
    path = write_config(tmp_path, app_table("api", api, f"concurrency = {value}"))
    assert load("--config", path).apps[0].concurrency == expected


def test_envvars_may_be_a_list_of_assignments_in_the_file(tmp_path: Path, api: Path) -> None:
    path = write_config(tmp_path, app_table("api", api, 'envvars = ["A=1", "B=x=y", "EMPTY="]'))
    assert dict(load("--config", path).apps[0].envvars) == {"A": "1", "B": "x=y", "EMPTY": ""}


def test_envvar_numbers_become_strings(tmp_path: Path, api: Path) -> None:
    path = write_config(tmp_path, app_table("api", api, "[app.envvars]", "WORKERS = 4", "RATIO = 0.5"))
    assert dict(load("--config", path).apps[0].envvars) == {"WORKERS": "4", "RATIO": "0.5"}


# Precedence.

LAYERS = ("passengerfile", "top", "app", "cli")


@pytest.mark.parametrize(("present", "winner"), [
    ((), None),
    (("passengerfile",), "passengerfile"),
    (("passengerfile", "top"), "top"),
    (("top",), "top"),
    (("passengerfile", "top", "app"), "app"),
    (("top", "app"), "app"),
    (("app",), "app"),
    (("passengerfile", "top", "app", "cli"), "cli"),
    (("passengerfile", "cli"), "cli"),
    (("app", "cli"), "cli"),
])
def test_min_instances_from_the_highest_layer(tmp_path: Path, api: Path, present: tuple[str, ...],
                                              winner: str | None) -> None:
    value = {layer: number for number, layer in enumerate(LAYERS, 2)}  # passengerfile 2 ... cli 5
    if "passengerfile" in present:
        write_passengerfile(api, {"min_instances": value["passengerfile"]})
    top = f"min_instances = {value['top']}\n" if "top" in present else ""
    table = app_table("api", api, *([f"min_instances = {value['app']}"] if "app" in present else []))
    path = write_config(tmp_path, "max_pool_size = 10\n" + top + table)
    cli = ["--min-instances", str(value["cli"])] if "cli" in present else []
    app = load("--config", path, *cli).apps[0]
    assert app.min_instances == (value[winner] if winner else 1)


def test_envvars_merge_name_by_name_across_layers(tmp_path: Path, api: Path, web: Path) -> None:
    write_passengerfile(api, {"envvars": {"A": "pf", "B": "pf", "C": "pf", "D": "pf"}})
    path = write_config(tmp_path, f"""\
        [envvars]
        B = "top"
        C = "top"
        D = "top"

        [[app]]
        name = "api"
        root = '{api}'
        start_command = "run"
        [app.envvars]
        C = "app"
        D = "app"

        [[app]]
        name = "web"
        root = '{web}'
        start_command = "run"
        server_names = ["web.example"]
        """)
    apps = by_name(load("--config", path, "--envvar", "D=cli", "--envvar", "E=cli"))
    assert dict(apps["api"].envvars) == {"A": "pf", "B": "top", "C": "app", "D": "cli", "E": "cli"}
    assert dict(apps["web"].envvars) == {"B": "top", "C": "top", "D": "cli", "E": "cli"}, \
        "web has no Passengerfile: only the file's top level and the command line"


def test_command_line_app_settings_apply_to_every_app(tmp_path: Path, api: Path, web: Path) -> None:
    path = write_config(tmp_path, 'environment = "staging"\n' + app_table("api", api, 'environment = "test"')
                        + app_table("web", web, 'server_names = ["web.example"]'))
    apps = by_name(load("--config", path, "--environment", "development", "--start-timeout", "7"))
    assert {app.environment for app in apps.values()} == {"development"}
    assert {app.start_timeout for app in apps.values()} == {7.0}


def test_command_line_server_settings_override_the_file(tmp_path: Path, api: Path) -> None:
    path = write_config(tmp_path, "max_pool_size = 3\ndrain_timeout = 9\n" + app_table("api", api))
    config = load("--config", path, "--max-pool-size", "12", "--drain-timeout", "0.25")
    assert (config.max_pool_size, config.drain_timeout) == (12, 0.25)


def test_the_files_listen(tmp_path: Path, api: Path) -> None:
    path = write_config(tmp_path, 'listen = "tcp:4000"\nport = 5000\n' + app_table("api", api))
    assert load("--config", path).listen == ("tcp:4000",), "a string is one endpoint; listen beats port"


def test_the_files_address_and_port_without_listen(tmp_path: Path, api: Path) -> None:
    path = write_config(tmp_path, 'address = "127.0.0.1"\nport = 5000\n' + app_table("api", api))
    assert load("--config", path).listen == ("tcp:5000:interface=127.0.0.1",)


@pytest.mark.parametrize(("cli", "expected"), [
    (["--port", "4000"], ("tcp:4000:interface=0.0.0.0",)),
    (["--address", "127.0.0.1"], ("tcp:3000:interface=127.0.0.1",)),
    (["--address", "::1", "--port", "4000"], ("tcp:4000:interface=\\:\\:1",)),
    (["--listen", "tcp:6000"], ("tcp:6000",)),
    (["--listen", "tcp:6000", "--port", "4000"], ("tcp:6000",)),
])
def test_port_and_address_on_the_command_line_replace_the_files_listen(
        tmp_path: Path, api: Path, checked: list[str], cli: list[str], expected: tuple[str, ...]) -> None:
    path = write_config(tmp_path, 'listen = ["tcp:8080", "unix:/tmp/x.sock"]\n' + app_table("api", api))
    config = load("--config", path, *cli)
    assert config.listen == expected
    assert checked == list(expected)


def test_port_on_the_command_line_keeps_the_files_address(tmp_path: Path, api: Path) -> None:
    path = write_config(tmp_path, 'listen = ["tcp:8080"]\naddress = "127.0.0.1"\n' + app_table("api", api))
    assert load("--config", path, "--port", "4000").listen == ("tcp:4000:interface=127.0.0.1",)


def test_app_root_and_start_command_on_the_command_line_override_a_single_app(tmp_path: Path, api: Path,
                                                                              web: Path) -> None:
    path = write_config(tmp_path, app_table("api", api, 'environment = "staging"'))
    app = load("--config", path, "--app-root", str(web), "--app-start-command", "other", "--app-name", "renamed").apps[0]
    assert (app.root, app.start_command, app.name, app.environment) == (str(web), "other", "renamed", "staging")


def test_app_root_on_the_command_line_supplies_a_missing_root(tmp_path: Path, api: Path) -> None:
    path = write_config(tmp_path, """\
        [[app]]
        name = "api"
        start_command = "run"
        """)
    assert load("--config", path, "--app-root", str(api)).apps[0].root == str(api)


@pytest.mark.parametrize("option", ["--app-root", "--app-name", "--app-start-command"])
def test_one_app_options_with_a_file_of_two_apps(tmp_path: Path, api: Path, web: Path, option: str) -> None:
    path = write_config(tmp_path, app_table("api", api) + app_table("web", web, 'server_names = ["w.example"]'))
    value = str(api) if option == "--app-root" else "x"
    assert config_error("--config", path, option, value) == (
        f"{option} names one app, but {path} declares 2; set it in the file instead")


def test_several_one_app_options_are_all_named(tmp_path: Path, api: Path, web: Path) -> None:
    path = write_config(tmp_path, app_table("api", api) + app_table("web", web, 'server_names = ["w.example"]'))
    message = config_error("--config", path, "--app-root", str(api), "--app-name", "x")
    assert message.startswith("--app-name, --app-root names one app")


def test_file_top_level_beats_the_passengerfile_and_the_passengerfile_fills_gaps(tmp_path: Path, api: Path) -> None:
    write_passengerfile(api, {"app_start_command": "from passengerfile", "environment": "development",
                              "max_requests": 50})
    path = write_config(tmp_path, 'environment = "staging"\n' + app_table("api", api, start_command=None))
    app = load("--config", path).apps[0]
    assert app.start_command == "from passengerfile", "the table gives none: the Passengerfile's"
    assert app.environment == "staging", "the file's top level beats the Passengerfile"
    assert app.max_requests == 50


def test_the_file_table_beats_the_passengerfile_start_command(tmp_path: Path, api: Path) -> None:
    write_passengerfile(api, {"app_start_command": "from passengerfile"})
    path = write_config(tmp_path, app_table("api", api, start_command="from table"))
    assert load("--config", path).apps[0].start_command == "from table"


# Passengerfile.json (with or without --config).


def test_passengerfile_keys(api: Path) -> None:
    write_passengerfile(api, {"app_start_command": "node app.js", "app_supports_kuria_protocol": True,
                              "min_instances": 2, "environment": "staging", "envvars": {"X": "1"},
                              "force_max_concurrent_requests_per_process": 8, "base_uri": "/app/"})
    app = load("--app-root", str(api)).apps[0]
    assert (app.start_command, app.kuria, app.min_instances, app.environment) == ("node app.js", True, 2, "staging")
    assert (dict(app.envvars), app.concurrency, app.base_uri) == ({"X": "1"}, 8, "/app")


def test_passengerfile_in_the_current_directory(api: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_passengerfile(api, {"app_start_command": "node app.js"})
    monkeypatch.chdir(api)
    app = load().apps[0]
    assert app.start_command == "node app.js"
    assert os.path.realpath(app.root) == os.path.realpath(api)


def test_kuria_flag_as_a_passenger_string(api: Path) -> None:
    write_passengerfile(api, {"app_start_command": "x", "app_supports_kuria_protocol": "yes"})
    assert load("--app-root", str(api)).apps[0].kuria is True


def test_unknown_and_foreign_passengerfile_keys_are_ignored(api: Path) -> None:
    write_passengerfile(api, {
        "app_start_command": "x",
        "frobnicate": {"whatever": [1, 2]},  # not ours at all
        "port": 4000, "address": "1.2.3.4", "max_pool_size": 1, "listen": "nonsense",  # server settings
        "name": "from-passengerfile", "root": "/nonexistent", "app_root": "/nonexistent",  # one-app keys
        "min_instance": "typo is not ours to judge",
    })
    config = load("--app-root", str(api), "--min-instances", "2")
    assert config.listen == ("tcp:3000:interface=0.0.0.0",)
    assert config.max_pool_size == 6
    app = config.apps[0]
    assert (app.name, app.root, app.start_command) == ("api", str(api), "x")


def test_command_line_beats_the_passengerfile(api: Path) -> None:
    write_passengerfile(api, {"app_start_command": "pf", "min_instances": 3, "environment": "staging",
                              "envvars": {"A": "pf", "B": "pf"}})
    app = load("--app-root", str(api), "--app-start-command", "cli", "--min-instances", "1",
               "--envvar", "B=cli").apps[0]
    assert (app.start_command, app.min_instances, app.environment) == ("cli", 1, "staging")
    assert dict(app.envvars) == {"A": "pf", "B": "cli"}


@pytest.mark.parametrize(("document", "expected"), [
    ({"min_instances": -1}, "min_instances -1: must not be negative"),
    ({"min_instances": "two"}, "min_instances 'two': expected a whole number"),
    ({"app_supports_kuria_protocol": "maybe"}, "app_supports_kuria_protocol 'maybe': expected true or false"),
    ({"start_timeout": 0}, "start_timeout 0: must be a positive number of seconds"),
    ({"envvars": ["NOPE"]}, "envvars 'NOPE': expected NAME=VALUE with NAME a valid variable name"),
    ({"server_names": ["not a host"]},
     "server_names 'not a host': not a host name (a name without port, '*.example.com' or '*')"),
])
def test_a_bad_value_in_the_passengerfile_names_the_file_and_the_key(api: Path, document: dict[str, object],
                                                                     expected: str) -> None:
    pf = write_passengerfile(api, {"app_start_command": "x", **document})
    assert config_error("--app-root", str(api)) == f"{pf}: {expected}"


def test_a_bad_passengerfile_value_is_an_error_under_a_config_file_too(tmp_path: Path, api: Path) -> None:
    pf = write_passengerfile(api, {"min_instances": 1.5})
    path = write_config(tmp_path, app_table("api", api))
    assert config_error("--config", path) == f"{pf}: min_instances 1.5: expected a whole number"


def test_a_bad_passengerfile_value_overridden_from_above_is_still_an_error(api: Path) -> None:
    """Every layer's value is checked, not only the winner's: a broken file does not hide."""
    pf = write_passengerfile(api, {"app_start_command": "x", "min_instances": -3})
    assert config_error("--app-root", str(api), "--min-instances", "2") == f"{pf}: min_instances -3: must not be negative"


@pytest.mark.parametrize(("content", "expected"), [
    (b"{not json", "not valid JSON"),
    (b"\xff\xfe{}", "not valid JSON"),
    (b"[1, 2]", "must be a JSON object"),
    (b'"x"', "must be a JSON object"),
    (b" " * PASSENGERFILE_CAP + b"{}", "larger than 512 KiB"),
])
def test_an_unreadable_passengerfile(api: Path, content: bytes, expected: str) -> None:
    pf = api / "Passengerfile.json"
    pf.write_bytes(content)
    message = config_error("--app-root", str(api), "--app-start-command", "x")
    assert message.startswith(f"{pf}: {expected}")


def test_a_passengerfile_just_under_the_cap_is_read(api: Path) -> None:
    document = b'{"app_start_command": "x"}'
    (api / "Passengerfile.json").write_bytes(b" " * (PASSENGERFILE_CAP - len(document)) + document)
    assert load("--app-root", str(api)).apps[0].start_command == "x"


def test_a_passengerfile_that_is_a_directory(api: Path) -> None:
    (api / "Passengerfile.json").mkdir()
    assert config_error("--app-root", str(api), "--app-start-command", "x") == (
        f"{api / 'Passengerfile.json'}: Is a directory")


# Errors in the config file: file, app, key, what is wrong; one line each.


def test_a_missing_config_file(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.toml")
    assert config_error("--config", missing) == f"--config {missing!r}: No such file or directory"


def test_a_config_file_that_is_a_directory(tmp_path: Path) -> None:
    assert config_error("--config", str(tmp_path)) == f"--config {str(tmp_path)!r}: Is a directory"


@pytest.mark.parametrize("body", [
    "max_pool_size = \n",
    "[[app]\nname = 'x'\n",
    "a = 1\na = 2\n",
    "name = 'unterminated\n",
])
def test_invalid_toml(tmp_path: Path, body: str) -> None:
    path = write_config(tmp_path, body)
    assert config_error("--config", path).startswith(f"{path}: not valid TOML: ")


def test_invalid_utf8_is_invalid_toml(tmp_path: Path) -> None:
    path = tmp_path / "passenger.toml"
    path.write_bytes(b'environment = "\xff"\n')
    assert config_error("--config", str(path)).startswith(f"{path}: not valid TOML: ")


@pytest.mark.parametrize("body", ["", "max_pool_size = 4\n", "app = []\n"])
def test_a_file_without_apps(tmp_path: Path, body: str) -> None:
    path = write_config(tmp_path, body)
    assert config_error("--config", path) == (
        f"{path}: declares no app; add an [[app]] table with name, root and start_command")


@pytest.mark.parametrize("body", [
    'app = "api"\n',
    "[app]\nname = 'api'\n",
    "app = [1, 2]\n",
    "app = [{name = 'api'}, 'web']\n",
])
def test_app_must_be_an_array_of_tables(tmp_path: Path, body: str) -> None:
    path = write_config(tmp_path, body)
    assert config_error("--config", path) == f"{path}: 'app' must be a list of [[app]] tables"


def test_an_inline_array_of_tables_is_fine(tmp_path: Path, api: Path) -> None:
    path = write_config(tmp_path, f"app = [{{name = 'api', root = '{api}', start_command = 'run'}}]\n")
    assert load("--config", path).apps[0].name == "api"


@pytest.mark.parametrize(("line", "expected"), [
    ("min_instance = 2", "unknown setting 'min_instance' (did you mean 'min_instances'?)"),
    ("max_pool_sise = 2", "unknown setting 'max_pool_sise' (did you mean 'max_pool_size'?)"),
    ("enviroment = 'x'", "unknown setting 'enviroment' (did you mean 'environment'?)"),
    ("frobnicate = 1", "unknown setting 'frobnicate'"),
])
def test_an_unknown_key_at_the_top(tmp_path: Path, api: Path, line: str, expected: str) -> None:
    path = write_config(tmp_path, line + "\n" + app_table("api", api))
    assert config_error("--config", path) == f"{path}: {expected}"


@pytest.mark.parametrize(("line", "expected"), [
    ("min_instance = 2", "unknown setting 'min_instance' (did you mean 'min_instances'?)"),
    ("server_name = 'a.example'", "unknown setting 'server_name' (did you mean 'server_names'?)"),
    ("frobnicate = 1", "unknown setting 'frobnicate'"),
])
def test_an_unknown_key_in_an_app(tmp_path: Path, api: Path, line: str, expected: str) -> None:
    path = write_config(tmp_path, app_table("api", api, line))
    assert config_error("--config", path) == f"{path}: app 'api': {expected}"


def test_an_unknown_key_in_an_unnamed_app_names_its_number(tmp_path: Path, api: Path, web: Path) -> None:
    path = write_config(tmp_path, app_table("api", api) + f"[[app]]\nroot = '{web}'\nmin_instance = 1\n")
    assert config_error("--config", path) == (
        f"{path}: app #2: unknown setting 'min_instance' (did you mean 'min_instances'?)")


@pytest.mark.parametrize("key", ["max_pool_size = 2", "listen = ['tcp:1']", "port = 1", "address = 'x'",
                                 "drain_timeout = 1"])
def test_a_server_setting_in_an_app(tmp_path: Path, api: Path, key: str) -> None:
    path = write_config(tmp_path, app_table("api", api, key))
    name = key.split(" ")[0]
    assert config_error("--config", path) == (
        f"{path}: app 'api': {name!r} is a server setting; put it at the top of the file")


@pytest.mark.parametrize("line", ["name = 'x'", "root = '/'", "start_command = 'run'"])
def test_one_app_settings_at_the_top(tmp_path: Path, api: Path, line: str) -> None:
    path = write_config(tmp_path, line + "\n" + app_table("api", api))
    key = line.split(" ")[0]
    assert config_error("--config", path) == f"{path}: {key!r} belongs in an [[app]] table"


@pytest.mark.parametrize("line", ["app_root = '/'", "app_start_command = 'run'"])
def test_one_app_settings_at_the_top_under_their_passenger_names(tmp_path: Path, api: Path, web: Path,
                                                                 line: str) -> None:
    path = write_config(tmp_path, line + "\n" + app_table("api", api)
                        + app_table("web", web, 'server_names = ["w.example"]'))
    key = line.split(" ")[0]
    assert config_error("--config", path) == f"{path}: {key!r} belongs in an [[app]] table"


def test_missing_root(tmp_path: Path, api: Path) -> None:
    path = write_config(tmp_path, app_table("api", api) + '[[app]]\nname = "web"\nstart_command = "run"\n')
    assert config_error("--config", path) == f"{path}: app 'web': root is required (the directory of the app)"


def test_missing_root_of_an_unnamed_app(tmp_path: Path) -> None:
    path = write_config(tmp_path, '[[app]]\nstart_command = "run"\n')
    assert config_error("--config", path) == f"{path}: app #1: root is required (the directory of the app)"


def test_root_that_is_not_a_directory(tmp_path: Path, api: Path) -> None:
    missing = tmp_path / "gone"
    path = write_config(tmp_path, app_table("api", missing))
    assert config_error("--config", path) == f"{path}: app 'api': root {str(missing)!r}: no such directory"
    afile = tmp_path / "file"
    afile.write_text("")
    path = write_config(tmp_path, app_table("api", afile))
    assert config_error("--config", path) == f"{path}: app 'api': root {str(afile)!r}: no such directory"


def test_missing_start_command_is_an_error(tmp_path: Path, api: Path) -> None:
    path = write_config(tmp_path, app_table("api", api, start_command=None))
    assert "start_command is required" in config_error("--config", path).replace("app-start-command", "start_command")


def test_missing_start_command_names_the_file_and_the_app(tmp_path: Path, api: Path, web: Path) -> None:
    path = write_config(tmp_path, app_table("api", api) + app_table("web", web, start_command=None))
    message = config_error("--config", path)
    assert message.startswith(f"{path}: app 'web': start_command is required")


@pytest.mark.parametrize(("line", "expected"), [
    # Whole numbers.
    ("min_instances = 'two'", "min_instances 'two': expected a whole number"),
    ("min_instances = true", "min_instances true: expected a whole number"),
    ("min_instances = -1", "min_instances -1: must not be negative"),
    ("min_instances = 1.5", "min_instances 1.5: expected a whole number"),
    ("min_instances = [1]", "min_instances [1]: expected a whole number"),
    ("max_request_queue_size = -5", "max_request_queue_size -5: must not be negative"),
    ("max_spawns_in_parallel = 0", "max_spawns_in_parallel 0: must be at least 1"),
    ("health_check_failures = 0", "health_check_failures 0: must be at least 1"),
    ("max_instances = false", "max_instances false: expected a whole number"),
    # Seconds.
    ("start_timeout = 0", "start_timeout 0: must be a positive number of seconds"),
    ("start_timeout = -1.5", "start_timeout -1.5: must be a positive number of seconds"),
    ("start_timeout = 'soon'", "start_timeout 'soon': expected a number of seconds"),
    ("start_timeout = nan", "start_timeout nan: expected a number of seconds"),
    ("start_timeout = inf", "start_timeout inf: expected a number of seconds"),
    ("start_timeout = true", "start_timeout true: expected a number of seconds"),
    ("pool_idle_time = -1", "pool_idle_time -1: must be 0 or more (0 = never)"),
    ("max_request_queue_time = -1", "max_request_queue_time -1: must be 0 or more (0 = no limit)"),
    ("max_request_time = -0.5", "max_request_time -0.5: must be 0 or more (0 = no limit)"),
    ("health_check_timeout = 0", "health_check_timeout 0: must be a positive number of seconds"),
    # Concurrency.
    ("concurrency = -2", "concurrency -2: must be a whole number, 0 (unlimited) or unknown"),
    ("concurrency = 'lots'", "concurrency 'lots': expected a whole number, 0 (unlimited) or unknown"),
    ("concurrency = true", "concurrency true: expected a whole number, 0 (unlimited) or unknown"),
    # Flags.
    ("sticky_sessions = 'maybe'", "sticky_sessions 'maybe': expected true or false"),
    ("sticky_sessions = 1", "sticky_sessions 1: expected true or false"),
    ("app_supports_kuria_protocol = 'perhaps'", "app_supports_kuria_protocol 'perhaps': expected true or false"),
    # Strings.
    ("environment = 3", "environment 3: expected a non-empty string"),
    ("environment = '  '", "environment '  ': expected a non-empty string"),
    ("user = ''", "user '': expected a non-empty string"),
    ("start_command = '  '", "start_command is empty: give the command that starts the app, e.g. 'node server.js'"),
    # Routing.
    ("server_names = ['bad host!']", "server_names 'bad host!': not a host name (a name without port, '*.example.com' or '*')"),
    ("server_names = ['a.*.com']", "server_names 'a.*.com': not a host name (a name without port, '*.example.com' or '*')"),
    ("server_names = ['http://a.com']",
     "server_names 'http://a.com': not a host name (a name without port, '*.example.com' or '*')"),
    ("server_names = ['ok.com', 5]", "server_names ['ok.com', 5]: expected a list of strings"),
    ("server_names = 5", "server_names 5: expected a list of strings"),
    ("base_uri = 'blog'", "base_uri 'blog': must be a path starting with / (no spaces, ? or #)"),
    ("base_uri = '/my blog'", "base_uri '/my blog': must be a path starting with / (no spaces, ? or #)"),
    ("base_uri = '/blog?x=1'", "base_uri '/blog?x=1': must be a path starting with / (no spaces, ? or #)"),
    ("base_uri = '/blog#top'", "base_uri '/blog#top': must be a path starting with / (no spaces, ? or #)"),
    ("base_uri = ''", "base_uri '': expected a non-empty string"),
    # Sticky-session cookie.
    ("sticky_sessions_cookie_name = 'bad name'", "sticky_sessions_cookie_name 'bad name': not a valid cookie name"),
    ("sticky_sessions_cookie_name = 'a;b'", "sticky_sessions_cookie_name 'a;b': not a valid cookie name"),
    ("sticky_sessions_cookie_name = 'a=b'", "sticky_sessions_cookie_name 'a=b': not a valid cookie name"),
    ("sticky_sessions_cookie_name = ''", "sticky_sessions_cookie_name '': expected a non-empty string"),
    ("sticky_sessions_cookie_attributes = \"Secure\\r\\nX-Evil: 1\"",
     "sticky_sessions_cookie_attributes 'Secure\\r\\nX-Evil: 1': expected a string without line breaks"),
    ("sticky_sessions_cookie_attributes = 1", "sticky_sessions_cookie_attributes 1: expected a string without line breaks"),
    # Status codes.
    ("request_queue_overflow_status_code = 99", "request_queue_overflow_status_code 99: not an HTTP status (100-599)"),
    ("request_queue_overflow_status_code = 600", "request_queue_overflow_status_code 600: not an HTTP status (100-599)"),
    ("request_queue_overflow_status_code = 'busy'", "request_queue_overflow_status_code 'busy': expected an HTTP status"),
    ("spawn_error_status = 1000", "spawn_error_status 1000: not an HTTP status (100-599)"),
    # Envvars.
    ("envvars = 'A=1'", "envvars 'A=1': expected a table of NAME = \"value\""),
    ("envvars = {'1BAD' = 'x'}", "envvars: '1BAD' is not a valid variable name"),
    ("envvars = {'A-B' = 'x'}", "envvars: 'A-B' is not a valid variable name"),
    ("envvars = {A = true}", "envvars.A: expected a string"),
    ("envvars = {A = [1]}", "envvars.A: expected a string"),
    ("envvars = ['NOVALUE']", "envvars 'NOVALUE': expected NAME=VALUE with NAME a valid variable name"),
    # Health check and directories.
    ("health_check_path = 'health'", "health_check_path 'health': must start with / and contain no spaces"),
    ("health_check_path = '/a b'", "health_check_path '/a b': must start with / and contain no spaces"),
])
def test_a_bad_value_in_an_app(tmp_path: Path, api: Path, line: str, expected: str) -> None:
    start_command = None if line.startswith("start_command") else "run"
    path = write_config(tmp_path, app_table("api", api, line, start_command=start_command))
    assert config_error("--config", path) == f"{path}: app 'api': {expected}"


def test_a_bad_directory_or_page_in_an_app(tmp_path: Path, api: Path) -> None:
    missing = tmp_path / "missing"
    path = write_config(tmp_path, app_table("api", api, f"spawn_dir = '{missing}'"))
    assert config_error("--config", path) == (
        f"{path}: app 'api': spawn_dir {str(missing)!r}: not a directory the server can write to")
    path = write_config(tmp_path, app_table("api", api, f"custom_error_page = '{missing}'"))
    assert config_error("--config", path) == (
        f"{path}: app 'api': custom_error_page {str(missing)!r}: No such file or directory")


@pytest.mark.parametrize(("line", "expected"), [
    ("max_pool_size = 0", "max_pool_size 0: must be at least 1"),
    ("max_pool_size = 'many'", "max_pool_size 'many': expected a whole number"),
    ("max_pool_size = 2.5", "max_pool_size 2.5: expected a whole number"),
    ("max_pool_size = true", "max_pool_size true: expected a whole number"),
    ("drain_timeout = 0", "drain_timeout 0: must be a positive number of seconds"),
    ("drain_timeout = -1", "drain_timeout -1: must be a positive number of seconds"),
    ("listen = []", "listen: give at least one endpoint, e.g. 'tcp:3000'"),
    ("listen = 3000", "listen 3000: expected a list of strings"),
    ("listen = ['tcp:1', 2]", "listen ['tcp:1', 2]: expected a list of strings"),
    ("port = 70000", "port 70000: must be a port number (0-65535)"),
    ("port = -1", "port -1: must be a port number (0-65535)"),
    ("port = 'http'", "port 'http': expected a port number"),
    ("address = ''", "address '': expected a non-empty string"),
    # App settings at the top are defaults for every app, checked as such.
    ("min_instances = -1", "min_instances -1: must not be negative"),
    ("environment = false", "environment false: expected a non-empty string"),
    ("base_uri = 'x'", "base_uri 'x': must be a path starting with / (no spaces, ? or #)"),
])
def test_a_bad_value_at_the_top(tmp_path: Path, api: Path, line: str, expected: str) -> None:
    path = write_config(tmp_path, line + "\n" + app_table("api", api))
    assert config_error("--config", path) == f"{path}: {expected}"


def test_a_bad_value_on_the_command_line_names_the_option_even_with_a_file(tmp_path: Path, api: Path) -> None:
    path = write_config(tmp_path, "min_instances = 2\n" + app_table("api", api, "min_instances = 1"))
    assert config_error("--config", path, "--min-instances", "x") == "--min-instances 'x': expected a whole number"


def test_a_bad_value_under_an_alias_names_the_key_as_written(tmp_path: Path, api: Path) -> None:
    path = write_config(tmp_path, app_table("api", api, "force_max_concurrent_requests_per_process = 'lots'"))
    assert "force_max_concurrent_requests_per_process 'lots'" in config_error("--config", path)


def test_a_start_command_that_is_an_array_is_not_called_empty(tmp_path: Path, api: Path) -> None:
    path = write_config(tmp_path, app_table("api", api, start_command=None) + "start_command = ['node', 'server.js']\n")
    message = config_error("--config", path)
    assert message.startswith(f"{path}: app 'api': start_command")
    assert "is empty" not in message


# Errors that concern the apps together.


def test_duplicate_app_names(tmp_path: Path, api: Path, web: Path) -> None:
    path = write_config(tmp_path, app_table("api", api) + app_table("api", web, 'server_names = ["w.example"]'))
    assert config_error("--config", path) == f"{path}: two apps are named 'api'; give each a unique name"


def test_duplicate_default_names(tmp_path: Path, api: Path) -> None:
    path = write_config(tmp_path, f"""\
        [[app]]
        root = '{api}'
        start_command = "a"
        base_uri = "/a"
        [[app]]
        root = '{api}'
        start_command = "b"
        base_uri = "/b"
        """)
    assert config_error("--config", path) == f"{path}: two apps are named 'api'; give each a unique name"


@pytest.mark.parametrize(("first", "second", "shown"), [
    ([], [], "*/"),
    (["server_names = ['*']"], [], "*/"),
    (["server_names = ['example.com']", "base_uri = '/blog'"],
     ["server_names = ['other.org', 'Example.com']", "base_uri = '/blog/'"], "example.com/blog"),
    (["base_uri = '/x'"], ["base_uri = '/x//'"], "*/x"),
    (["server_names = ['*.example.com']"], ["server_names = ['*.EXAMPLE.com']"], "*.example.com/"),
])
def test_two_apps_answering_the_same_host_and_base_uri(tmp_path: Path, api: Path, web: Path, first: list[str],
                                                       second: list[str], shown: str) -> None:
    path = write_config(tmp_path, app_table("a", api, *first) + app_table("b", web, *second))
    assert config_error("--config", path) == (
        f"{path}: apps 'a' and 'b' both answer {shown}; give them different server_names or base_uri")


def test_apps_on_different_hosts_or_prefixes_coexist(tmp_path: Path, api: Path, web: Path) -> None:
    path = write_config(tmp_path, app_table("a", api) + app_table("b", web, "base_uri = '/b'")
                        + app_table("c", web, "server_names = ['c.example']")
                        + app_table("d", web, "server_names = ['*.c.example']")
                        + app_table("e", web, "server_names = ['c.example']", "base_uri = '/e'"))
    assert [app.name for app in load("--config", path).apps] == ["a", "b", "c", "d", "e"]


def test_one_app_may_list_a_name_twice(tmp_path: Path, api: Path) -> None:
    path = write_config(tmp_path, app_table("a", api, "server_names = ['x.example', 'X.example']"))
    assert load("--config", path).apps[0].server_names == ("x.example", "x.example")


def test_min_instances_of_all_apps_above_max_pool_size(tmp_path: Path, api: Path, web: Path) -> None:
    path = write_config(tmp_path, "max_pool_size = 4\nmin_instances = 2\n" + app_table("a", api)
                        + app_table("b", web, "base_uri = '/b'", "min_instances = 3"))
    assert config_error("--config", path) == (
        f"{path}: the apps' min_instances add up to 5, more than {path}: max_pool_size 4")


def test_min_instances_of_all_apps_above_max_pool_size_from_the_command_line(tmp_path: Path, api: Path,
                                                                              web: Path) -> None:
    path = write_config(tmp_path, "max_pool_size = 10\n" + app_table("a", api)
                        + app_table("b", web, "base_uri = '/b'"))
    assert config_error("--config", path, "--min-instances", "3", "--max-pool-size", "5") == (
        f"{path}: the apps' min_instances add up to 6, more than --max-pool-size 5")


def test_min_instances_of_all_apps_exactly_filling_the_pool(tmp_path: Path, api: Path, web: Path) -> None:
    path = write_config(tmp_path, "max_pool_size = 5\n" + app_table("a", api, "min_instances = 2")
                        + app_table("b", web, "base_uri = '/b'", "min_instances = 3"))
    config = load("--config", path)
    assert sum(app.min_instances for app in config.apps) == config.max_pool_size == 5


def test_min_instances_of_one_app_above_max_pool_size_set_in_the_file(tmp_path: Path, api: Path) -> None:
    path = write_config(tmp_path, "max_pool_size = 2\nmin_instances = 3\n" + app_table("a", api))
    assert config_error("--config", path) == f"{path}: min_instances 3 is greater than {path}: max_pool_size 2"


@pytest.mark.parametrize("where", ["table", "passengerfile"])
def test_min_instances_of_one_app_above_max_pool_size_names_its_source(tmp_path: Path, api: Path,
                                                                       where: str) -> None:
    if where == "table":
        path = write_config(tmp_path, app_table("api", api, "min_instances = 7"))
        source = f"{path}: app 'api': min_instances 7"
        args = ["--config", path]
    else:
        source = f"{write_passengerfile(api, {'app_start_command': 'x', 'min_instances': 7})}: min_instances 7"
        args = ["--app-root", str(api)]
    message = config_error(*args)
    assert "--min-instances" not in message
    assert message.startswith(f"{source} is greater than")


@pytest.mark.parametrize(("top", "table", "expected"), [
    ([], ["min_instances = 3", "max_instances = 2"], "{path}: app 'api': min_instances 3 is greater than "
                                                     "{path}: app 'api': max_instances 2"),
    (["min_instances = 3"], ["max_instances = 2"], "{path}: min_instances 3 is greater than "
                                                   "{path}: app 'api': max_instances 2"),
])
def test_min_instances_above_max_instances(tmp_path: Path, api: Path, top: list[str], table: list[str],
                                           expected: str) -> None:
    path = write_config(tmp_path, "\n".join(top) + "\n" + app_table("api", api, *table))
    assert config_error("--config", path) == expected.format(path=path)


def test_min_instances_above_max_instances_on_the_command_line() -> None:
    assert config_error("--app-start-command", "x", "--min-instances", "3", "--max-instances", "2") == (
        "--min-instances 3 is greater than --max-instances 2")


@pytest.mark.parametrize(("minimum", "maximum"), [(3, 0), (2, 2), (0, 1)])
def test_min_instances_within_max_instances(tmp_path: Path, api: Path, minimum: int, maximum: int) -> None:
    path = write_config(tmp_path, app_table("api", api, f"min_instances = {minimum}", f"max_instances = {maximum}"))
    app = load("--config", path).apps[0]
    assert (app.min_instances, app.max_instances) == (minimum, maximum)


@pytest.mark.skipif(os.geteuid() != 0, reason="user accounts are only resolved when the server runs as root")
def test_an_unknown_user_in_the_file_names_the_file(tmp_path: Path, api: Path) -> None:
    path = write_config(tmp_path, app_table("api", api, "user = 'no-such-user-for-passenger-tests'"))
    message = config_error("--config", path)
    assert message.startswith(f"{path}: app 'api': user")


# build_config directly (raw values by setting key, as Options.given() passes them).


def test_build_config_without_a_file_uses_the_current_directory(api: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(api)
    config = build_config({"start_command": "run", "min_instances": None, "envvars": ["A=1"]})
    (app,) = config.apps
    assert os.path.realpath(app.root) == os.path.realpath(api)
    assert (app.start_command, app.min_instances, dict(app.envvars)) == ("run", 1, {"A": "1"}), "None: not given"
    assert config.listen == ("tcp:3000:interface=0.0.0.0",)


def test_build_config_with_a_file(tmp_path: Path, api: Path) -> None:
    path = write_config(tmp_path, "max_pool_size = 4\n" + app_table("api", api, "min_instances = 2"))
    config = build_config({"min_instances": 3, "port": "8000", "server_names": ["A.example"]}, path)
    app = config.apps[0]
    assert (app.min_instances, app.server_names) == (3, ("a.example",))
    assert (config.max_pool_size, config.listen) == (4, ("tcp:8000:interface=0.0.0.0",))


def test_build_config_raises_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^--min-instances -1: must not be negative$"):
        build_config({"start_command": "x", "root": str(tmp_path), "min_instances": "-1"})


def test_read_config_file_resolves_aliases(tmp_path: Path, api: Path) -> None:
    path = write_config(tmp_path, f"""\
        environment = "staging"
        [[app]]
        name = "api"
        app_root = '{api}'
        app_start_command = "x"
        """)
    top, apps = read_config_file(path)
    assert top.values == {"environment": "staging"}
    assert [app.values for app in apps] == [{"name": "api", "root": str(api), "start_command": "x"}]


def test_options_given_passes_every_setting_by_key() -> None:
    options = Options()
    options.parseOptions(["--app-start-command", "x", "--server-name", "a.example", "--server-name", "b.example",
                          "--sticky-sessions", "--app-support-kuria-protocol", "--no-friendly-error-pages"])
    given_values = options.given()
    assert set(given_values) == {setting.key for setting in SETTINGS}
    assert given_values["server_names"] == ["a.example", "b.example"]
    assert given_values["sticky_sessions"] is True
    assert given_values["app_supports_kuria_protocol"] is True
    assert given_values["friendly_error_pages"] is False
    assert given_values["envvars"] is None and given_values["min_instances"] is None
    app = options["config"].apps[0]
    assert (app.server_names, app.sticky_sessions, app.kuria, app.friendly_error_pages) == (
        ("a.example", "b.example"), True, True, False)


def test_contradicting_friendly_error_page_flags() -> None:
    assert config_error("--app-start-command", "x", "--friendly-error-pages", "--no-friendly-error-pages") == (
        "--friendly-error-pages and --no-friendly-error-pages contradict each other")


# The schema.


def test_every_app_setting_is_an_app_config_field_with_the_same_default() -> None:
    fields = attrs.fields_dict(AppConfig)
    for setting in APP_SETTINGS:
        field = fields[setting.attribute]
        default = field.default.factory() if isinstance(field.default, attrs.Factory) else field.default  # type: ignore[attr-defined]
        if setting.key in ("name", "root", "start_command"):
            assert default is attrs.NOTHING, setting.key
        else:
            assert default == setting.default, setting.key
    assert {s.attribute for s in APP_SETTINGS} == set(fields), "every AppConfig field is a setting"


def test_server_settings() -> None:
    assert {s.key for s in SERVER_SETTINGS} == {"listen", "address", "port", "max_pool_size", "drain_timeout",
                                                "max_body_size", "allow_underscore_headers", "trusted_proxies",
                                                "show_version_in_header", "request_head_timeout",
                                                "request_body_timeout", "keepalive_timeout", "max_connections",
                                                "socket_backlog", "access_log", "ssl", "ssl_certificate",
                                                "ssl_certificate_key", "ssl_port", "data_buffer_dir",
                                                "response_buffer_high_watermark", "send_timeout",
                                                "instance_registry_dir", "admin_listen", "hooks", "busy_poll",
                                                "io_uring", "loopback_reno"}
    fields = attrs.fields_dict(ServerConfig)
    assert fields["max_pool_size"].default == BY_KEY["max_pool_size"].default
    assert fields["drain_timeout"].default == BY_KEY["drain_timeout"].default


def test_setting_names() -> None:
    assert BY_KEY["app_root"] is BY_KEY["root"]
    assert BY_KEY["app_start_command"] is BY_KEY["start_command"]
    assert BY_KEY["force_max_concurrent_requests_per_process"] is BY_KEY["concurrency"]
    assert BY_KEY["root"].option == "--app-root"
    assert BY_KEY["envvars"].option == "--envvar"
    assert BY_KEY["min_instances"].option == "--min-instances"
    assert BY_KEY["request_queue_overflow_status_code"].option == "--request-queue-overflow-status"
    assert BY_KEY["app_supports_kuria_protocol"].attribute == "kuria"
    assert BY_KEY["min_instances"].attribute == "min_instances"
    assert len({s.key for s in SETTINGS}) == len(SETTINGS), "keys are unique"
    assert len({s.option for s in SETTINGS}) == len(SETTINGS), "options are unique"


# Converters.


def test_microseconds() -> None:
    assert microseconds(100)("--us", "0") == 0
    assert microseconds(100)("--us", 100) == 100
    for bad in ("2.5", "soon", True, None):
        with pytest.raises(ConfigError, match=r"^--us .*: expected a whole number of microseconds$"):
            microseconds(100)("--us", bad)
    for out_of_range in (-1, 101):
        with pytest.raises(ConfigError, match=rf"^--us {out_of_range}: must be from 0 to 100 microseconds$"):
            microseconds(100)("--us", out_of_range)


def test_busy_poll_reaches_the_server_config(tmp_path: Path) -> None:
    path = write_config(tmp_path, f'busy_poll = 500\n[[app]]\nname = "a"\nroot = "{tmp_path}"\nstart_command = "true"\n')
    assert build_config({}, path).busy_poll == 500
    assert parse("--app-start-command", "true", "--busy-poll", "250")["config"].busy_poll == 250
    assert parse("--app-start-command", "true")["config"].busy_poll == 0


@pytest.mark.parametrize("key", ["io_uring", "loopback_reno"])
def test_io_uring_and_loopback_reno_are_on_unless_turned_off(tmp_path: Path, key: str) -> None:
    path = write_config(tmp_path, f'{key} = false\n[[app]]\nname = "a"\nroot = "{tmp_path}"\nstart_command = "true"\n')
    assert getattr(build_config({}, path), key) is False
    option = "--no-" + key.replace("_", "-")
    assert getattr(parse("--app-start-command", "true", option)["config"], key) is False
    assert getattr(parse("--app-start-command", "true")["config"], key) is True


def test_whole() -> None:
    assert whole()("--n", "3") == 3
    assert whole()("--n", " 3 ") == 3
    assert whole()("--n", 3.0) == 3
    assert whole()("--n", 0) == 0
    assert whole(1)("--n", 1) == 1
    for bad in ("3.0", "", "x", True, None, 2.5, float("inf"), [3]):
        with pytest.raises(ConfigError, match=r"^--n .*: expected a whole number$"):
            whole()("--n", bad)
    with pytest.raises(ConfigError, match=r"^--n -1: must not be negative$"):
        whole()("--n", "-1")
    with pytest.raises(ConfigError, match=r"^--n 1: must be at least 2$"):
        whole(2)("--n", 1)


def test_seconds() -> None:
    assert seconds()("--s", "1.5") == 1.5
    assert seconds()("--s", 2) == 2.0 and isinstance(seconds()("--s", 2), float)
    assert seconds("= never")("--s", 0) == 0.0
    assert seconds("= never")("--s", "0") == 0.0
    with pytest.raises(ConfigError, match=r"^--s 0: must be a positive number of seconds$"):
        seconds()("--s", 0)
    with pytest.raises(ConfigError, match=r"^--s '0': must be a positive number of seconds$"):
        seconds()("--s", "0")
    with pytest.raises(ConfigError, match=r"^--s -1: must be 0 or more \(0 = never\)$"):
        seconds("= never")("--s", -1)
    with pytest.raises(ConfigError, match=r"^--s -0.5: must be a positive number of seconds$"):
        seconds()("--s", -0.5)
    for bad in ("nan", "inf", "-inf", float("nan"), "later", True, None):
        with pytest.raises(ConfigError, match=r": expected a number of seconds$"):
            seconds("= never")("--s", bad)


@pytest.mark.parametrize(("raw", "expected"), [
    ("unknown", None), ("UNKNOWN", None), (" unknown ", None), ("", None), ("-1", None), (-1, None),
    (0, 0), ("0", 0), (1, 1), ("16", 16), (4.0, 4),
])
def test_concurrency(raw: object, expected: int | None) -> None:
    assert concurrency("--c", raw) == expected


@pytest.mark.parametrize("raw", [-2, "-2", "lots", True, False, 1.5, None])
def test_concurrency_rejects(raw: object) -> None:
    with pytest.raises(ConfigError, match=r"^--c .*(a whole number, 0 \(unlimited\) or unknown)$"):
        concurrency("--c", raw)


@pytest.mark.parametrize(("raw", "expected"), [
    (True, True), (False, False), ("true", True), ("TRUE", True), (" yes ", True), ("on", True), ("1", True),
    ("false", False), ("No", False), ("off", False), ("0", False),
])
def test_flag(raw: object, expected: bool) -> None:
    assert flag("--f", raw) is expected


@pytest.mark.parametrize(("raw", "shown"), [("maybe", "'maybe'"), ("", "''"), (1, "1"), (0, "0"), (None, "None")])
def test_flag_rejects(raw: object, shown: str) -> None:
    with pytest.raises(ConfigError) as info:
        flag("--f", raw)
    assert str(info.value) == f"--f {shown}: expected true or false"


@pytest.mark.parametrize(("raw", "expected"), [
    ("/", "/"), ("/blog", "/blog"), ("/blog/", "/blog"), ("/blog///", "/blog"), ("//", "/"), ("/a/b/", "/a/b"),
    ("/Blog", "/Blog"), ("/a.b-c_d~e", "/a.b-c_d~e"),
])
def test_base_uri(raw: str, expected: str) -> None:
    assert base_uri("base_uri", raw) == expected


@pytest.mark.parametrize("raw", ["blog", "blog/", " /blog", "/a b", "/a\tb", "/a?b", "/a#b", "", 5, None])
def test_base_uri_rejects(raw: object) -> None:
    with pytest.raises(ConfigError, match=r"^base_uri "):
        base_uri("base_uri", raw)


@given(st.lists(st.text(alphabet="abc-_.", min_size=1, max_size=4), max_size=4), st.integers(0, 3))
@settings(max_examples=200, derandomize=True, database=None)
def test_base_uri_normalisation_is_idempotent(segments: list[str], trailing: int) -> None:
    raw = "/" + "/".join(segments) + "/" * trailing
    once = base_uri("b", raw)
    assert base_uri("b", once) == once
    assert once == "/" or (once.startswith("/") and not once.endswith("/"))


@pytest.mark.parametrize(("raw", "expected"), [
    ("Example.COM", ("example.com",)),
    ("a.example, B.example  c.example", ("a.example", "b.example", "c.example")),
    (["*", "*.Example.com", "localhost", "x_y.example"],
     ("*", "*.example.com", "localhost", "x_y.example")),
    ((), ()),
    ("", ()),
])
def test_server_names(raw: object, expected: tuple[str, ...]) -> None:
    assert server_names("server_names", raw) == expected


@pytest.mark.parametrize("raw", ["a.*.com", "*.", "*example.com", "-a.com", "a-.com", "a..com", "a.com.",
                                 "http://a.com", "a.com/x", "a.com:123456", "a.com:", "**",
                                 "example.com:8080", "*.example.com:8080", "*:8080"])
def test_server_names_rejects(raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        server_names("--server-name", [raw])
    assert str(info.value) == f"--server-name {raw!r}: not a host name (a name without port, '*.example.com' or '*')"


def test_status_and_port_bounds() -> None:
    assert (status("s", 100), status("s", "599")) == (100, 599)
    for bad in (99, 600, "0"):
        with pytest.raises(ConfigError, match=r"not an HTTP status \(100-599\)$"):
            status("s", bad)
    assert (port("p", 0), port("p", "65535")) == (0, 65535)
    with pytest.raises(ConfigError, match=r"^p 65536: must be a port number \(0-65535\)$"):
        port("p", 65536)


def test_strings() -> None:
    assert text("t", " x ") == " x "
    assert command("c", "node server.js") == "node server.js"
    assert cookie_name("k", "_passenger_route") == "_passenger_route"
    assert header_value("h", "") == "", "cookie attributes may be empty"
    assert health_path("p", "/health?full=1") == "/health?full=1"
    for bad in ("a\rb", "a\nb", "a\0b"):
        with pytest.raises(ConfigError, match=r"expected a string without line breaks$"):
            header_value("h", bad)
    with pytest.raises(ConfigError, match=r"^c is empty: "):
        command("c", "")


def test_page_file(tmp_path: Path) -> None:
    page = tmp_path / "big.html"
    page.write_bytes(b"x" * (1024 * 1024 + 10))
    assert page_file("p", str(page)) == b"x" * (1024 * 1024), "at most 1 MiB is read"
    with pytest.raises(ConfigError, match=r"Is a directory$"):
        page_file("p", str(tmp_path))


def test_envvars_and_parse_envvar() -> None:
    assert envvars("e", ["A=1", "A=2", "B="]) == {"A": "2", "B": ""}
    assert envvars("e", {"A": "x", "_B9": 3}) == {"A": "x", "_B9": "3"}
    assert parse_envvar("--envvar", "PATH=/bin:/usr/bin") == ("PATH", "/bin:/usr/bin")
    for bad in ("NOVALUE", "=x", "1A=x", "A B=x", "A-B=x"):
        with pytest.raises(ConfigError, match=r"^--envvar .*: expected NAME=VALUE"):
            parse_envvar("--envvar", bad)
    with pytest.raises(ConfigError, match=r'expected a table of NAME = "value"$'):
        envvars("e", 5)


def test_listen_list() -> None:
    assert listen_list("l", "tcp:1") == ("tcp:1",)
    assert listen_list("l", "unix:/a b.sock") == ("unix:/a b.sock",), "a string is one endpoint, spaces and all"
    assert listen_list("l", ["tcp:1", "tcp:2"]) == ("tcp:1", "tcp:2")
    with pytest.raises(ConfigError, match=r"^l: give at least one endpoint"):
        listen_list("l", [])


# PASSENGER_<SETTING> environment variables: between the command line and the file.


def test_environment_sits_between_the_command_line_and_the_file(tmp_path: Path, api: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_config(tmp_path, f"""
        max_pool_size = 9
        request_head_timeout = 5
        min_instances = 2
        {app_table("api", api, "max_instances = 4", "concurrency = 3")}
        """)
    monkeypatch.setenv("PASSENGER_MAX_POOL_SIZE", "7")
    monkeypatch.setenv("PASSENGER_CONCURRENCY", "5")
    monkeypatch.setenv("PASSENGER_MAX_INSTANCES", "6")
    config = load("--config", path, "--max-instances", "8")
    (app,) = config.apps
    assert config.max_pool_size == 7, "the environment overrides the file's server setting"
    assert config.request_head_timeout == 5.0, "what the environment does not set comes from the file"
    assert app.concurrency == 5, "the environment overrides the [[app]] table"
    assert app.max_instances == 8, "the command line overrides the environment"
    assert app.min_instances == 2


def test_environment_overrides_passengerfile_and_defaults(api: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_passengerfile(api, {"environment": "staging", "min_instances": 2})
    monkeypatch.setenv("PASSENGER_ENVIRONMENT", "development")
    monkeypatch.setenv("PASSENGER_APP_START_COMMAND", "node server.js")  # Passenger's spelling
    monkeypatch.setenv("PASSENGER_STICKY_SESSIONS", "true")
    monkeypatch.setenv("PASSENGER_SERVER_NAMES", "a.example b.example")
    (app,) = load("--app-root", str(api)).apps
    assert (app.environment, app.start_command, app.sticky_sessions) == ("development", "node server.js", True)
    assert app.server_names == ("a.example", "b.example"), "list settings: space-separated"
    assert app.min_instances == 2, "the Passengerfile still gives what the environment does not"


def test_environment_port_replaces_the_files_listen(tmp_path: Path, api: Path, checked: list[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_config(tmp_path, f"""
        listen = ["tcp:8080"]
        {app_table("api", api)}
        """)
    monkeypatch.setenv("PASSENGER_PORT", "8181")
    assert load("--config", path).listen == ("tcp:8181:interface=0.0.0.0",)


def test_a_bad_environment_value_names_its_variable(api: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PASSENGER_MAX_POOL_SIZE", "many")
    message = config_error("--app-root", str(api), "--app-start-command", "run")
    assert message.startswith("environment variable PASSENGER_MAX_POOL_SIZE 'many':"), message


def test_variables_that_are_not_settings_or_name_an_app_are_ignored(api: Path, web: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PASSENGER_APP_ROOT", str(web))  # what hooks and apps are given, not a setting here
    monkeypatch.setenv("PASSENGER_REQUIRE_NODE", "1")
    monkeypatch.setenv("PASSENGER_ENVVARS", "A=1")
    (app,) = load("--app-root", str(api), "--app-start-command", "run").apps
    assert app.root == str(api) and dict(app.envvars) == {}

"""Build the ServerConfig from its sources, in Passenger's order of precedence.

For each app: the command line > ``PASSENGER_<SETTING>`` environment
variables > the config file's ``[[app]]`` table > the file's top level
(defaults for every app) > the app's ``Passengerfile.json`` > the defaults in
``options.py``.  Server settings: the command line > the environment > the file.  Each value is converted by its setting with
a label naming its source, so an error says where the bad value is.
"""

from __future__ import annotations

import difflib
import json
import os
import tomllib
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from passenger.config import AppConfig, ConfigError, ServerConfig
from passenger.options import APP_SETTINGS, BY_KEY, SERVER_SETTINGS, SETTINGS, Setting

#: Passenger reads at most this much of an app's Passengerfile.json.
PASSENGERFILE_CAP = 512 * 1024
#: Settings that name one app: they belong in an [[app]] table, not at the top of the file.
ONE_APP_KEYS = frozenset({"name", "root", "start_command"})


@attrs.frozen
class Layer:
    """Raw values from one source, by setting key, and how that source names a setting in errors."""

    values: Mapping[str, Any]
    label: Callable[[Setting], str]

    def only(self, scope: str) -> Layer:
        return Layer({k: v for k, v in self.values.items() if BY_KEY[k].scope == scope}, self.label)


#: Table settings whose layers merge name by name instead of replacing each other.
MERGED = ("envvars", "hooks")
#: Environment variables name settings as PASSENGER_<KEY> (or a Passenger spelling: PASSENGER_APP_START_COMMAND).
ENV_PREFIX = "PASSENGER_"
#: Not taken from the environment: an app's identity (PASSENGER_APP_ROOT is what hooks and apps are given),
#: and tables (there is no unambiguous way to write them in one variable).
NOT_FROM_ENV = frozenset({"name", "root", "envvars", "hooks"})


def environment_names(setting: Setting) -> tuple[str, ...]:
    """The environment variables that set ``setting`` (none for NOT_FROM_ENV)."""
    if setting.key in NOT_FROM_ENV:
        return ()
    return tuple(ENV_PREFIX + name.upper() for name in (setting.key, *setting.aliases))


def read_environment(environ: Mapping[str, str]) -> Layer:
    """``PASSENGER_<SETTING>`` variables as a layer; a list setting takes space-separated values."""
    values: dict[str, Any] = {}
    names: dict[str, str] = {}
    for setting in SETTINGS:
        for name in environment_names(setting):
            if name in environ:
                raw = environ[name]
                values[setting.key] = raw.split() if setting.repeatable else raw
                names[setting.key] = name
    return Layer(values, lambda setting: f"environment variable {names.get(setting.key, setting.key)}")


def cli_label(setting: Setting) -> str:
    return setting.option


def _file_label(path: str, prefix: str = "", written: Mapping[str, str] | None = None) -> Callable[[Setting], str]:
    """``path: prefix key``, with the key as the file spelled it (an alias, maybe)."""
    names = written or {}
    return lambda setting: f"{path}: {prefix}{names.get(setting.key, setting.key)}"


def find_setting(key: str, where: str) -> Setting:
    """The setting named ``key`` (or an alias); an unknown one is an error with a "did you mean" hint."""
    setting = BY_KEY.get(key)
    if setting is None:
        close = difflib.get_close_matches(key, BY_KEY, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{where}unknown setting {key!r}{hint}")
    return setting


def _table_layer(path: str, where: str, table: Mapping[str, Any], scope: str) -> Layer:
    """A file table as a Layer: keys resolved to settings (aliases too); unknown or misplaced keys are errors."""
    found: dict[str, Any] = {}
    written: dict[str, str] = {}
    for key, value in table.items():
        setting = find_setting(key, f"{path}: {where}")
        if scope == "app" and setting.scope == "server":
            raise ConfigError(f"{path}: {where}{key!r} is a server setting; put it at the top of the file")
        if scope == "top" and setting.key in ONE_APP_KEYS:
            raise ConfigError(f"{path}: {key!r} belongs in an [[app]] table")
        if setting.key in found:
            raise ConfigError(f"{path}: {where}{key!r} is given twice (as {written[setting.key]!r} and {key!r})")
        found[setting.key] = value
        written[setting.key] = key
    return Layer(_relative_to(path, found), _file_label(path, where, written))


def read_config_file(path: str) -> tuple[Layer, list[Layer]]:
    """The top of a TOML config file and each of its [[app]] tables, as layers."""
    try:
        with open(path, "rb") as f:
            document = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"--config {path!r}: {e.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    tables = document.pop("app", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ConfigError(f"{path}: 'app' must be a list of [[app]] tables")
    if not tables:
        raise ConfigError(f"{path}: declares no app; add an [[app]] table with name, root and start_command")
    top = _table_layer(path, "", document, "top")
    apps = []
    for number, table in enumerate(tables, 1):
        name = table.get("name")
        where = f"app {name!r}: " if isinstance(name, str) else f"app #{number}: "
        apps.append(_table_layer(path, where, table, "app"))
    return top, apps


#: Settings that are paths; in a config file they are relative to the file.
PATH_KEYS = ("root", "spawn_dir", "custom_error_page")  # restart_dir: relative to the app root


def _relative_to(path: str, table: dict[str, Any]) -> dict[str, Any]:
    base = os.path.dirname(os.path.abspath(path))
    for key in PATH_KEYS:
        value = table.get(key)
        if isinstance(value, str) and value and not os.path.isabs(value):
            table[key] = os.path.normpath(os.path.join(base, value))
    return table


def read_passengerfile(root: str) -> Layer:
    """The app settings in ``<root>/Passengerfile.json`` (keys that are not ours are Passenger's; ignored)."""
    path = os.path.join(root, "Passengerfile.json")
    try:
        with open(path, "rb") as f:
            data = f.read(PASSENGERFILE_CAP + 1)
    except FileNotFoundError:
        return Layer({}, cli_label)
    except OSError as e:
        raise ConfigError(f"{path}: {e.strerror}") from None
    if len(data) > PASSENGERFILE_CAP:
        raise ConfigError(f"{path}: larger than {PASSENGERFILE_CAP // 1024} KiB")
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: must be a JSON object")
    values = {}
    for key, value in document.items():
        setting = BY_KEY.get(key)
        if setting is not None and setting.scope == "app" and setting.key not in ("root", "name"):
            values[setting.key] = value
    return Layer(values, _file_label(path))


def _resolve(settings: tuple[Setting, ...], layers: list[Layer]) -> dict[str, Any]:
    """Each setting's value from the highest layer that has it (envvars and hooks merge, name by name)."""
    values: dict[str, Any] = {}
    for setting in settings:
        value = setting.default
        for layer in layers:
            if setting.key in layer.values:
                converted = setting.convert(layer.label(setting), layer.values[setting.key])
                value = {**value, **converted} if setting.key in MERGED else converted
        values[setting.key] = value
    return values


#: How to name a setting (by key) in an error.
Labeller = Callable[[str], str]


def _labeller(layers: list[Layer], fallback: Layer) -> Labeller:
    """Name a setting after the highest layer that set it (``fallback``, if none did)."""

    def label(key: str) -> str:
        setting = BY_KEY[key]
        for layer in reversed(layers):
            if key in layer.values:
                return layer.label(setting)
        return fallback.label(setting)

    return label


def build_app(cli: Layer, file_layers: list[Layer], missing_root: str,
              env: Layer | None = None) -> tuple[AppConfig, Labeller]:
    """One app from the command line, the environment and its file tables (lowest first); ``missing_root``
    if none gives one."""
    root_setting = BY_KEY["root"]
    with_root = [layer for layer in [*file_layers, cli] if "root" in layer.values]
    source = with_root[-1] if with_root else cli
    root = root_setting.convert(source.label(root_setting), source.values.get("root", missing_root))
    layers = [read_passengerfile(root), *file_layers, *([env] if env is not None else []), cli]
    label = _labeller(layers, file_layers[-1] if file_layers else cli)
    values = _resolve(APP_SETTINGS, layers)
    values["root"] = root
    if values["start_command"] is None:
        raise ConfigError(f"{label('start_command')} is required: the command that starts the app, e.g. 'node server.js'")
    values["name"] = values["name"] or os.path.basename(root) or "app"
    app = AppConfig(**{BY_KEY[key].attribute: value for key, value in values.items()})
    if app.max_instances and app.min_instances > app.max_instances:
        raise ConfigError(f"{label('min_instances')} {app.min_instances} is greater than "
                          f"{label('max_instances')} {app.max_instances}")
    from passenger.spawn.users import resolve_app_user

    resolve_app_user(app, label=label)  # an unknown user or group, or root, is a config error now, not at a spawn
    return app, label


def build_config(cli_values: Mapping[str, Any], config_path: str | None = None,
                 environ: Mapping[str, str] | None = None) -> ServerConfig:
    """The whole server config from the command line (raw values by setting key), ``PASSENGER_*``
    variables in ``environ`` and an optional file."""
    cli = Layer({key: value for key, value in cli_values.items() if value is not None}, cli_label)
    env = read_environment(environ or {})
    app_cli, server_cli = cli.only("app"), cli.only("server")
    app_env, server_env = env.only("app"), env.only("server")
    built: list[tuple[AppConfig, Labeller]] = []
    if config_path is None:
        server_file = Layer({}, cli_label)
        built.append(build_app(app_cli, [], os.getcwd(), app_env))
    else:
        top, tables = read_config_file(config_path)
        server_file = top.only("server")
        one_app_options = [BY_KEY[k].option for k in ONE_APP_KEYS if k in app_cli.values]
        if one_app_options and len(tables) > 1:
            raise ConfigError(f"{', '.join(sorted(one_app_options))} names one app, but {config_path} "
                              f"declares {len(tables)}; set it in the file instead")
        for table in tables:
            if "root" not in table.values and "root" not in app_cli.values:
                raise ConfigError(table.label(BY_KEY["root"]) + " is required (the directory of the app)")
            built.append(build_app(app_cli, [top.only("app"), table], os.getcwd(), app_env))
    given = {**server_env.values, **server_cli.values}
    if {"address", "port"} & given.keys() and "listen" not in given:
        # --address/--port (on the command line or in the environment) replace the file's listen.
        server_file = Layer({k: v for k, v in server_file.values.items() if k != "listen"}, server_file.label)
    server_layers = [server_file, server_env, server_cli]
    server = _resolve(SERVER_SETTINGS, server_layers)
    plain_http = not server["ssl"] or server["ssl_port"] is not None
    listen = server["listen"] or ((_default_listen(server["address"], server["port"]),) if plain_http else ())
    listen = (*listen, *_tls_listeners(server, _labeller(server_layers, server_cli)))
    for key in ("address", "port", "ssl", "ssl_certificate", "ssl_certificate_key", "ssl_port"):
        server.pop(key)
    server["listen"] = listen
    config = ServerConfig(apps=tuple(app for app, _ in built), **server)
    check_apps_together(config, _labeller(server_layers, server_cli), [label for _, label in built], config_path)
    return config


#: Endpoint types that take a backlog= argument.
BACKLOG_ENDPOINTS = ("tcp:", "tcp6:", "ssl:", "unix:")


def with_backlog(description: str, backlog: int) -> str:
    """The endpoint with ``backlog=`` added, unless it has one (Twisted's default, 50, overflows under bursts)."""
    if not description.lower().startswith(BACKLOG_ENDPOINTS) or "backlog=" in description:
        return description
    return f"{description}:backlog={backlog}"


def _tls_listeners(server: dict[str, Any], label: Labeller) -> tuple[str, ...]:
    """Passenger's --ssl options as an ssl: endpoint (pyOpenSSL, Twisted's secure defaults)."""
    if not server["ssl"]:
        for key in ("ssl_certificate", "ssl_certificate_key", "ssl_port"):
            if server[key] is not None:
                raise ConfigError(f"{label(key)} needs {label('ssl')}")
        return ()
    files = []
    for key in ("ssl_certificate", "ssl_certificate_key"):
        path = server[key]
        if path is None:
            raise ConfigError(f"{label('ssl')} needs {label(key)}")
        try:
            with open(path, "rb") as f:
                if b"-----BEGIN" not in f.read(1024 * 1024):
                    raise ConfigError(f"{label(key)} {path!r}: not a PEM file")
        except OSError as e:
            raise ConfigError(f"{label(key)} {path!r}: {e.strerror}") from None
        files.append(os.path.abspath(path).replace(":", "\\:"))
    cert, key_file = files
    port = server["ssl_port"] if server["ssl_port"] is not None else server["port"]
    address = server["address"].replace(":", "\\:")
    return (f"ssl:{port}:privateKey={key_file}:certKey={cert}:interface={address}",)


def _default_listen(address: str, port: int) -> str:
    return f"tcp:{port}:interface={address.replace(':', chr(92) + ':')}"


def check_apps_together(config: ServerConfig, server_label: Labeller, app_labels: list[Labeller],
                        path: str | None) -> None:
    """What no single app can get wrong: unique names, room for every min_instances, unambiguous routes."""
    where = f"{path}: " if path else ""
    names: set[str] = set()
    routes: dict[tuple[str, str], str] = {}
    for app in config.apps:
        if app.name in names:
            raise ConfigError(f"{where}two apps are named {app.name!r}; give each a unique name")
        names.add(app.name)
        for host in app.server_names or ("*",):
            other = routes.setdefault((host, app.base_uri), app.name)
            if other != app.name:
                raise ConfigError(f"{where}apps {other!r} and {app.name!r} both answer {host}{app.base_uri}; "
                                  "give them different server_names or base_uri")
    total = sum(app.min_instances for app in config.apps)
    if total > config.max_pool_size:
        if len(config.apps) == 1:
            raise ConfigError(f"{app_labels[0]('min_instances')} {total} is greater than "
                              f"{server_label('max_pool_size')} {config.max_pool_size}")
        raise ConfigError(f"{where}the apps' min_instances add up to {total}, more than "
                          f"{server_label('max_pool_size')} {config.max_pool_size}")

"""``response/properties.json``: the sockets an app reports (passenger-gls.md §1.6).

Kuria apps must report at least one socket that accepts HTTP; a generic app may
report one too (a Unix socket, or its concurrency).  Every rule broken gives a
message that says which socket and what is wrong.
"""

from __future__ import annotations

import json
import os
import stat

import attrs

#: Passenger's limit of HTTP-accepting sockets per process.
MAX_HTTP_SOCKETS = 3


class PropertiesError(ValueError):
    """properties.json breaks the contract; the message says how."""


@attrs.frozen
class AppSocket:
    address: str
    protocol: str
    #: <0 unknown, 0 unlimited, N at most N requests at once.
    concurrency: int
    accept_http: bool
    #: ("tcp", host, port) or ("unix", path, 0)
    endpoint: tuple[str, str, int]


def _endpoint(address: str, where: str, app_uid: int | None) -> tuple[str, str, int]:
    if address.startswith("tcp://"):
        host, sep, port_text = address[len("tcp://"):].rpartition(":")
        host = host.strip("[]")
        if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise PropertiesError(f"{where}: address {address!r} is not tcp://HOST:PORT")
        return ("tcp", host, int(port_text))
    if address.startswith("unix:"):
        path = address[len("unix:"):]
        if not os.path.isabs(path):
            raise PropertiesError(f"{where}: Unix socket path {path!r} must be absolute")
        try:
            info = os.lstat(path)
        except OSError as e:
            raise PropertiesError(f"{where}: Unix socket {path}: {e.strerror}") from None
        if not stat.S_ISSOCK(info.st_mode):
            raise PropertiesError(f"{where}: {path} is not a Unix socket")
        if app_uid is not None and info.st_uid != app_uid:
            raise PropertiesError(f"{where}: Unix socket {path} is owned by uid {info.st_uid}, not by the app's uid {app_uid}")
        return ("unix", path, 0)
    raise PropertiesError(f"{where}: address {address!r} must start with tcp:// or unix:")


def parse_properties(data: bytes, app_uid: int | None, require_http: bool) -> list[AppSocket]:
    """The sockets of a properties.json, validated."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PropertiesError(f"properties.json is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise PropertiesError("properties.json must be a JSON object")
    unknown = sorted(set(doc) - {"sockets"})
    if unknown:
        raise PropertiesError(f"properties.json has unknown keys: {', '.join(unknown)} (only 'sockets' is allowed)")
    sockets_doc = doc.get("sockets", [])
    if not isinstance(sockets_doc, list):
        raise PropertiesError("properties.json: 'sockets' must be an array")
    sockets = []
    for index, entry in enumerate(sockets_doc):
        where = f"properties.json: sockets[{index}]"
        if not isinstance(entry, dict):
            raise PropertiesError(f"{where} must be an object")
        address, protocol = entry.get("address"), entry.get("protocol")
        concurrency, accept = entry.get("concurrency"), entry.get("accept_http_requests", False)
        if not isinstance(address, str) or not address:
            raise PropertiesError(f"{where}: 'address' must be a non-empty string")
        if not isinstance(protocol, str) or not protocol:
            raise PropertiesError(f"{where}: 'protocol' must be a non-empty string")
        if not isinstance(concurrency, int) or isinstance(concurrency, bool):
            raise PropertiesError(f"{where}: 'concurrency' is required and must be an integer")
        if not isinstance(accept, bool):
            raise PropertiesError(f"{where}: 'accept_http_requests' must be true or false")
        if "description" in entry and not isinstance(entry["description"], str):
            raise PropertiesError(f"{where}: 'description' must be a string")
        if accept and protocol != "http":
            raise PropertiesError(f"{where}: a socket that accepts HTTP requests must speak 'http', not {protocol!r}")
        endpoint = _endpoint(address, where, app_uid) if accept else ("other", address, 0)
        sockets.append(AppSocket(address, protocol, concurrency, accept, endpoint))
    http = [s for s in sockets if s.accept_http]
    if len(http) > MAX_HTTP_SOCKETS:
        raise PropertiesError(
            f"properties.json lists {len(http)} sockets that accept HTTP; at most {MAX_HTTP_SOCKETS} are allowed")
    if require_http and not http:
        raise PropertiesError("properties.json lists no socket with \"accept_http_requests\": true")
    return sockets


def process_concurrency(sockets: list[AppSocket]) -> int | None:
    """Passenger's rule: any unknown makes it unknown, else any unlimited, else the sum."""
    http = [s for s in sockets if s.accept_http]
    if not http or any(s.concurrency < 0 for s in http):
        return None
    if any(s.concurrency == 0 for s in http):
        return 0
    return sum(s.concurrency for s in http)

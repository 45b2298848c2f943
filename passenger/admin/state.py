"""What the pool and the front end are doing, as data, and Passenger's text and XML renderings of it.

Built only when someone asks (an admin request, a metrics scrape): the request
path keeps plain counters and pays nothing for this.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any
from xml.etree import ElementTree

import psutil

from passenger import __version__
from passenger.pool.process import READY, SPAWNING

if TYPE_CHECKING:
    from passenger.http.front import FrontFactory, FrontProtocol
    from passenger.pool.group import Group
    from passenger.pool.pool import Pool
    from passenger.pool.process import AppProcess


class ProcessInfo:
    """CPU and memory of app processes, through psutil (CPU is measured between two looks, as top does)."""

    def __init__(self) -> None:
        self._known: dict[int, psutil.Process] = {}

    def read(self, pid: int | None) -> dict[str, Any]:
        if pid is None:
            return {"cpu": None, "rss": None, "real_memory": None}
        handle = self._known.get(pid)
        try:
            if handle is None:
                handle = self._known[pid] = psutil.Process(pid)
                handle.cpu_percent(None)  # the first call only starts the measurement
            cpu = handle.cpu_percent(None)
            memory = handle.memory_info()
            try:
                real = handle.memory_full_info().uss  # private memory: what the process really costs
            except (psutil.AccessDenied, AttributeError):
                real = memory.rss
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            self._known.pop(pid, None)
            return {"cpu": None, "rss": None, "real_memory": None}
        return {"cpu": round(cpu), "rss": memory.rss, "real_memory": real}

    def forget_except(self, pids: set[int]) -> None:
        for pid in list(self._known):
            if pid not in pids:
                del self._known[pid]


def process_state(process: AppProcess, group: Group, now: float, info: ProcessInfo) -> dict[str, Any]:
    if process.draining:
        life = "shutting_down"
    elif process in group.leaving:
        life = "shutting_down"
    else:
        life = {SPAWNING: "spawning", READY: "alive"}.get(process.state, process.state.lower())
    return {
        "pid": process.pid,
        "sticky_session_id": process.sticky_id,
        "concurrency": process.concurrency,
        "sessions": process.sessions,
        "busyness": _busyness(process),
        "processed": process.processed,
        "spawn_start_time": process.spawned_at,
        "spawn_end_time": process.ready_at,
        "last_used": process.last_used,
        "last_used_desc": duration(now - process.last_used) + " ago",
        "uptime": duration(now - process.spawned_at),
        "life_status": life,
        "enabled": "enabled" if process.state == READY and not process.draining else "disabled",
        "generation": process.generation,
        "port": process.port,
        "address": f"unix:{process.unix_path}" if process.unix_path else f"http://{process.host}:{process.port}",
        **info.read(process.pid),
    }


def _busyness(process: AppProcess) -> int:
    if not process.concurrency:
        return process.sessions
    return round(100 * process.sessions / process.concurrency)


def group_state(group: Group, now: float, info: ProcessInfo) -> dict[str, Any]:
    app = group.app
    processes = [*group.processes, *(p for p in group.leaving if p not in group.processes)]
    failure = group.last_failure
    return {
        "name": app.name,
        "app_root": app.root,
        "app_type": "generic",
        "environment": app.environment,
        "start_command": app.start_command,
        "server_names": list(app.server_names),
        "base_uri": app.base_uri,
        "enabled_process_count": len(group.ready),
        "disabling_process_count": sum(1 for p in processes if p.draining),
        "processes_being_spawned": len(group.spawning),
        "spawning": bool(group.spawning),
        "restarting": group.restarting,
        "capacity_used": len(group.processes),
        "get_wait_list_size": group.waiting,
        "min_instances": app.min_instances,
        "max_instances": app.max_instances,
        "concurrency": app.concurrency,
        "restarts": group.restarts,
        "spawned": group.spawned,
        "spawn_failures": group.stats.spawn_failures,
        "last_spawn_error": None if failure is None else {
            "error_id": failure.error_id, "summary": failure.summary, "category": failure.category,
            "created": failure.created},
        "processes": [process_state(p, group, now, info) for p in processes],
    }


def pool_state(pool: Pool, now: float, info: ProcessInfo) -> dict[str, Any]:
    groups = [group_state(g, now, info) for g in pool.groups.values()]
    info.forget_except({p["pid"] for g in groups for p in g["processes"] if p["pid"] is not None})
    return {
        "max": pool.max_pool_size,
        "capacity_used": pool.size,
        "process_count": sum(len(g["processes"]) for g in groups),
        "app_group_count": len(groups),
        "get_wait_list_size": sum(1 for _ in pool.waiting),
        "waiting_app_groups": [g.app.name for g in pool.waiting],
        "groups": groups,
    }


def duration(seconds: float) -> str:
    """Passenger's way of writing a span: 5h 53m 29s, 4s."""
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{days}d"] if days else []
    if days or hours:
        parts.append(f"{hours}h")
    if days or hours or minutes:
        parts.append(f"{minutes}m")
    parts.append(f"{secs}s")
    return " ".join(parts)


def memory_text(size: int | None) -> str:
    return "?" if size is None else f"{size // (1024 * 1024)}M"


def render_pool_text(state: dict[str, Any], verbose: bool = False) -> str:
    """The pool as passenger-status prints it (Passenger's StateInspection layout)."""
    lines = [
        "----------- General information -----------",
        f"Max pool size : {state['max']}",
        f"App groups    : {state['app_group_count']}",
        f"Processes     : {state['process_count']}",
        f"Requests in top-level queue : {state['get_wait_list_size']}",
    ]
    if verbose:
        lines += [f"  {name}" for name in state["waiting_app_groups"]]
    lines += ["", "----------- Application groups -----------"]
    for group in state["groups"]:
        lines.append(f"{group['name']}:")
        lines.append(f"  App root: {group['app_root']}")
        if group["restarting"]:
            lines.append("  (restarting...)")
        if group["processes_being_spawned"] == 1:
            lines.append("  (spawning...)")
        elif group["processes_being_spawned"] > 1:
            lines.append(f"  (spawning {group['processes_being_spawned']} new processes...)")
        lines.append(f"  Requests in queue: {group['get_wait_list_size']}")
        for process in group["processes"]:
            cpu = "?" if process["cpu"] is None else f"{process['cpu']}%"
            lines.append(f"  * PID: {process['pid']!s:<7} Sessions: {process['sessions']:<7} "
                         f"Processed: {process['processed']:<7} Uptime: {process['uptime']}")
            lines.append(f"    CPU: {cpu:<7} Memory  : {memory_text(process['real_memory']):<7} "
                         f"Last used: {process['last_used_desc']}")
            if process["life_status"] == "shutting_down":
                lines.append("    Shutting down...")
            elif process["life_status"] == "spawning":
                lines.append("    Spawning...")
            if verbose:
                lines.append(f"    URL     : {process['address']}")
                concurrency = process["concurrency"]
                shown = "unknown" if concurrency is None else "unlimited" if concurrency == 0 else concurrency
                lines.append(f"    Generation: {process['generation']}   Concurrency: {shown}")
        if verbose and group["last_spawn_error"] is not None:
            error = group["last_spawn_error"]
            lines.append(f"  Last spawn error: {error['summary']} (error ID {error['error_id']})")
        lines.append("")
    return "\n".join(lines)


def render_pool_xml(state: dict[str, Any]) -> bytes:
    """The pool in Passenger's XML shape: <info><supergroups><supergroup><group><processes><process>."""
    root = ElementTree.Element("info", version="3")
    for key in ("max", "capacity_used", "process_count", "get_wait_list_size"):
        ElementTree.SubElement(root, key).text = str(state[key])
    ElementTree.SubElement(root, "passenger_version").text = __version__
    supergroups = ElementTree.SubElement(root, "supergroups")
    for group in state["groups"]:
        supergroup = ElementTree.SubElement(supergroups, "supergroup")
        ElementTree.SubElement(supergroup, "name").text = group["name"]
        element = ElementTree.SubElement(supergroup, "group")
        for key, value in group.items():
            if key in ("processes", "last_spawn_error", "server_names"):
                continue
            ElementTree.SubElement(element, key).text = _xml_text(value)
        processes = ElementTree.SubElement(element, "processes")
        for process in group["processes"]:
            item = ElementTree.SubElement(processes, "process")
            for key, value in process.items():
                ElementTree.SubElement(item, key).text = _xml_text(value)
    return b'<?xml version="1.0" encoding="utf-8"?>\n' + ElementTree.tostring(root, encoding="utf-8") + b"\n"


def _xml_text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def request_state(protocol: FrontProtocol, now: float) -> dict[str, Any] | None:
    """One client connection's request in flight, or None if it is idle."""
    request = protocol.active
    if request is None:
        return None
    if protocol.tunnel:
        state = "tunnel"
    elif protocol.delivering:
        state = "sending held response to client"
    elif protocol.responding:
        state = "sending response"
    elif protocol.process is not None:
        state = "waiting for app"
    elif request.buffering:
        state = "buffering request body"
    else:
        state = "queued"
    group = request.group
    process = protocol.process
    return {
        "method": request.method.decode("latin-1"),
        "path": request.url.decode("latin-1"),
        "host": (request.host or b"").decode("latin-1"),
        "app": group.app.name if group is not None else None,
        "pid": process.pid if process is not None else None,
        "state": state,
        "age": round(now - request.started, 3) if request.started else 0.0,
        "request_id": request.id_line[14:-2].decode("latin-1"),
        "client": protocol.peer.decode("latin-1"),
    }


def server_state(front: FrontFactory, now: float) -> dict[str, Any]:
    """The front end: open connections and the requests in flight (passenger-status --show=requests)."""
    requests = [state for state in (request_state(p, now) for p in list(front.connections)) if state is not None]
    requests.sort(key=lambda r: -r["age"])
    return {
        "connections": len(front.connections),
        "requests_in_flight": len(requests),
        "requests": requests,
        "time": time.time(),
    }

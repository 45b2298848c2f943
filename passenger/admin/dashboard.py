"""The live dashboard at ``/`` of the admin listener: one static page and the data it polls.

The page (``dashboard.html``, package data) is self-contained, inline CSS and
JavaScript, so it works where the admin listener is the only thing a browser
can reach.  It polls ``/dashboard.json`` every second: the pool state plus what
only a person watching needs, request rates, recent spawn errors and the front
end's load.  Everything here is computed when the page asks, from counters the
request path keeps anyway (``passenger.pool.stats``).
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any

from passenger.admin.state import server_state
from passenger.spawn.report import effective_texts, html_to_text

if TYPE_CHECKING:
    from passenger.pool.stats import GroupStats
    from passenger.service import PassengerService
    from passenger.spawn.report import SpawnReport

#: Seconds over which "now" (requests per second, mean latency) is measured.
RECENT = 10.0
#: Lines of app output shown with a spawn error: the end, where the reason usually is.
OUTPUT_LINES = 30


@cache
def page() -> bytes:
    """The page, read once: it is the same for every request while the server runs."""
    return resources.files("passenger.admin").joinpath("dashboard.html").read_bytes()


def state(service: PassengerService, pool: dict[str, Any]) -> dict[str, Any]:
    """``pool`` (as ``/pool.json``) with each app's rates and spawn errors added, and the front end's load.

    Times are the server's clock (seconds since the epoch), so the page draws
    its chart against ``time`` and not against a browser clock that may differ.
    """
    now = service.reactor.seconds()
    groups = service.pool.groups if service.pool is not None else {}
    apps = []
    for entry in pool["groups"]:
        group = groups.get(entry["name"])
        if group is None:  # gone since the pool state was read (a reload)
            apps.append({**entry, "rates": [], "rps": 0.0, "latency_ms": None, "spawn_errors": []})
            continue
        rps, latency = recent_rates(group.stats, now)
        apps.append({
            **entry,
            "rates": group.stats.rates(),
            "rps": rps,
            "latency_ms": latency,
            "spawn_errors": [spawn_error(when, report) for when, report in reversed(group.recent_failures)],
        })
    front = service.front
    server = None
    if front is not None:
        load = server_state(front, now)  # one definition of "in flight" for /server.json and the page
        server = {"connections": load["connections"], "requests_in_flight": load["requests_in_flight"]}
    return {"time": now, "server": server, "pool": {**pool, "groups": apps}}


def recent_rates(stats: GroupStats, now: float, span: float = RECENT) -> tuple[float, float | None]:
    """Requests per second and mean latency (ms) over the last ``span`` seconds; latency None without requests.

    Measured from the last per-second sample at least ``span`` old (or the
    oldest, on a young server) to the live counters, so a request answered a
    moment ago counts at once rather than at the next sample.
    """
    history = stats.history
    if not history:
        return 0.0, None
    start = history[0]
    for sample in reversed(history):
        if sample[0] <= now - span:
            start = sample
            break
    t0, n0, s0 = start
    elapsed = now - t0
    done = stats.latency.count - n0
    if elapsed <= 0 or done <= 0:
        return 0.0, None
    return round(done / elapsed, 2), round((stats.latency.total - s0) / done * 1000, 3)


def spawn_error(when: float, report: SpawnReport) -> dict[str, Any]:
    """What the page shows of a failed spawn: the report's text without its environment (secrets stay out)."""
    problem, solution = effective_texts(report)
    return {
        "time": when,
        "error_id": report.error_id,
        "summary": report.summary,
        "category": report.category,
        "problem": html_to_text(problem),
        "solution": html_to_text(solution),
        "output": list(report.output[-OUTPUT_LINES:]),
    }

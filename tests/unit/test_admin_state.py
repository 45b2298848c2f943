"""passenger.admin.state's renderings of a hand-made pool state, and passenger.pool.stats' counters."""

from __future__ import annotations

import copy
from typing import Any
from xml.etree import ElementTree

import pytest

from passenger import __version__
from passenger.admin.state import duration, memory_text, render_pool_text, render_pool_xml
from passenger.pool.stats import HISTORY, LATENCY_BUCKETS, GroupStats, Histogram

# duration


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0s"),
    (0.9, "0s"),
    (4, "4s"),
    (59.99, "59s"),
    (60, "1m 0s"),
    (61, "1m 1s"),
    (3599, "59m 59s"),
    (3600, "1h 0m 0s"),
    (5 * 3600 + 53 * 60 + 29, "5h 53m 29s"),
    (86399, "23h 59m 59s"),
    (86400, "1d 0h 0m 0s"),
    (86400 + 5, "1d 0h 0m 5s"),
    (3 * 86400 + 2 * 3600 + 60, "3d 2h 1m 0s"),
    (-5, "0s"),
])
def test_duration(seconds: float, text: str) -> None:
    assert duration(seconds) == text


@pytest.mark.parametrize(("size", "text"), [(None, "?"), (0, "0M"), (1024 * 1024 - 1, "0M"), (99 * 1024 * 1024, "99M")])
def test_memory_text(size: int | None, text: str) -> None:
    assert memory_text(size) == text


# A hand-made pool state (the shape of pool_state()).

def process(pid: int | None, **changes: Any) -> dict[str, Any]:
    state = {
        "pid": pid, "sticky_session_id": None, "concurrency": 4, "sessions": 1, "busyness": 25, "processed": 4595,
        "spawn_start_time": 1000.0, "spawn_end_time": 1000.5, "last_used": 1200.0, "last_used_desc": "4s ago",
        "uptime": "5h 53m 29s", "life_status": "alive", "enabled": "enabled", "generation": 2, "port": 4001,
        "address": "http://127.0.0.1:4001", "cpu": 3, "rss": 200 * 1024 * 1024, "real_memory": 99 * 1024 * 1024,
    }
    state.update(changes)
    return state


def group(name: str, processes: list[dict[str, Any]], **changes: Any) -> dict[str, Any]:
    state = {
        "name": name, "app_root": f"/srv/{name}", "app_type": "generic", "environment": "production",
        "start_command": "node server.js", "server_names": ["a.example", "b.example"], "base_uri": "/",
        "enabled_process_count": len(processes), "disabling_process_count": 0, "processes_being_spawned": 0,
        "spawning": False, "restarting": False, "capacity_used": len(processes), "get_wait_list_size": 0,
        "min_instances": 1, "max_instances": 0, "concurrency": None, "restarts": 0, "spawned": 1,
        "spawn_failures": 0, "last_spawn_error": None, "processes": processes,
    }
    state.update(changes)
    return state


def pool(*groups: dict[str, Any], waiting: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "max": 6, "capacity_used": sum(g["capacity_used"] for g in groups),
        "process_count": sum(len(g["processes"]) for g in groups), "app_group_count": len(groups),
        "get_wait_list_size": len(waiting), "waiting_app_groups": list(waiting), "groups": list(groups),
    }


STATE = pool(
    group("shop", [process(18334), process(18335, sessions=0, processed=7, life_status="shutting_down",
                                            enabled="disabled", cpu=None, real_memory=None,
                                            address="unix:/tmp/apps.s/shop.1")],
          restarting=True, processes_being_spawned=2, get_wait_list_size=3,
          last_spawn_error={"error_id": "abc123", "summary": "It exited at once", "category": "INTERNAL_ERROR",
                            "created": 1.0}),
    group("blog", [process(None, life_status="spawning", enabled="disabled", sessions=0, cpu=None, rss=None,
                           real_memory=None)], processes_being_spawned=1, spawning=True),
    waiting=("blog",),
)


# render_pool_text

def test_pool_text_header() -> None:
    text = render_pool_text(STATE)
    lines = text.splitlines()
    assert lines[:5] == [
        "----------- General information -----------",
        "Max pool size : 6",
        "App groups    : 2",
        "Processes     : 3",
        "Requests in top-level queue : 1",
    ]
    assert "----------- Application groups -----------" in lines


def test_pool_text_groups_and_processes() -> None:
    text = render_pool_text(STATE)
    shop = text[text.index("shop:\n"):text.index("blog:\n")]
    assert shop.splitlines() == [
        "shop:",
        "  App root: /srv/shop",
        "  (restarting...)",
        "  (spawning 2 new processes...)",
        "  Requests in queue: 3",
        "  * PID: 18334   Sessions: 1       Processed: 4595    Uptime: 5h 53m 29s",
        "    CPU: 3%      Memory  : 99M     Last used: 4s ago",
        "  * PID: 18335   Sessions: 0       Processed: 7       Uptime: 5h 53m 29s",
        "    CPU: ?       Memory  : ?       Last used: 4s ago",
        "    Shutting down...",
        "",
    ]
    blog = text[text.index("blog:\n"):]
    assert "  (spawning...)\n" in blog
    assert "  * PID: None    Sessions: 0" in blog
    assert "    Spawning...\n" in blog
    assert "(restarting...)" not in blog


def test_pool_text_verbose() -> None:
    quiet = render_pool_text(STATE)
    verbose = render_pool_text(STATE, verbose=True)
    for extra in ("URL     :", "Generation:", "Last spawn error:", "abc123"):
        assert extra not in quiet
    assert "Requests in top-level queue : 1\n  blog\n" in verbose
    assert "    URL     : http://127.0.0.1:4001\n" in verbose
    assert "    URL     : unix:/tmp/apps.s/shop.1\n" in verbose
    assert "    Generation: 2   Concurrency: 4\n" in verbose
    assert "  Last spawn error: It exited at once (error ID abc123)\n" in verbose


def test_pool_text_of_an_empty_pool() -> None:
    text = render_pool_text(pool())
    assert "App groups    : 0" in text and "Processes     : 0" in text
    assert text.rstrip().endswith("----------- Application groups -----------")


# render_pool_xml

def test_pool_xml_structure() -> None:
    data = render_pool_xml(STATE)
    assert data.startswith(b'<?xml version="1.0" encoding="utf-8"?>\n')
    root = ElementTree.fromstring(data)
    assert root.tag == "info" and root.get("version") == "3"
    assert root.findtext("max") == "6"
    assert root.findtext("capacity_used") == "3"
    assert root.findtext("process_count") == "3"
    assert root.findtext("get_wait_list_size") == "1"
    assert root.findtext("passenger_version") == __version__
    supergroups = root.findall("supergroups/supergroup")
    assert [s.findtext("name") for s in supergroups] == ["shop", "blog"]
    shop = supergroups[0].find("group")
    assert shop is not None
    assert shop.findtext("name") == "shop"
    assert shop.findtext("app_root") == "/srv/shop"
    assert shop.findtext("restarting") == "true"
    assert shop.findtext("spawning") == "false"
    assert shop.findtext("concurrency") == ""  # None
    assert shop.findtext("get_wait_list_size") == "3"
    # Not scalars: left out of the group element.
    assert shop.find("server_names") is None and shop.find("last_spawn_error") is None
    pids = [p.findtext("pid") for p in shop.findall("processes/process")]
    assert pids == ["18334", "18335"]
    second = shop.findall("processes/process")[1]
    assert second.findtext("life_status") == "shutting_down"
    assert second.findtext("cpu") == "" and second.findtext("sticky_session_id") == ""
    assert second.findtext("rss") == str(200 * 1024 * 1024)
    blog_process = supergroups[1].find("group/processes/process")
    assert blog_process is not None and blog_process.findtext("pid") == ""


def test_pool_xml_escapes_what_it_carries() -> None:
    state = copy.deepcopy(STATE)
    state["groups"][0]["name"] = 'sh<o>p & "co"'
    state["groups"][0]["app_root"] = "/srv/a&b<c>"
    state["groups"][0]["start_command"] = "run --x '<script>' && echo ]]>"
    root = ElementTree.fromstring(render_pool_xml(state))
    group_element = root.find("supergroups/supergroup/group")
    assert group_element is not None
    assert root.findtext("supergroups/supergroup/name") == 'sh<o>p & "co"'
    assert group_element.findtext("app_root") == "/srv/a&b<c>"
    assert group_element.findtext("start_command") == "run --x '<script>' && echo ]]>"


def test_pool_xml_of_an_empty_pool() -> None:
    root = ElementTree.fromstring(render_pool_xml(pool()))
    assert root.findall("supergroups/supergroup") == []
    assert root.findtext("process_count") == "0"


# passenger.pool.stats

def test_histogram_counts_into_buckets_at_or_below_each_bound() -> None:
    histogram = Histogram((0.1, 0.5, 1.0))
    for value in (0.0, 0.1, 0.10001, 0.5, 0.7, 1.0, 3.0, 99.0):
        histogram.observe(value)
    assert histogram.count == 8
    assert histogram.total == pytest.approx(0.0 + 0.1 + 0.10001 + 0.5 + 0.7 + 1.0 + 3.0 + 99.0)
    assert histogram.counts == [2, 2, 2, 2]
    assert histogram.cumulative() == [("0.1", 2), ("0.5", 4), ("1.0", 6), ("+Inf", 8)]


def test_an_empty_histogram() -> None:
    histogram = Histogram(LATENCY_BUCKETS)
    pairs = histogram.cumulative()
    assert [bound for bound, _ in pairs] == [*map(str, LATENCY_BUCKETS), "+Inf"]
    assert all(count == 0 for _, count in pairs)
    assert histogram.count == 0 and histogram.total == 0.0


def test_cumulative_ends_with_the_count() -> None:
    histogram = Histogram(LATENCY_BUCKETS)
    values = [0.001 * i for i in range(1, 400)] + [20.0, 0.0]
    for value in values:
        histogram.observe(value)
    pairs = histogram.cumulative()
    counts = [count for _, count in pairs]
    assert counts == sorted(counts)
    assert pairs[-1] == ("+Inf", len(values))
    for bound, count in pairs[:-1]:
        assert count == sum(1 for v in values if v <= float(bound)), bound


def test_group_stats_count_responses_by_status() -> None:
    stats = GroupStats()
    stats.response(200, 0.01)
    stats.response(200, 0.02)
    stats.response(404, 0.5)
    assert stats.responses == {200: 2, 404: 1}
    assert stats.latency.count == 3
    assert stats.latency.total == pytest.approx(0.53)


def test_group_stats_rates() -> None:
    stats = GroupStats()
    assert stats.rates() == []
    stats.sample(100.0)
    assert stats.rates() == []  # one sample: no interval yet
    for _ in range(10):
        stats.response(200, 0.05)
    stats.sample(102.0)  # 10 requests in 2 s, 50 ms each
    stats.sample(103.0)  # none in the next second
    stats.response(200, 0.3)
    stats.sample(103.0)  # a zero-length interval is skipped
    stats.sample(104.0)
    assert stats.rates() == [
        {"t": 102.0, "rps": 5.0, "latency_ms": 50.0},
        {"t": 103.0, "rps": 0.0, "latency_ms": 0.0},
        {"t": 104.0, "rps": 0.0, "latency_ms": 0.0},
    ]


def test_group_stats_rates_account_for_every_request() -> None:
    stats = GroupStats()
    stats.sample(0.0)
    for second, count in enumerate((3, 0, 7, 1), start=1):
        for _ in range(count):
            stats.response(200, 0.01 * second)
        stats.sample(second * 0.5)  # half a second apart
    points = stats.rates()
    assert [p["rps"] for p in points] == [6.0, 0.0, 14.0, 2.0]
    assert [p["latency_ms"] for p in points] == [10.0, 0.0, 30.0, 40.0]
    assert sum(p["rps"] * 0.5 for p in points) == stats.latency.count == 11


def test_group_stats_history_is_bounded() -> None:
    stats = GroupStats()
    for second in range(HISTORY + 50):
        stats.sample(float(second))
    assert len(stats.history) == HISTORY
    assert stats.history[0][0] == 50.0
    assert len(stats.rates()) == HISTORY - 1

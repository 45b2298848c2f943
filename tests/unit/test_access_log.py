"""AccessLog on its own: the line it writes, when it writes, and a file it cannot write to."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from passenger.http.access_log import BUFFER_SIZE, FLUSH_INTERVAL, AccessLog

NOW = 1_795_000_000.25  # 2026-11-18 11:06:40 UTC
HEADERS = [(b"Host", b"t"), (b"referer", b"http://r/"), (b"User-Agent", b'tester "1"')]


def line(log: AccessLog, upstream: float | None = 0.004, target: bytes = b"/a?x=1") -> None:
    log.log(b"127.0.0.1", b"GET", target, "1.1", 200, 13, HEADERS, b"rid-1", upstream, NOW)


def test_a_line_in_the_combined_format_is_written_at_the_next_flush(tmp_path: Path) -> None:
    path, clock = tmp_path / "access.log", Clock()
    log = AccessLog(str(path), clock)
    line(log)
    assert path.read_bytes() == b""  # held: no write per request
    clock.advance(FLUSH_INTERVAL)
    assert path.read_bytes() == (b'127.0.0.1 - - [18/Nov/2026:11:06:40 +0000] "GET /a?x=1 HTTP/1.1" 200 13 '
                                 b'"http://r/" "tester \\"1\\"" rid=rid-1 upstream=0.004\n')
    log.close()


def test_upstream_time_is_rounded_to_milliseconds_or_a_dash(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    log = AccessLog(str(path), Clock())
    for upstream in (None, 0.0, 0.0004, 0.0005, 1.2345, 61.0, -0.003):
        line(log, upstream)
    log.close()
    times = [ln.rpartition(b"upstream=")[2] for ln in path.read_bytes().splitlines()]
    assert times == [b"-", b"0.000", b"0.000", b"0.001", b"1.235", b"61.000", b"0.000"]


def test_every_status_is_written_as_its_number(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    log = AccessLog(str(path), Clock())
    statuses = [101, 200, 404, 502, 599, 600, 999]
    for status in statuses:
        log.log(b"127.0.0.1", b"GET", b"/", "1.1", status, 0, [], b"rid", 0.001, NOW)
        log.log(b"127.0.0.1", b"GET", b"/", "1.1", status, 0, [], b"rid", None, NOW)
    log.close()
    written = [int(ln.split(b'" ', 1)[1].split()[0]) for ln in path.read_bytes().splitlines()]
    assert written == [status for status in statuses for _ in range(2)]


def test_a_full_buffer_is_written_without_waiting_for_the_flush(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    log = AccessLog(str(path), Clock())
    target = b"/" + b"x" * 200
    written = 0
    while not path.read_bytes():
        line(log, target=target)
        written += 1
        assert written * 200 < 2 * BUFFER_SIZE, "nothing written past twice the buffer size"
    assert len(path.read_bytes().splitlines()) == written
    assert len(path.read_bytes()) >= BUFFER_SIZE
    log.close()


def test_close_and_reopen_write_what_is_held(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    log = AccessLog(str(path), Clock())
    line(log, target=b"/first")
    path.rename(tmp_path / "access.log.1")
    log.reopen()  # logrotate moved it: the held line goes to the old file, the next to a new one
    line(log, target=b"/second")
    log.close()
    assert b"/first" in (tmp_path / "access.log.1").read_bytes()
    assert b"/second" in path.read_bytes() and b"/first" not in path.read_bytes()


def test_a_file_that_cannot_be_written_warns_once_and_drops_the_lines(tmp_path: Path) -> None:
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    clock = Clock()
    try:
        log = AccessLog("/dev/full", clock)
        for _ in range(3):
            line(log)
            clock.advance(FLUSH_INTERVAL)  # each flush fails with ENOSPC; logging goes on
        log.close()
    finally:
        globalLogPublisher.removeObserver(events.append)
    warnings = [e for e in events if e.get("log_format", "").startswith("Access log {path}")]
    assert len(warnings) == 1, events
    assert warnings[0]["path"] == "/dev/full" and "No space left" in str(warnings[0]["error"])

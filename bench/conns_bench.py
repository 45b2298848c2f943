#!/usr/bin/env python3
"""Many concurrent keep-alive connections, each sending a request every few seconds.

Run from the repository root:

    .venv/bin/python bench/conns_bench.py [--connections 10000] [--interval 3] [--duration 30] [--json FILE]

Target: 10,000 concurrent keep-alive client connections, each sending a request
every few seconds: all served, server RSS under 300 MB, no request slower than
100 ms beyond the app's time.

The script first measures the app's own time (one hello.py process, talked to
directly at half the total request rate, as the account the server runs its
apps as: when root, the one passenger switches to), then starts ``twistd -n
passenger`` with two hello.py processes (or uses ``--url``), opens the
connections from one or more asyncio client processes, and sends ``GET /`` on
each of them every ``--interval`` seconds for ``--duration`` seconds.  It checks
that the baseline app and the server's apps ran the same program as the same
user (a WARNING and exit status 1 if not).  Everything listens on 127.0.0.1.
Every process the script starts is stopped on exit, Ctrl-C, SIGTERM or error.
See bench/README.md.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import ctypes
import json
import math
import multiprocessing
import os
import platform
import random
import resource
import shlex
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from benchlib import (
    HOST,
    Account,
    Identity,
    Session,
    alive,
    app_account,
    arg_parser,
    busy_cpu_seconds,
    children,
    cpu_seconds,
    free_port,
    http_get,
    identity,
    notable,
    start_app,
    start_twistd,
    twistd_argv,
    wait_listening,
)

DEFAULT_MAX_CONNECTIONS = 10000  # passenger's default --max-connections (docs/configuration.md)
RSS_LIMIT_MB = 300  # target: server VmHWM below this many MB (10^6 bytes)
SLOW_MARGIN_S = 0.100  # target: no request slower than the app's time + 100 ms
OTHERS_NOTE_PCT = 25.0  # a NOTE when other processes used more than this % of a core (latencies skewed)


class AppMismatch(RuntimeError):
    """The baseline app and the server's apps did not run the same program as the same user.

    Raised by run() once the run is complete (and cleaned up), so a caller sees it
    as a failed run; ``result`` holds every figure anyway (its report has the WARNING)."""

    def __init__(self, message: str, result: dict[str, Any]) -> None:
        super().__init__(message)
        self.result = result


# --------------------------------------------------------------------------- small helpers


def full_log(path: Path) -> list[str]:
    """Every line of twistd's log, rotated parts (path.N, oldest first) included."""
    parts = [p for p in path.parent.glob(path.name + ".*") if p.suffix[1:].isdigit()]
    lines: list[str] = []
    for p in [*sorted(parts, key=lambda p: -int(p.suffix[1:])), path]:
        with contextlib.suppress(OSError):
            lines += p.read_text(errors="replace").splitlines()
    return lines


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM (KiB) and the thread count from /proc/PID/status; {} if gone."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM", "Threads"):
                    out[key] = int(rest.split()[0])
    except (OSError, ValueError):
        return {}
    return out


def open_fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def nofile_limit(pid: int) -> tuple[int | None, int | None]:
    """(soft, hard) 'Max open files' of a process from /proc/PID/limits (None = unlimited/unknown)."""
    try:
        with open(f"/proc/{pid}/limits") as f:
            for line in f:
                if line.startswith("Max open files"):
                    parts = line.split()
                    soft, hard = parts[3], parts[4]
                    return (None if soft == "unlimited" else int(soft), None if hard == "unlimited" else int(hard))
    except (OSError, ValueError, IndexError):
        pass
    return None, None


def raise_nofile() -> tuple[int, int]:
    """Raise this process's RLIMIT_NOFILE soft limit to the hard limit; returns (soft, hard) after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def pct(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..1) of an already sorted list."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def ms(v: float | None) -> float | None:
    return None if v is None else round(v * 1000, 3)


def fmt_ms(v: float | None) -> str:
    """Seconds, shown in ms."""
    if v is None:
        return "-"
    v *= 1000
    return f"{v:.2f} ms" if v < 10 else f"{v:.1f} ms" if v < 1000 else f"{v / 1000:.2f} s"


def fmt_kib(kib: int | None) -> str:
    return "-" if kib is None else f"{kib / 1024:.1f} MiB ({kib * 1024 / 1e6:.1f} MB)"


def _set_pdeathsig() -> None:
    """Linux: this process gets SIGKILL when its parent dies, so no client outlives the script."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


# --------------------------------------------------------------------------- the client (runs in worker processes)


class Proto(asyncio.Protocol):
    """One TCP connection: reads responses (head up to CRLFCRLF, Content-Length, body) and hands them to its slot."""

    def __init__(self, slot: Slot) -> None:
        self.slot = slot
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.dead = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.slot.proto = self  # now, not when create_connection returns: a close may come first

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while True:
            i = buf.find(b"\r\n\r\n")
            if i < 0:
                if len(buf) > 65536:
                    self.slot.bad_response(self, "head over 64 KiB")
                return
            head = bytes(buf[:i]).lower()
            try:
                status = int(head[9:12])
            except ValueError:
                self.slot.bad_response(self, "bad status line")
                return
            j = head.find(b"\r\ncontent-length:")
            if j < 0:
                self.slot.bad_response(self, "no content-length")
                return
            k = head.find(b"\r\n", j + 2)
            try:
                clen = int(head[j + 17:k if k >= 0 else len(head)])
            except ValueError:
                self.slot.bad_response(self, "bad content-length")
                return
            end = i + 4 + clen
            if len(buf) < end:
                return
            del buf[:end]
            self.slot.response(self, status)

    def connection_lost(self, exc: Exception | None) -> None:
        self.dead = True
        self.slot.lost(self, exc)


class Slot:
    """One logical client connection: its schedule, its request in flight, its current Proto."""

    __slots__ = ("busy", "connecting", "next_at", "owed", "proto", "sent_at", "worker")

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.proto: Proto | None = None
        self.next_at = 0.0
        self.sent_at = 0.0
        self.busy = False
        self.owed = False  # a send came due while the previous request was in flight or a reconnect ran
        self.connecting = False

    # -- sending

    def fire(self) -> None:
        w = self.worker
        now = time.monotonic()
        scheduled = self.next_at
        self.next_at = scheduled + w.interval
        if self.next_at < w.end:
            w.loop.call_at(self.next_at, self.fire)
        if self.busy or self.connecting:
            self.owed = True
            w.c["sends_delayed"] += 1
            return
        if self.proto is None or self.proto.dead:  # the connection was closed: open a new one, send when it is up
            self.owed = True
            w.reconnect(self)
            return
        w.send_lag.append(now - scheduled)
        self.send()

    def send(self) -> None:
        w = self.worker
        assert self.proto is not None and self.proto.transport is not None
        self.sent_at = time.monotonic()
        self.busy = True
        w.busy.add(self)
        w.c["sent"] += 1
        self.proto.transport.write(w.request)

    def send_owed(self) -> None:
        if (self.owed and self.proto is not None and not self.proto.dead and not self.busy
                and time.monotonic() < self.worker.end):
            self.owed = False
            self.send()

    # -- receiving

    def response(self, proto: Proto, status: int) -> None:
        w = self.worker
        now = time.monotonic()
        if proto is not self.proto or not self.busy:
            w.c["unexpected_responses"] += 1
            return
        self.busy = False
        w.busy.discard(self)
        w.lat.append(now - self.sent_at)
        w.sent_rel.append(self.sent_at - w.start)
        if status == 200:
            w.c["ok"] += 1
        else:
            w.c["non200"] += 1
            w.statuses[status] += 1
        self.send_owed()

    def bad_response(self, proto: Proto, why: str) -> None:
        w = self.worker
        w.c["bad_responses"] += 1
        w.errors[f"bad response: {why}"] += 1
        self.drop(proto)

    def drop(self, proto: Proto) -> None:
        """Forget this connection (it is closed below); a request in flight on it is given up."""
        w = self.worker
        if proto is self.proto:
            self.proto = None
            if self.busy:
                self.busy = False
                w.busy.discard(self)
        if proto.transport is not None:
            proto.transport.abort()

    def lost(self, proto: Proto, exc: Exception | None) -> None:
        w = self.worker
        if proto is not self.proto:
            return  # we dropped it ourselves
        self.proto = None
        if w.closing:
            return
        if self.busy:
            self.busy = False
            w.busy.discard(self)
            w.c["resets"] += 1  # closed or reset with a request in flight
            w.errors[f"closed with a request in flight: {exc!r}" if exc else "closed with a request in flight"] += 1
        elif w.phase == "load":
            w.c["closed_idle"] += 1
            w.errors["closed by the server while idle (during load)"] += 1
        else:
            w.c["closed_before_load"] += 1
            w.errors["closed by the server before the load started"] += 1


class Worker:
    """The asyncio client of one process: its share of the connections."""

    def __init__(self, host: str, port: int, path: str, n: int, opts: dict[str, Any]) -> None:
        self.host, self.port, self.n = host, port, n
        self.request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
        self.interval = float(opts["interval"])
        self.connect_timeout = float(opts["connect_timeout"])
        self.request_timeout = float(opts["request_timeout"])
        self.concurrency = max(1, int(opts["connect_concurrency"]))
        self.loop = asyncio.get_running_loop()
        self.slots = [Slot(self) for _ in range(n)]
        self.busy: set[Slot] = set()
        self.c: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.statuses: Counter[int] = Counter()
        self.lat = array.array("d")
        self.sent_rel = array.array("d")
        self.send_lag = array.array("d")
        self.connect_times = array.array("d")
        self.start = self.end = 0.0
        self.phase = "connect"
        self.closing = False

    async def _open(self, slot: Slot) -> bool:
        """Connect slot; False on a connect error.  (A close right after the connect is counted by Slot.lost.)"""
        t0 = time.monotonic()
        try:
            await asyncio.wait_for(
                self.loop.create_connection(lambda: Proto(slot), self.host, self.port), self.connect_timeout)
        except TimeoutError:
            self.errors["connect timeout"] += 1
            return False
        except OSError as e:
            self.errors[f"connect: {e.strerror or e}"] += 1
            return False
        self.connect_times.append(time.monotonic() - t0)
        return True

    async def connect_all(self) -> None:
        sem = asyncio.Semaphore(self.concurrency)

        async def one(slot: Slot) -> None:
            async with sem:
                if await self._open(slot):
                    self.c["connected"] += 1
                else:
                    self.c["connect_errors"] += 1

        t0 = time.monotonic()
        await asyncio.gather(*(one(s) for s in self.slots))
        self.c["connect_phase_ms"] = round((time.monotonic() - t0) * 1000)

    def reconnect(self, slot: Slot) -> None:
        slot.connecting = True

        async def go() -> None:
            try:
                if await self._open(slot):
                    self.c["reconnects"] += 1
                    slot.send_owed()
                else:
                    self.c["reconnect_errors"] += 1
            finally:
                slot.connecting = False

        self.loop.create_task(go())

    async def sweep(self) -> None:
        """Requests in flight for longer than request_timeout count as timeouts (their connection is closed)."""
        while True:
            await asyncio.sleep(0.2)
            now = time.monotonic()
            for slot in [s for s in self.busy if now - s.sent_at > self.request_timeout]:
                self.c["timeouts"] += 1
                if slot.proto is not None:
                    slot.drop(slot.proto)

    async def load(self, start: float, end: float) -> None:
        self.start, self.end, self.phase = start, end, "load"
        rnd = random.Random(os.getpid())
        for slot in self.slots:
            slot.next_at = start + rnd.uniform(0, self.interval)
            if slot.next_at < end:
                self.loop.call_at(slot.next_at, slot.fire)
        sweeper = self.loop.create_task(self.sweep())
        cpu0 = time.process_time()
        await asyncio.sleep(max(0.0, end - time.monotonic()))
        self.c["cpu_ms"] = round((time.process_time() - cpu0) * 1000)
        self.c["load_wall_ms"] = round((time.monotonic() - start) * 1000)
        deadline = time.monotonic() + self.request_timeout + 1
        while (self.busy or any(s.connecting for s in self.slots)) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        self.c["unanswered_at_end"] = len(self.busy)
        sweeper.cancel()
        self.phase = "done"

    def open_now(self) -> int:
        return sum(1 for s in self.slots if s.proto is not None)

    def close_all(self) -> None:
        self.closing = True
        for s in self.slots:
            if s.proto is not None and s.proto.transport is not None:
                s.proto.transport.close()

    def report(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "counters": dict(self.c), "errors": dict(self.errors),
                "statuses": dict(self.statuses), "open": self.open_now(),
                "lat": self.lat.tobytes(), "sent_rel": self.sent_rel.tobytes(),
                "send_lag": self.send_lag.tobytes(), "connect_times": self.connect_times.tobytes()}


async def _recv(conn: Connection) -> Any:
    """Wait (without blocking the loop) for the next message from the parent."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[Any] = loop.create_future()

    def ready() -> None:
        loop.remove_reader(conn.fileno())
        try:
            fut.set_result(conn.recv())
        except (EOFError, OSError) as e:
            fut.set_exception(e)

    loop.add_reader(conn.fileno(), ready)
    return await fut


async def _worker_main(conn: Connection, host: str, port: int, path: str, n: int, opts: dict[str, Any]) -> None:
    w = Worker(host, port, path, n, opts)
    await w.connect_all()
    await asyncio.sleep(0.5)  # let immediate closes (e.g. a server over its connection limit) arrive
    conn.send(("connected", w.report()))
    while True:
        msg = await _recv(conn)
        if msg[0] == "go":
            await w.load(msg[1], msg[2])
            conn.send(("done", w.report()))
        elif msg[0] == "close":
            w.close_all()
            await asyncio.sleep(0.2)
            conn.send(("closed", None))
        elif msg[0] == "exit":
            return


def _worker(conn: Connection, host: str, port: int, path: str, n: int, opts: dict[str, Any]) -> None:
    """Entry point of a client process (forked)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the parent, which stops us
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    _set_pdeathsig()
    if os.getppid() == 1:
        return
    raise_nofile()
    try:
        asyncio.run(_worker_main(conn, host, port, path, n, opts))
    except (EOFError, BrokenPipeError):
        pass  # the parent went away


class Clients:
    """The client processes of one load run; the connections are split evenly over them."""

    def __init__(self, host: str, port: int, path: str, n: int, procs: int, opts: dict[str, Any]) -> None:
        ctx = multiprocessing.get_context("fork")
        self.procs: list[Any] = []
        self.pipes: list[Connection] = []
        procs = max(1, min(procs, n))
        share = [n // procs + (1 if i < n % procs else 0) for i in range(procs)]
        wopts = dict(opts, connect_concurrency=max(1, int(opts["connect_concurrency"]) // procs))
        for k in share:
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_worker, args=(child, host, port, path, k, wopts), daemon=True)
            p.start()
            child.close()
            self.procs.append(p)
            self.pipes.append(parent)

    @property
    def pids(self) -> list[int]:
        return [int(p.pid) for p in self.procs if p.pid is not None]

    def send(self, msg: tuple[Any, ...]) -> None:
        for c in self.pipes:
            c.send(msg)

    def gather(self, kind: str, deadline: float, tick: Callable[[], None] | None = None) -> list[Any]:
        """The next message of kind from every client, by deadline; tick() is called while waiting."""
        out: list[Any] = [None] * len(self.pipes)
        todo = set(range(len(self.pipes)))
        while todo:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"{len(todo)} client process(es) did not report {kind!r} in time")
            for i in list(todo):
                if self.pipes[i].poll(min(0.1, left / max(1, len(todo)))):
                    try:
                        msg = self.pipes[i].recv()
                    except EOFError:
                        raise RuntimeError(f"client process {self.procs[i].pid} exited "
                                           f"(status {self.procs[i].exitcode})") from None
                    if msg[0] != kind:
                        raise RuntimeError(f"client process sent {msg[0]!r}, expected {kind!r}")
                    out[i] = msg[1]
                    todo.discard(i)
                elif not self.procs[i].is_alive():
                    raise RuntimeError(f"client process {self.procs[i].pid} exited (status {self.procs[i].exitcode})")
            if tick is not None:
                tick()
        return out

    def stop(self) -> None:
        for c in self.pipes:
            with contextlib.suppress(OSError, ValueError):
                c.send(("exit",))
        deadline = time.monotonic() + 3
        for p in self.procs:
            p.join(max(0.0, deadline - time.monotonic()))
        for p in self.procs:
            if p.is_alive():
                p.terminate()
                p.join(3)
            if p.is_alive():
                p.kill()
                p.join(2)
        for c in self.pipes:
            c.close()


def merge(reports: list[dict[str, Any]]) -> dict[str, Any]:
    c: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    statuses: Counter[int] = Counter()
    arrays: dict[str, array.array[float]] = {k: array.array("d") for k in ("lat", "sent_rel", "send_lag", "connect_times")}
    for r in reports:
        for k, v in r["counters"].items():
            if k in ("connect_phase_ms", "load_wall_ms"):
                c[k] = max(c[k], v)
            else:
                c[k] += v
        errors.update(r["errors"])
        statuses.update(r["statuses"])
        for k, a in arrays.items():
            a.frombytes(r[k])
    return {"counters": c, "errors": errors, "statuses": statuses, "open": sum(r["open"] for r in reports),
            **{k: a.tolist() for k, a in arrays.items()}}


def lat_summary(lat: list[float]) -> dict[str, float | None]:
    s = sorted(lat)
    return {"p50_ms": ms(pct(s, 0.50)), "p99_ms": ms(pct(s, 0.99)), "p999_ms": ms(pct(s, 0.999)),
            "max_ms": ms(s[-1] if s else None), "mean_ms": ms(sum(s) / len(s) if s else None)}


# --------------------------------------------------------------------------- a load run


def cpu_of(pids: list[int]) -> float | None:
    vals = [cpu_seconds(p) for p in pids]
    if any(v is None for v in vals):
        return None
    return sum(v for v in vals if v is not None)


def load_run(label: str, host: str, port: int, path: str, n: int, interval: float, duration: float,
             procs: int, opts: dict[str, Any], watch: list[tuple[str, list[int]]], rss_pid: int | None,
             say: Callable[[str], None]) -> dict[str, Any]:
    """Open n connections, run the periodic load, close; CPU of every (name, pids) in watch during the load,
    and the RSS of rss_pid at each step (all connections open, sampled during the load, end, after close)."""
    out: dict[str, Any] = {"connections": n, "interval_s": interval, "duration_s": duration,
                           "client_processes": max(1, min(procs, n)), "rss": {}}
    wopts = dict(opts, interval=interval)
    clients = Clients(host, port, path, n, procs, wopts)
    try:
        t0 = time.monotonic()
        deadline = t0 + 30 + n / 50 + opts["connect_timeout"]  # generous: 50 connections/s would be very slow
        connected = merge(clients.gather("connected", deadline))
        cc = connected["counters"]
        out["connect"] = {
            "connected": cc["connected"], "connect_errors": cc["connect_errors"],
            "closed_before_load": cc["closed_before_load"], "open_at_load_start": connected["open"],
            "phase_s": round(time.monotonic() - t0, 2),
            "errors": dict(connected["errors"]),
            **{k.replace("_ms", "_connect_ms"): v for k, v in lat_summary(connected["connect_times"]).items()},
        }
        say(f"  [{label}] {cc['connected']} of {n} connected in {out['connect']['phase_s']:.1f} s "
            f"({cc['connect_errors']} errors, {cc['closed_before_load']} closed by the server since); "
            f"connect time p99 {fmt_ms((out['connect']['p99_connect_ms'] or 0) / 1000)}, "
            f"max {fmt_ms((out['connect']['max_connect_ms'] or 0) / 1000)}")
        if rss_pid is not None:
            time.sleep(1.0)  # the server may still be taking in the last accepts; nothing outside it tells when
            out["rss"]["all_open"] = proc_status(rss_pid)
            out["server_fds_all_open"] = open_fds(rss_pid)
        peak = {"VmRSS": 0}

        def sample() -> None:
            if rss_pid is not None:
                st = proc_status(rss_pid)
                if st.get("VmRSS", 0) > peak["VmRSS"]:
                    peak.update(st)

        start = time.monotonic() + 0.5
        end = start + duration
        say(f"  [{label}] load: GET {path} on each connection every {interval:g} s "
            f"(~{n / interval:.0f} req/s) for {duration:g} s")
        clients.send(("go", start, end))
        while time.monotonic() < start:  # the clients start their load at this moment
            time.sleep(0.01)
        cpu0 = {name: cpu_of(pids) for name, pids in watch}
        cl0 = cpu_of(clients.pids)
        sys0 = busy_cpu_seconds(interrupts=True)
        t_cpu0 = time.monotonic()
        cpu1: dict[str, float | None] = {}
        cl1: list[float | None] = []
        sys1: list[float] = []
        t_cpu1 = [0.0]

        def tick() -> None:
            sample()
            if not cpu1 and time.monotonic() >= end:  # the steady phase is over: read the CPU counters
                cpu1.update({name: cpu_of(pids) for name, pids in watch})
                cl1.append(cpu_of(clients.pids))
                sys1.append(busy_cpu_seconds(interrupts=True))
                t_cpu1[0] = time.monotonic()

        done = merge(clients.gather("done", end + opts["request_timeout"] + 30, tick))
        wall = (t_cpu1[0] or time.monotonic()) - t_cpu0
        out["cpu_pct"] = {}
        for name, _ in watch:
            a, b = cpu0.get(name), cpu1.get(name)
            out["cpu_pct"][name] = None if a is None or b is None else round(100 * (b - a) / wall, 1)
        cl_end = cl1[0] if cl1 else None
        out["cpu_pct"]["clients"] = None if cl0 is None or cl_end is None else round(100 * (cl_end - cl0) / wall, 1)
        if sys1:  # everything else this machine ran meanwhile (other benchmarks skew the latencies)
            ours = [v for v in out["cpu_pct"].values() if v is not None]
            out["cpu_pct"]["machine"] = round(100 * (sys1[0] - sys0) / wall, 1)
            out["cpu_pct"]["others"] = round(max(0.0, out["cpu_pct"]["machine"] - sum(ours)), 1)
        if rss_pid is not None:
            out["rss"]["peak_sampled"] = dict(peak) if peak["VmRSS"] else {}
            out["rss"]["end"] = proc_status(rss_pid)
            out["server_fds_end"] = open_fds(rss_pid)  # the client connections are still open
        dc = done["counters"]
        lat = done["lat"]
        out["requests"] = {
            "expected": round(n * duration / interval), "sent": dc["sent"], "ok": dc["ok"], "non200": dc["non200"],
            "statuses": {str(k): v for k, v in done["statuses"].items()},
            "timeouts": dc["timeouts"], "resets": dc["resets"], "bad_responses": dc["bad_responses"],
            "unexpected_responses": dc["unexpected_responses"], "unanswered_at_end": dc["unanswered_at_end"],
            "closed_idle": dc["closed_idle"], "reconnects": dc["reconnects"], "reconnect_errors": dc["reconnect_errors"],
            "sends_delayed": dc["sends_delayed"], "rate_per_s": round(len(lat) / duration, 1),
        }
        out["errors"] = dict(done["errors"])
        out["latency"] = lat_summary(lat)
        lag = sorted(done["send_lag"])
        out["client_send_lag"] = {"p99_ms": ms(pct(lag, 0.99)), "max_ms": ms(lag[-1] if lag else None)}
        # latency over time, in buckets of about a tenth of the run (at least 1 s)
        step = max(1.0, round(duration / 10))
        buckets: dict[int, list[float]] = {}
        last = max(0, math.ceil(duration / step) - 1)  # a send a hair after the end goes in the last bucket
        for t, v in zip(done["sent_rel"], lat, strict=True):
            buckets.setdefault(min(int(t // step), last), []).append(v)
        out["timeline"] = [{"from_s": k * step, "requests": len(v), **lat_summary(v)}
                           for k, v in sorted(buckets.items())]
        out["_lat"] = lat  # raw, for the caller; dropped from the JSON
        clients.send(("close",))
        clients.gather("closed", time.monotonic() + 30)
        if rss_pid is not None:
            time.sleep(1.0)  # as above, for the closes: then read its memory
            out["rss"]["after_close"] = proc_status(rss_pid)
        return out
    finally:
        clients.stop()


# --------------------------------------------------------------------------- options


def build_parser() -> argparse.ArgumentParser:
    ap = arg_parser(__doc__, "the app")
    ap.add_argument("--connections", type=int, default=10000, help="client connections (default 10000)")
    ap.add_argument("--interval", type=float, default=3.0,
                    help="seconds between two requests on one connection (default 3)")
    ap.add_argument("--duration", type=float, default=30.0,
                    help="seconds of load once every connection is open (default 30)")
    ap.add_argument("--path", default="/", help="request path (default /; with --url, the URL's path)")
    ap.add_argument("--client-procs", type=int, default=1,
                    help="client processes the connections are split over (default 1)")
    ap.add_argument("--connect-concurrency", type=int, default=200,
                    help="connects in progress at once, over all client processes (default 200)")
    ap.add_argument("--connect-timeout", type=float, default=10.0, help="seconds per connect (default 10)")
    ap.add_argument("--request-timeout", type=float, default=10.0,
                    help="a response slower than this counts as a timeout (default 10 s)")
    ap.add_argument("--app-connections", type=int, default=200,
                    help="connections for the direct app baseline (default 200)")
    ap.add_argument("--app-duration", type=float, default=10.0,
                    help="seconds of the direct app baseline; 0 = skip it (default 10)")
    ap.add_argument("--instances", type=int, default=2, help="app processes of the server (default 2)")
    ap.add_argument("--max-connections", type=int, default=None,
                    help="the server's --max-connections (default: connections + 100 when that is above "
                         f"passenger's default of {DEFAULT_MAX_CONNECTIONS}, else not given)")
    ap.add_argument("--ours-args", default="",
                    help="extra server arguments, appended to its command line (write --ours-args='--opt value')")
    ap.add_argument("--server-nofile", type=int, default=None,
                    help="start the server with this RLIMIT_NOFILE soft limit (default: inherited)")
    ap.add_argument("--url", default=None, help="target an already running server instead of starting one")
    ap.add_argument("--server-pid", type=int, default=None, help="with --url: the server's pid, for RSS and CPU")
    ap.add_argument("--startup-timeout", type=float, default=60, help="seconds for the server to be ready (default 60)")
    return ap


def default_options(**overrides: Any) -> argparse.Namespace:
    """The command line's defaults, with overrides (for callers such as bench/compare_bench.py)."""
    ns = build_parser().parse_args([])
    ns.verbose = overrides.pop("verbose", True)
    for k, v in overrides.items():
        if not hasattr(ns, k):
            raise TypeError(f"unknown option {k!r}")
        setattr(ns, k, v)
    return ns


# --------------------------------------------------------------------------- the benchmark


def start_server(args: argparse.Namespace, app: Path, tmp: Path, port: int, max_conns: int | None,
                 sessions: list[Session], say: Callable[[str], None]) -> Session:
    """Start twistd passenger (registered in sessions at once, so it is stopped whatever happens next)."""
    extra = [] if max_conns is None else ["--max-connections", str(max_conns)]
    argv = twistd_argv(args.twistd, tmp, app.parent, "python3 " + shlex.quote(app.name), port, args.instances,
                       extra + shlex.split(args.ours_args))
    say("server: " + " ".join(shlex.quote(a) for a in argv))
    kw: dict[str, Any] = {}
    if args.server_nofile:
        soft = args.server_nofile

        def limit() -> None:
            hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        kw["preexec_fn"] = limit
    # GET is checked by the caller (on --path), as it is for a server given by --url.
    server, _ = start_twistd(argv, tmp, port, args.instances, args.startup_timeout, sessions, check_path=None, **kw)
    return server


def app_baseline(args: argparse.Namespace, app: Path, tmp: Path, total_rate: float, opts: dict[str, Any],
                 account: Account | None, sessions: list[Session],
                 say: Callable[[str], None]) -> dict[str, Any] | None:
    """The app's own time: one app process, talked to directly at the rate one of the server's processes gets.

    It runs as `account` (the one the server runs its apps as; None: this script's user), with
    USER/LOGNAME/HOME/SHELL set as passenger sets them, so that ``python3`` is the same program.
    Who ran it is in the result under "_ids" (a set of Identity)."""
    if args.app_duration <= 0:
        return None
    rate = total_rate / max(1, args.instances)
    n = args.app_connections
    interval = n / rate
    port = free_port()
    env = dict(os.environ, PORT=str(port), PYTHONUNBUFFERED="1", PWD=str(app.parent))
    kw: dict[str, Any] = {}
    if account is not None:
        env.update(account.environment())
        kw = {"user": account.uid, "group": account.gid, "extra_groups": list(account.groups)}
    direct = start_app("direct app", "python3 " + shlex.quote(app.name), app.parent, env, tmp / "direct.log", **kw)
    sessions.append(direct)
    try:
        wait_listening(port, time.monotonic() + 20, direct)  # the shell has exec'd the app by now
        ident = identity(direct.pid)
        say(f"app baseline: one {app.name} (pid {direct.pid}: {ident.text()}) on {HOST}:{port}, {n} connections, "
            f"one request every {interval:.3f} s each (~{rate:.0f} req/s, the rate one of {args.instances} "
            f"server processes gets) for {args.app_duration:g} s")
        res = load_run("app", HOST, port, args.path, n, interval, args.app_duration, 1, opts,
                       [("app", [direct.pid])], None, say)
        res["_ids"] = {ident, identity(direct.pid)} - {Identity(None, None)}
    finally:
        for note in direct.stop(grace=10):
            say("cleanup: " + note)
        sessions.remove(direct)
    return res


def ids_text(ids: set[Identity]) -> list[str]:
    return sorted(i.text() for i in ids)


def check_apps(result: dict[str, Any], baseline: set[Identity] | None, server: set[Identity] | None,
               say: Callable[[str], None]) -> None:
    """result["app_processes"]: who ran the baseline app and the server's apps, and whether that was the same.

    "same" is None when one side is unknown (no baseline, or no server pid)."""
    ap = result["app_processes"]
    ap["baseline"] = None if baseline is None else ids_text(baseline)
    ap["server"] = None if server is None else ids_text(server)
    ap["same"] = None if not baseline or not server else baseline == server
    if ap["same"] is False:
        say(mismatch_warning(ap))
    elif ap["same"]:
        say(f"app processes: the baseline and the server's ran {', '.join(ap['server'])}")


def mismatch_warning(ap: dict[str, Any]) -> str:
    """The WARNING for result["app_processes"] when the two sides differed."""
    return ("WARNING: the server's app processes did not run the same program as the same user as the app\n"
            "         baseline, so \"app max + 100 ms\" compares different things:\n"
            f"           baseline: {', '.join(ap['baseline'])}\n"
            f"           server:   {', '.join(ap['server'])}")


def run(options: argparse.Namespace | dict[str, Any], indent: str = "") -> dict[str, Any]:
    """Run the benchmark; returns every figure (what --json writes).  Raises on errors; always cleans up.

    With verbose (the default), progress lines are printed, each starting with `indent`."""
    args = default_options(**options) if isinstance(options, dict) else options
    verbose = getattr(args, "verbose", True)

    def say(text: str) -> None:
        if verbose:
            print(indent + text.replace("\n", "\n" + indent), flush=True)

    app: Path = args.app.resolve()
    if args.app_duration > 0 and not app.is_file():
        raise RuntimeError(f"app not found: {app} (use --app PATH)")
    if args.url is None and not args.twistd.exists():
        raise RuntimeError(f"twistd not found at {args.twistd} (pass --twistd)")
    n = args.connections
    total_rate = n / args.interval
    opts = {"connect_timeout": args.connect_timeout, "request_timeout": args.request_timeout,
            "connect_concurrency": args.connect_concurrency}
    client_nofile = raise_nofile()  # inherited by the forked client processes (they raise it again anyway)
    account = app_account(app.parent)  # root: the server runs its apps as this account, so the baseline does too
    # max_connections: passenger's default (10000) leaves no room above 10,000 clients; give it some.
    max_conns = args.max_connections
    if max_conns is None and args.url is None and n + 100 > DEFAULT_MAX_CONNECTIONS:
        max_conns = n + 100
    result: dict[str, Any] = {
        "meta": {"connections": n, "interval_s": args.interval, "duration_s": args.duration,
                 "target_rate_per_s": round(total_rate, 1), "client_processes": args.client_procs,
                 "cpus": os.cpu_count(), "python": platform.python_version(), "app": str(app),
                 "url": args.url, "instances": args.instances, "ours_args": args.ours_args,
                 "max_connections": max_conns if max_conns is not None else
                 (f"default ({DEFAULT_MAX_CONNECTIONS})" if args.url is None else "unknown (--url)"),
                 "client_nofile": list(client_nofile)},
        "app_processes": {"account": account.name if account else None},
    }
    tmp = Path(tempfile.mkdtemp(prefix="passenger-conns-"))
    sessions: list[Session] = []
    ok = False
    old_handlers: dict[signal.Signals, Any] = {}
    in_main_thread = threading.current_thread() is threading.main_thread()

    def on_signal(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        if in_main_thread:  # elsewhere signals cannot be handled: leave them alone
            old_handlers[signal.SIGINT] = signal.getsignal(signal.SIGINT)
            for sig in (signal.SIGTERM, signal.SIGHUP):
                old_handlers[sig] = signal.signal(sig, on_signal)
        say(f"conns benchmark: {n} keep-alive connections, GET {args.path} on each every {args.interval:g} s "
            f"(~{total_rate:.0f} req/s) for {args.duration:g} s; {os.cpu_count()} CPUs, Python "
            f"{platform.python_version()}; client RLIMIT_NOFILE {client_nofile[0]}/{client_nofile[1]}; "
            f"logs in {tmp}")

        if account is not None:
            say(f"running as root: the app baseline runs as {account.name!r}, the account passenger runs the "
                "apps as (the app root's owner, never root)")
        result["app"] = app_baseline(args, app, tmp, total_rate, opts, account, sessions, say)
        baseline_ids: set[Identity] | None = result["app"].pop("_ids") if result["app"] else None
        server_ids: set[Identity] | None = None

        log_path: Path | None = None
        if args.url is None:
            port = free_port()
            host, path = HOST, args.path
            server = start_server(args, app, tmp, port, max_conns, sessions, say)
            log_path = tmp / "twistd.log"
            server_pid: int | None = server.pid
        else:
            u = urlsplit(args.url)
            if u.scheme != "http" or not u.hostname:
                raise RuntimeError(f"--url must be http://HOST:PORT/PATH, not {args.url!r}")
            host, port = u.hostname, u.port or 80
            path = (u.path or "/") + (f"?{u.query}" if u.query else "")
            server_pid = args.server_pid
        st, body = http_get(port, path, host=host)
        if st != 200:
            raise RuntimeError(f"GET {path} through the server answered {st}: {body[:200]!r}")
        srv: dict[str, Any] = {"pid": server_pid}
        if server_pid is not None:
            apps = children(server_pid)
            time.sleep(1.0)  # a reading "at rest": let the server finish its start-up work first
            soft, hard = nofile_limit(server_pid)
            need = n + 2 * args.instances + 64
            srv.update({"app_pids": apps, "rss_at_rest": proc_status(server_pid), "fds_at_rest": open_fds(server_pid),
                        "nofile_soft": soft, "nofile_hard": hard, "nofile_needed": need,
                        "nofile_ok": soft is None or soft >= need})
            say(f"server: twistd pid {server_pid} on {host}:{port}, app pids {apps}; "
                f"RSS at rest {fmt_kib(srv['rss_at_rest'].get('VmRSS'))}; open files limit {soft}/{hard} "
                f"(needs about {need}: {'ok' if srv['nofile_ok'] else 'TOO LOW'})")
            watch = [("server", [server_pid]), ("apps", apps)]
            server_ids = {identity(p) for p in apps} - {Identity(None, None)}
        else:
            say("server: no --server-pid, so no RSS, CPU or fd figures, and its app processes are unknown "
                "(the baseline's program and user are not checked against them)")
            watch = []
        check_apps(result, baseline_ids, server_ids, say)  # now, so a mismatch is said before the load
        log_start = len(full_log(log_path)) if log_path is not None else 0  # skip the start-up lines later
        result["server"] = srv

        lr = load_run("server", host, port, path, n, args.interval, args.duration, args.client_procs, opts,
                      watch, server_pid, say)
        result["through"] = lr
        if server_pid is not None:
            srv["alive_at_end"] = alive(server_pid, None)
            srv["app_pids_at_end"] = children(server_pid)
            if server_ids is not None:  # a process respawned during the load counts too
                server_ids |= {identity(p) for p in srv["app_pids_at_end"]} - {Identity(None, None)}
                check_apps(result, baseline_ids, server_ids, lambda _text: None)
            srv["rss_hwm_kib"] = proc_status(server_pid).get("VmHWM")
        if log_path is not None:
            lines = full_log(log_path)[log_start:]
            emfile = [ln for ln in lines if "EMFILE" in ln]  # Twisted logs each connection it drops for want of fds
            result["server_log_emfile_lines"] = len(emfile)
            result["server_log"] = [ln for ln in notable(lines, also=("Too many open files",)) if "EMFILE" not in ln]
        evaluate(result)
        if result["app_processes"]["same"] is False:
            ap = result["app_processes"]
            raise AppMismatch("the baseline app and the server's apps ran different programs or users "
                              f"(baseline: {', '.join(ap['baseline'])}; server: {', '.join(ap['server'])})", result)
        ok = True
        return result
    finally:
        for sig in old_handlers:  # a second Ctrl-C or TERM must not skip the cleanup
            signal.signal(sig, signal.SIG_IGN)
        try:
            for s in reversed(sessions):
                for note in s.stop(grace=10):
                    print("cleanup: " + note, file=sys.stderr)
        finally:
            for sig, h in old_handlers.items():
                signal.signal(sig, h if h is not None else signal.SIG_DFL)
            if args.keep_logs or not ok:
                print(f"logs kept in {tmp}", file=sys.stderr)
                result["logs"] = str(tmp)
            else:
                shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- verdicts and the report


def evaluate(result: dict[str, Any]) -> None:
    """Adds result["slow"] and result["targets"] (PASS/FAIL of the three targets)."""
    t = result["through"]
    lat: list[float] = t.pop("_lat")
    app = result.get("app")
    if app is not None:
        app.pop("_lat", None)
    app_max = (app["latency"]["max_ms"] or 0.0) / 1000 if app else 0.0
    app_p99 = (app["latency"]["p99_ms"] or 0.0) / 1000 if app else 0.0
    limit = app_max + SLOW_MARGIN_S
    result["slow"] = {
        "threshold_ms": ms(limit),
        "over_app_max_plus_100ms": sum(1 for v in lat if v > limit),
        "over_app_p99_plus_100ms": sum(1 for v in lat if v > app_p99 + SLOW_MARGIN_S),
        "over_100ms": sum(1 for v in lat if v > SLOW_MARGIN_S),
    }
    r, c = t["requests"], t["connect"]
    n = t["connections"]
    served = (c["connected"] == n and c["connect_errors"] == 0 and c["closed_before_load"] == 0
              and r["sent"] > 0 and r["ok"] == r["sent"] and r["non200"] == 0 and r["timeouts"] == 0
              and r["resets"] == 0 and r["bad_responses"] == 0 and r["closed_idle"] == 0
              and r["unanswered_at_end"] == 0 and r["sent"] >= 0.95 * r["expected"])
    srv = result["server"]
    hwm = srv.get("rss_hwm_kib")
    rss_ok = None if hwm is None else hwm * 1024 < RSS_LIMIT_MB * 1e6
    result["targets"] = {
        "all_served": served,
        "rss_under_300mb": rss_ok,
        "no_request_100ms_beyond_app": result["slow"]["over_app_max_plus_100ms"] == 0 and r["ok"] > 0,
    }


def _verdict(v: bool | None) -> str:
    return "n/a " if v is None else "PASS" if v else "FAIL"


def targets(result: dict[str, Any]) -> list[tuple[bool | None, str, str]]:
    """The three targets: (PASS/FAIL, or None when not measured; what; the figures behind it)."""
    tg, srv, s = result["targets"], result["server"], result["slow"]
    r, lat = result["through"]["requests"], result["through"]["latency"]
    hwm = srv.get("rss_hwm_kib")
    return [
        (tg["all_served"], "all served", "every connection opened and kept, every request answered 200 "
         f"({r['ok']} of {r['sent']} sent, ~{r['expected']} expected)"),
        (tg["rss_under_300mb"], f"server RSS < {RSS_LIMIT_MB} MB",
         f"VmHWM {'-' if hwm is None else f'{hwm * 1024 / 1e6:.1f} MB'}"),
        (tg["no_request_100ms_beyond_app"], f"no request slower than app max + 100 ms ({s['threshold_ms']} ms)",
         f"{s['over_app_max_plus_100ms']} slower, max {lat['max_ms']} ms"),
    ]


def report(result: dict[str, Any], with_targets: bool = True) -> str:
    """The text report; with_targets=False leaves out the Targets lines (a caller that lists them itself)."""
    out: list[str] = []
    m, t, srv = result["meta"], result["through"], result["server"]
    app = result.get("app")
    c, r, lat = t["connect"], t["requests"], t["latency"]
    out.append("")
    out.append(f"Results ({m['connections']} connections, one request every {m['interval_s']:g} s each, "
               f"{m['duration_s']:g} s of load, {m['client_processes']} client process(es), "
               f"server --max-connections {m['max_connections']})")
    out.append(f"  connections   requested {c['connected'] + c['connect_errors']}, connected {c['connected']}, "
               f"connect errors {c['connect_errors']}, closed by the server before the load {c['closed_before_load']}")
    out.append(f"                connect phase {c['phase_s']:.1f} s; connect time p50 {c['p50_connect_ms']} ms, "
               f"p99 {c['p99_connect_ms']} ms, max {c['max_connect_ms']} ms")
    out.append(f"  requests      expected ~{r['expected']}, sent {r['sent']}, 200 OK {r['ok']}, non-200 {r['non200']}"
               + (f" {r['statuses']}" if r["statuses"] else "")
               + f", timeouts {r['timeouts']}, resets {r['resets']}, bad responses {r['bad_responses']}, "
               f"unanswered {r['unanswered_at_end']}")
    out.append(f"                connections closed by the server while idle {r['closed_idle']}, reconnects "
               f"{r['reconnects']} ({r['reconnect_errors']} failed), sends delayed behind a slow response "
               f"{r['sends_delayed']}; answered {r['rate_per_s']:.0f} req/s")
    for k, v in sorted(t["errors"].items(), key=lambda kv: -kv[1])[:10]:
        out.append(f"                  {v} x {k}")
    out.append(f"  latency       through the server: p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms, "
               f"p99.9 {lat['p999_ms']} ms, max {lat['max_ms']} ms")
    if app:
        al = app["latency"]
        out.append(f"                app direct ({app['connections']} conns, ~{app['requests']['rate_per_s']:.0f} req/s): "
                   f"p50 {al['p50_ms']} ms, p99 {al['p99_ms']} ms, p99.9 {al['p999_ms']} ms, max {al['max_ms']} ms"
                   f" (app errors: {app['requests']['sent'] - app['requests']['ok']})")
    else:
        out.append("                app direct: not measured (--app-duration 0): its time counts as 0")
    ap = result.get("app_processes") or {}
    if ap.get("baseline") or ap.get("server"):
        out.append(f"  app processes baseline: {', '.join(ap.get('baseline') or ['not run'])}; "
                   f"server: {', '.join(ap.get('server') or ['unknown'])}"
                   + ("" if ap.get("same") is None else " (same)" if ap["same"] else " (DIFFERENT)"))
    s = result["slow"]
    out.append(f"  slow          slower than app max + 100 ms ({s['threshold_ms']} ms): {s['over_app_max_plus_100ms']}; "
               f"slower than app p99 + 100 ms: {s['over_app_p99_plus_100ms']}; slower than 100 ms: {s['over_100ms']}")
    out.append("  timeline      from   reqs      p50      p99      max   (by send time)")
    for b in t["timeline"]:
        out.append(f"                {b['from_s']:>4.0f}s {b['requests']:>6} {b['p50_ms']:>8.2f} {b['p99_ms']:>8.2f} "
                   f"{b['max_ms']:>8.2f}")
    lag = t["client_send_lag"]
    cpu = t.get("cpu_pct", {})
    out.append(f"  CPU (% of one core, during the load)  server {cpu.get('server', '-')}, apps {cpu.get('apps', '-')}, "
               f"client(s) {cpu.get('clients', '-')}, other processes {cpu.get('others', '-')} "
               f"(machine {cpu.get('machine', '-')} of {100 * (m['cpus'] or 1)})")
    out.append(f"                client send lag (due time to write) p99 {lag['p99_ms']} ms, max {lag['max_ms']} ms")
    if srv.get("pid") is not None:
        rs = t.get("rss", {})

        def rss(st: dict[str, int] | None) -> str:
            st = st or {}
            return f"VmRSS {fmt_kib(st.get('VmRSS'))}, VmHWM {fmt_kib(st.get('VmHWM'))}"
        out.append(f"  server RSS    at rest:             {rss(srv.get('rss_at_rest'))}")
        out.append(f"                all connections open: {rss(rs.get('all_open'))}")
        out.append(f"                peak during the load: {rss(rs.get('peak_sampled'))}")
        out.append(f"                end of the load:      {rss(rs.get('end'))}")
        out.append(f"                after closing all:    {rss(rs.get('after_close'))}")
        rest, allo = (srv.get("rss_at_rest") or {}).get("VmRSS"), (rs.get("all_open") or {}).get("VmRSS")
        end = (rs.get("end") or {}).get("VmRSS")
        if rest and allo and c["connected"]:
            per = (allo - rest) / c["connected"]
            per_end = (end - rest) / c["connected"] if end else None
            out.append(f"                per connection: {per:.1f} KiB idle, "
                       f"{'-' if per_end is None else f'{per_end:.1f}'} KiB after serving requests")
        fa, fe = t.get("server_fds_all_open"), t.get("server_fds_end")
        grew = f" (+{fe - fa}: connections to the apps opened during the load and kept)" if fa and fe and fe > fa else ""
        out.append(f"  server fds    at rest {srv.get('fds_at_rest')}, all connections open {fa}, end of the load "
                   f"{fe}{grew}; RLIMIT_NOFILE {srv.get('nofile_soft')}/{srv.get('nofile_hard')} "
                   f"(needs ~{srv.get('nofile_needed')}: {'ok' if srv.get('nofile_ok') else 'TOO LOW'})")
        if srv.get("alive_at_end") is False:
            out.append("  the server DIED during the run")
        elif srv.get("app_pids_at_end") is not None and srv.get("app_pids_at_end") != srv.get("app_pids"):
            out.append(f"  app processes changed: {srv.get('app_pids')} -> {srv.get('app_pids_at_end')}")
    log = result.get("server_log")
    if result.get("server_log_emfile_lines"):
        out.append(f"  server log: {result['server_log_emfile_lines']} lines about EMFILE (Twisted accepting and "
                   "closing connections for want of file descriptors)")
    if log:
        out.append(f"  server log (warnings, errors, process churn): {len(log)} lines")
        out.extend("    " + ln[:300] for ln in log[:20])
        if len(log) > 20:
            out.append(f"    ... {len(log) - 20} more")
    if with_targets:
        out += ["", "Targets", *(f"  {_verdict(passed)}  {what}: {detail}" for passed, what, detail in targets(result))]
    if ap.get("same") is False:
        out.append(mismatch_warning(ap))
    cl = cpu.get("clients")
    if cl is not None and cl > 85 * max(1, m["client_processes"]):
        out.append(f"NOTE: the client processes used {cl:.0f}% CPU: they may be the bottleneck "
                   "(try --client-procs 2).")
    busy = [(name, (run or {}).get("cpu_pct", {}).get("others")) for name, run in (("load", t), ("app baseline", app))]
    for name, others in busy:
        if others is not None and others > OTHERS_NOTE_PCT:
            out.append(f"NOTE: other processes used {others:.0f}% of a core during the {name}: the latencies are "
                       "skewed by them; run again on a quiet machine.")
    if (lag["p99_ms"] or 0) > 10:
        out.append(f"NOTE: the client wrote its requests late (send lag p99 {lag['p99_ms']} ms): it was short of CPU.")
    if srv.get("nofile_ok") is False:
        out.append("NOTE: the server's open files limit is below what the connections need.")
    return "\n".join(out)


def to_json(result: dict[str, Any]) -> str:
    def clean(o: Any) -> Any:
        if isinstance(o, dict):
            return {str(k): clean(v) for k, v in o.items() if not str(k).startswith("_")}
        if isinstance(o, list | tuple):
            return [clean(v) for v in o]
        return o
    return json.dumps(clean(result), indent=2) + "\n"


def main() -> int:
    ap = build_parser()
    args = ap.parse_args()
    args.verbose = True
    if args.connections < 1 or args.interval <= 0 or args.duration <= 0:
        ap.error("--connections, --interval and --duration must be positive")
    if args.url is None and args.server_pid is not None:
        ap.error("--server-pid goes with --url")
    mismatch = False
    try:
        result = run(args)
    except AppMismatch as e:  # every figure is there; the report ends with the WARNING
        result, mismatch = e.result, True
    except KeyboardInterrupt as e:
        print(f"\ninterrupted ({str(e) or 'Ctrl-C'})", file=sys.stderr)
        return 130
    except Exception as e:
        print(f"\nERROR: {e}", file=sys.stderr)
        return 1
    print(report(result))
    if args.json:
        args.json.write_text(to_json(result))
        print(f"wrote {args.json}")
    return 0 if not mismatch and all(v is not False for v in result["targets"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())

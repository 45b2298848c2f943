#!/usr/bin/env python3
"""Compare passenger ("ours") with Phusion Passenger 6 Standalone and nginx, side by side.

Run from the repository root:

    .venv/bin/python bench/compare_bench.py [--duration 10] [--scenario NAME] [--only NAME] [--json FILE]

Three contenders serve the same app (../shared/bench-apps/hello.py) with two app
processes each, one after another, each started fresh for every scenario:

  ours       twistd -n passenger --min-instances 2 --max-pool-size 2
  passenger  passenger start --engine=builtin (Phusion Passenger Standalone, Debian package)
  nginx      nginx in front of two hello.py processes the script starts (least_conn, keepalive)

For each scenario it reports req/s (or MiB/s), server CPU per request, latency
and errors, the ratios ours/passenger and ours/nginx, and PASS/FAIL against the
targets.  The two comparisons that are not between contenders are made from
interleaved runs, so that a machine whose speed drifts over tens of seconds
skews both sides alike: latency alternates the app talked to directly and ours
(app, ours, x3), features alternates plain ours and ours with every feature on
(x3), each pair of servers kept running throughout; the targets use the median
over the pairs.  The conns10k scenario (ours only) runs bench/conns_bench.py: 10,000
keep-alive connections, a request on each every 3 s, 30 s of load.  Everything
listens on 127.0.0.1 only; every process the script starts is stopped by pid on
exit, error, Ctrl-C and SIGTERM.  Exit status 1 means something went wrong, not
that a target was missed.  See bench/README.md.
"""

from __future__ import annotations

import argparse
import base64
import glob
import grp
import http.client
import math
import os
import platform
import re
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import conns_bench
from benchlib import (
    HOST,
    Account,
    Identity,
    LogWatcher,
    Session,
    WrkResult,
    add_wrk_options,
    app_account,
    arg_parser,
    busy_cpu_seconds,
    check_inputs,
    check_wrk_options,
    children,
    cmdline,
    comm,
    cpu_seconds,
    ensure_installed,
    failed,
    finish_wrk,
    fmt,
    fmt_ms,
    free_port,
    http_get,
    identity,
    ignore_signals,
    install_signal_handlers,
    notable,
    remove_logs,
    session_id,
    start_app,
    start_time,
    start_twistd,
    start_wrk,
    stop_all,
    table,
    twistd_argv,
    unix_http_get,
    wait_listening,
    write_json,
    wrk_argv,
)

CONTENDERS = ("ours", "passenger", "nginx")
INSTANCES = 2  # app processes for every contender

# Targets (checked for "ours"; a miss is reported, it does not change the exit status).
HELLO_MIN_RATIO = 2.0  # ours req/s >= 2 x Passenger's
HELLO_MAX_CPU_US = 45.0  # ours server CPU per request
MB_MIN_RATIO = 2.0  # ours MiB/s >= 2 x Passenger's
MB_MAX_CPU_US = 600.0  # ours server CPU per 1 MiB response
LATENCY_SLACK_MS = 1.0  # median over the pairs of (ours p99 - the app's own p99) <= this, at the same rate
FEATURES_MIN_SHARE = 0.90  # median over the pairs of ours+features req/s / plain ours req/s >= this

LATENCY_SHARE = 0.5  # the latency scenario runs at 50% of ours' max hello rate
BUSY_POLL_US = 500  # the latency scenario also runs ours with --busy-poll this many us (--busy-poll)
BUSY = "ours+busypoll"  # that side's name
LATENCY_CONNECTIONS = 50
RATE_TOLERANCE = 0.10  # the achieved rate must be within 10% of the one asked for
OTHER_CPU_WARN_PCT = 10.0  # warn when processes outside the run used more than this % of a core

# latency and features: PAIRS pairs of interleaved runs (A, B, A, B, ...), each --duration / PAIRS
# seconds rounded up, at least PAIR_MIN_S, after one warm-up of each side.
PAIRS = 3
PAIR_MIN_S = 3

# conns10k (ours only, bench/conns_bench.py): its three targets are conns_bench's.
CONNS_CONNECTIONS = 10000  # concurrent keep-alive connections
CONNS_INTERVAL_S = 3.0  # a request on each one this often
CONNS_DURATION_S = 30.0  # seconds of load, whatever --duration says

# Passenger Standalone, started so that it needs no network and nothing compiled.
PASSENGER_OFFLINE_FLAGS = ["--engine=builtin", "--environment", "production", "--no-install-runtime",
                           "--no-compile-runtime", "--disable-security-update-check",
                           "--disable-anonymous-telemetry"]

# A wrk script that sends at a fixed rate: each thread hands out send times INTERVAL ms
# apart; a connection asks for the next free one before each request (wrk's delay()).
# If every connection is busy the schedule slips rather than bursts, so the achieved
# rate drops below the one asked for, which the scenario checks.
PACER_LUA = """\
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk_id, bench_timespec *tp);
]]
local ts = ffi.new("bench_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, ts)  -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end
local interval = %(interval_ms).6f
local next_slot = 0
function delay()
  local now = now_ms()
  local slot = math.max(next_slot, now)
  next_slot = slot + interval
  return slot - now
end
"""


# --------------------------------------------------------------------------- results


@dataclass
class Result:
    scenario: str
    contender: str  # ours | passenger | nginx | app (the apps without a proxy) | ours+features
    wrk: WrkResult
    server_cpu_s: float | None = None  # utime+stime of the server processes during the measured run
    apps_cpu_s: float | None = None  # the same for the app processes
    target_rps: float | None = None  # latency: the rate asked for
    other_cpu_pct: float | None = None  # CPU used by everything else on the machine, % of one core
    server_pids: dict[int, str] = field(default_factory=dict)  # what server_cpu_s covers
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    runs: list[Result] = field(default_factory=list)  # the interleaved runs this row sums up (latency, features)

    @property
    def cpu_us(self) -> float | None:
        """Server CPU per request (per response for 1mb), in microseconds."""
        if self.server_cpu_s is None or not self.wrk.requests:
            return None
        return self.server_cpu_s * 1e6 / self.wrk.requests

    @property
    def apps_cpu_us(self) -> float | None:
        if self.apps_cpu_s is None or not self.wrk.requests:
            return None
        return self.apps_cpu_s * 1e6 / self.wrk.requests

    @property
    def rate_off(self) -> float | None:
        """Achieved rate / asked rate - 1 (latency runs)."""
        if not self.target_rps:
            return None
        return self.wrk.rps / self.target_rps - 1

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["wrk"]["errors"] = self.wrk.errors
        d["cpu_us_per_request"] = self.cpu_us
        d["apps_cpu_us_per_request"] = self.apps_cpu_us
        d["rate_off"] = self.rate_off
        d["server_pids"] = {str(k): v for k, v in self.server_pids.items()}
        d["runs"] = [r.to_json() for r in self.runs]
        return d


def _sum(values: Sequence[float | None]) -> float | None:
    return None if any(v is None for v in values) else sum(v for v in values if v is not None)


def _median(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def combine(runs: list[Result]) -> Result:
    """One table row for several runs of the same side (the interleaved runs of latency and features).

    Requests, seconds, errors and CPU are summed, so req/s, MiB/s and CPU per request are
    the sums' quotients; p50 and p99 are the median of the runs'; "other CPU" is the
    runs' average, weighted by their length."""
    ws = [r.wrk for r in runs]
    seconds = sum(w.seconds for w in ws)
    requests = sum(w.requests for w in ws)
    w = WrkResult(
        requests=requests, seconds=seconds, rps=requests / seconds if seconds else 0.0,
        mib_per_s=sum(w.mib_per_s * w.seconds for w in ws) / seconds if seconds else 0.0,
        p50_ms=_median([w.p50_ms for w in ws]), p99_ms=_median([w.p99_ms for w in ws]),
        connect_errors=sum(w.connect_errors for w in ws), read_errors=sum(w.read_errors for w in ws),
        write_errors=sum(w.write_errors for w in ws), timeouts=sum(w.timeouts for w in ws),
        non_2xx_3xx=sum(w.non_2xx_3xx for w in ws), exit_status=max(w.exit_status for w in ws))
    others = [(r.other_cpu_pct, r.wrk.seconds) for r in runs if r.other_cpu_pct is not None]
    weight = sum(s for _, s in others)
    first = runs[0]
    return Result(first.scenario, first.contender, w,
                  server_cpu_s=_sum([r.server_cpu_s for r in runs]), apps_cpu_s=_sum([r.apps_cpu_s for r in runs]),
                  target_rps=first.target_rps,
                  other_cpu_pct=sum(p * s for p, s in others) / weight if weight else None,
                  server_pids={k: v for r in runs for k, v in r.server_pids.items()}, runs=list(runs))


def pair_seconds(duration: float) -> int:
    """Length of each interleaved run: --duration / PAIRS, rounded up, at least PAIR_MIN_S."""
    return max(PAIR_MIN_S, math.ceil(duration / PAIRS))


def features_ratios(plain: Result | None, feat: Result | None) -> list[float]:
    """ours+features req/s / plain ours req/s of each interleaved pair."""
    if plain is None or feat is None:
        return []
    return [f.wrk.rps / p.wrk.rps for p, f in zip(plain.runs, feat.runs, strict=False) if p.wrk.rps]


def latency_diffs(app: Result | None, ours: Result | None) -> list[float]:
    """ours p99 - app p99 (ms) of each interleaved pair."""
    if app is None or ours is None:
        return []
    return [o.wrk.p99_ms - a.wrk.p99_ms for a, o in zip(app.runs, ours.runs, strict=False)
            if o.wrk.p99_ms is not None and a.wrk.p99_ms is not None]


@dataclass
class Check:
    scenario: str
    what: str
    passed: bool | None  # None: not measured in this run
    detail: str
    reference: bool = False  # a figure to compare the targets with, not a target

    def line(self) -> str:
        verdict = "ref " if self.reference else {True: "PASS", False: "FAIL", None: "n/a "}[self.passed]
        return f"  {verdict}  {self.scenario:<8} {self.what}: {self.detail}"


# --------------------------------------------------------------------------- a running contender


@dataclass
class Server:
    """One started contender: where it listens and which processes are the server and which the apps."""

    name: str
    port: int
    sessions: list[Session]
    server_pids: Callable[[], dict[int, str]]  # pid -> description; CPU is counted for these
    app_pids: Callable[[], list[int]]
    log_notes: Callable[[], list[str]]  # warnings and errors logged since the last call
    info: dict[str, Any] = field(default_factory=dict)


def describe(pid: int) -> str:
    """Short name of a process for the verbose listing: its command line, or comm."""
    argv = cmdline(pid)
    text = " ".join(argv) if argv else comm(pid)
    return text if len(text) <= 60 else text[:57] + "..."


class Bench:
    """What every start and scenario needs: options, tools, the temp dir, the processes alive, the results."""

    def __init__(self, args: argparse.Namespace, app: Path, tools: dict[str, str], tmp: Path) -> None:
        self.args = args
        self.app = app
        self.tools = tools
        self.tmp = tmp
        self.app_command = "python3 " + shlex.quote(app.name)
        self.app_argv = shlex.split(self.app_command)  # what an app process's cmdline looks like
        self.account: Account | None = app_account(app.parent)
        self.sessions: list[Session] = []  # everything started and not yet stopped
        self.results: list[Result] = []
        self.problems: list[str] = []  # something went wrong: exit status 1
        self.app_ids: dict[str, set[Identity]] = {}  # contender -> who ran its apps
        self.ours_hello: Result | None = None  # the plain hello run of ours, for the latency scenario's rate
        self.commands: dict[str, str] = {}  # contender -> command line (for the JSON)
        self.extras: dict[str, Any] = {}  # figures of scenarios that are not rows of the table (conns10k)
        self.contenders = [c for c in CONTENDERS if not args.only or c in args.only]
        self._seq = 0

    def verbose(self, text: str) -> None:
        if self.args.verbose:
            print("    " + text.replace("\n", "\n    "), flush=True)

    def rundir(self, scenario: str, contender: str) -> Path:
        self._seq += 1
        d = self.tmp / f"{self._seq:02d}-{scenario}-{contender}"
        d.mkdir()
        return d

    def app_env(self, port: int) -> dict[str, str]:
        """Environment of an app process the script starts itself (as passenger would start it)."""
        env = dict(os.environ, PORT=str(port), PYTHONUNBUFFERED="1", PWD=str(self.app.parent))
        if self.account is not None:
            env.update(self.account.environment())
        return env

    def as_account(self) -> dict[str, Any]:
        """Popen arguments that run a process as the account the servers run their apps as."""
        if self.account is None:
            return {}
        return {"user": self.account.uid, "group": self.account.gid, "extra_groups": list(self.account.groups)}

    def stop(self, server: Server) -> None:
        for s in reversed(server.sessions):
            for note in s.stop(grace=10):
                print(f"  {server.name}: {note}", flush=True)
            if s in self.sessions:
                self.sessions.remove(s)

    @contextmanager
    def running(self, contender: str, scenario: str, extra: list[str] | None = None,
                label: str | None = None) -> Iterator[Server]:
        """Start a contender fresh, check its apps, yield it, and stop it whatever happens.

        label: the name ours' command line is listed under (default ours, or ours+features with extra)."""
        rundir = self.rundir(scenario, label or contender)
        t0 = time.monotonic()
        if contender == "ours":
            server = start_ours(self, rundir, extra or [], label or ("ours+features" if extra else "ours"))
        elif contender == "passenger":
            server = start_passenger(self, rundir)
        elif contender == "nginx":
            server = start_nginx(self, rundir)
        else:
            raise ValueError(contender)
        try:
            apps = server.app_pids()
            if len(apps) != INSTANCES:
                raise RuntimeError(f"{contender}: expected {INSTANCES} app processes, found {apps}")
            ids = {identity(p) for p in apps}
            self.app_ids.setdefault(contender, set()).update(ids)
            self.verbose(f"{contender} ready in {time.monotonic() - t0:.1f}s on {HOST}:{server.port}; apps "
                         f"{apps} ({', '.join(sorted(i.text() for i in ids))})")
            server.log_notes()  # forget the start-up lines
            yield server
        finally:
            self.stop(server)

    def show(self, r: Result, prefix: str = "  ") -> None:
        """Print a result's line and its notes (a WARNING note is added when other processes were busy)."""
        w = r.wrk
        line = f"{prefix}{r.contender:<13} {w.rps:>9.1f} req/s"
        if r.scenario == "1mb":
            line += f" {w.mib_per_s:>7.1f} MiB/s"
        if r.target_rps:
            line += f" (asked {r.target_rps:.0f}, {100 * (r.rate_off or 0):+.1f}%)"
        line += (f"  CPU {fmt(r.cpu_us, '.1f')} us/req  apps {fmt(r.apps_cpu_us, '.1f')} us/req"
                 f"  p50 {fmt_ms(w.p50_ms)}  p99 {fmt_ms(w.p99_ms)}  errors {w.error_text()}")
        print(line, flush=True)
        if r.other_cpu_pct is not None and r.other_cpu_pct > OTHER_CPU_WARN_PCT:
            what = "these runs" if r.runs else "this run"
            r.notes.append(f"WARNING: other processes on this machine used {r.other_cpu_pct:.0f}% of a core "
                           f"during {what}; the figures are not reliable")
        for note in r.notes:
            print(f"{' ' * len(prefix)}  {note}", flush=True)

    def record(self, r: Result) -> None:
        """Add a row to the table (and print it); wrk errors make the exit status 1."""
        self.results.append(r)
        self.show(r)
        w = r.wrk
        if w.errors or w.exit_status:
            self.problems.append(f"{r.scenario}/{r.contender}: wrk reported errors ({w.error_text()})")

    def find(self, scenario: str, contender: str) -> Result | None:
        for r in reversed(self.results):
            if r.scenario == scenario and r.contender == contender:
                return r
        return None


# --------------------------------------------------------------------------- starting the contenders


def start_app_pair(b: Bench, rundir: Path, label: str) -> tuple[list[Session], list[int]]:
    """Two hello.py processes, started as passenger starts them (sh -c exec, PORT), each in its own session."""
    sessions: list[Session] = []
    ports: list[int] = []
    for i in range(INSTANCES):
        port = free_port()
        s = start_app(f"{label} app {i + 1}", b.app_command, b.app.parent, b.app_env(port),
                      rundir / f"app{i + 1}.log", **b.as_account())
        b.sessions.append(s)
        sessions.append(s)
        ports.append(port)
    for s, port in zip(sessions, ports, strict=True):
        wait_listening(port, time.monotonic() + 20, s)
        st, body = http_get(port, "/")
        if st != 200:
            raise RuntimeError(f"{s.label}: GET / answered {st}: {body[:200]!r}")
    return sessions, ports


def start_ours(b: Bench, rundir: Path, extra: list[str], label: str) -> Server:
    """twistd -n passenger with 2 app processes; ready when the log shows both ready."""
    port = free_port()
    registry = rundir / "registry"  # its instance directory (admin password, API socket) goes here
    registry.mkdir()
    argv = twistd_argv(b.args.twistd, rundir, b.app.parent, b.app_command, port, INSTANCES,
                       ["--instance-registry-dir", str(registry), *extra, *shlex.split(b.args.ours_args)])
    b.commands.setdefault(label, shlex.join(argv))
    b.verbose("ours: " + shlex.join(argv))
    server, watcher = start_twistd(argv, rundir, port, INSTANCES, b.args.startup_timeout, b.sessions)
    return Server("ours", port, [server],
                  server_pids=lambda: {server.pid: "twistd " + describe(server.pid)[:40]},
                  app_pids=lambda: children(server.pid),
                  log_notes=lambda: notable(watcher.new_lines()),
                  info={"pid": server.pid, "log": str(rundir / "twistd.log"), "registry": registry})


def passenger_notable(lines: list[str]) -> list[str]:
    """Passenger log lines worth showing: warnings, errors, critical (not app output)."""
    return [ln for ln in lines if ln.startswith(("[ W ", "[ E ", "[ C ")) or "Traceback" in ln]


def start_passenger(b: Bench, rundir: Path) -> Server:
    """Phusion Passenger Standalone (builtin engine) in the app's directory, offline, files in rundir.

    Its watchdog daemonizes into a session of its own (so does the temp-dir toucher);
    both are adopted by the frontend's Session, so that stopping it sweeps them up.
    Ready when GET / answers 200 and the pool (over the core API socket) and the
    process table both show 2 app processes."""
    port = free_port()
    pdir = rundir / "passenger"
    for d in (pdir, pdir / "registry", pdir / "tmp"):
        d.mkdir()
    log_path = pdir / "passenger.log"
    log_path.touch()  # the core, which runs as --user, must be able to write the log the watchdog opens
    argv = [b.tools["passenger"], "start", *PASSENGER_OFFLINE_FLAGS,
            "--app-start-command", b.app_command,
            "--min-instances", str(INSTANCES), "--max-pool-size", str(INSTANCES),
            "--address", HOST, "--port", str(port),
            "--log-file", str(log_path), "--pid-file", str(pdir / "passenger.pid"),
            "--instance-registry-dir", str(pdir / "registry")]
    if b.account is not None:  # root: run all of Passenger as the account ours runs its apps as
        argv += ["--user", b.account.name]
        for p in (pdir, pdir / "registry", pdir / "tmp", log_path):
            os.chown(p, b.account.uid, b.account.gid)
    b.commands.setdefault("passenger", f"cd {shlex.quote(str(b.app.parent))} && TMPDIR={pdir / 'tmp'} "
                          + shlex.join(argv))
    b.verbose(f"passenger (in {b.app.parent}): " + shlex.join(argv))
    with open(pdir / "stdout.log", "wb") as out:
        front = Session("passenger start", argv, cwd=b.app.parent, stdout=out, stderr=subprocess.STDOUT,
                        env=dict(os.environ, TMPDIR=str(pdir / "tmp")))
    b.sessions.append(front)
    watcher = LogWatcher(log_path)

    def adopt_daemons() -> int | None:
        """Adopt the watchdog's and the temp-dir toucher's sessions; the watchdog's pid once known."""
        wd: int | None = None
        pidfiles = [pdir / "passenger.pid", *map(Path, glob.glob(str(pdir / "tmp" / "*" / "temp_dir_toucher.pid")))]
        for i, pidfile in enumerate(pidfiles):
            try:
                pid = int(pidfile.read_text().strip())
            except (OSError, ValueError):
                continue
            # Only a PassengerAgent started after our frontend is ours (not a stale pid).
            if comm(pid) == "PassengerAgent" and (start_time(pid) or 0) >= (front.started or 0):
                sid = session_id(pid)
                if sid is not None:
                    front.adopt(sid)
                if i == 0:
                    wd = pid
        return wd

    def app_pids() -> list[int]:
        return sorted(p for p in front.members() if cmdline(p) == b.app_argv)

    def server_pids() -> dict[int, str]:
        apps = set(app_pids())
        return {p: describe(p) for p in sorted(front.members()) if p not in apps}

    deadline = time.monotonic() + b.args.startup_timeout
    state = "starting"
    while True:
        if not front.running():
            raise RuntimeError(f"passenger start exited with status {front.proc.returncode}:\n"
                               + (pdir / "stdout.log").read_text(errors="replace")[-3000:])
        if time.monotonic() > deadline:
            raise RuntimeError(f"Passenger was not ready after {b.args.startup_timeout:g}s ({state}); log:\n"
                               + "\n".join(log_path.read_text(errors="replace").splitlines()[-30:]))
        adopt_daemons()
        time.sleep(0.2)
        try:
            st, _ = http_get(port, "/", timeout=5)
        except (OSError, http.client.HTTPException):
            state = "not answering yet"
            continue
        if st != 200:
            state = f"GET / answered {st}"
            continue
        apps = app_pids()
        pool = None
        sockets = glob.glob(str(pdir / "registry" / "passenger.*" / "agents.s" / "core_api"))
        if sockets:
            try:
                _, xml = unix_http_get(sockets[0], "/pool.xml")
                m = re.search(rb"<process_count>(\d+)</process_count>", xml)
                pool = int(m.group(1)) if m else None
            except (OSError, http.client.HTTPException):
                pool = None
        state = f"{len(apps)} app processes, pool says {pool}"
        if len(apps) == INSTANCES and pool == INSTANCES:
            break
    wd = adopt_daemons()
    return Server("passenger", port, [front], server_pids=server_pids, app_pids=app_pids,
                  log_notes=lambda: passenger_notable(watcher.new_lines()),
                  info={"frontend_pid": front.pid, "watchdog_pid": wd, "log": str(log_path)})


NGINX_CONF = """\
daemon off;
master_process on;
worker_processes auto;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
{user}
events {{
    worker_connections 1024;
}}

http {{
    access_log off;
    client_body_temp_path {d}/client_body_temp;
    proxy_temp_path {d}/proxy_temp;
    fastcgi_temp_path {d}/fastcgi_temp;
    uwsgi_temp_path {d}/uwsgi_temp;
    scgi_temp_path {d}/scgi_temp;

    upstream app {{
        least_conn;
        server {host}:{p1};
        server {host}:{p2};
        keepalive 64;
    }}

    server {{
        listen {host}:{port};
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


def start_nginx(b: Bench, rundir: Path) -> Server:
    """nginx (master + workers) in front of two hello.py processes that the script starts."""
    app_sessions, ports = start_app_pair(b, rundir, "nginx")
    port = free_port()
    ndir = rundir / "nginx"
    ndir.mkdir()
    user = ""
    if b.account is not None:  # root: workers run as the account the apps run as
        user = f"user {b.account.name} {_group_name(b.account.gid)};"
    conf = ndir / "nginx.conf"
    conf.write_text(NGINX_CONF.format(d=ndir, user=user, host=HOST, p1=ports[0], p2=ports[1], port=port))
    argv = [b.tools["nginx"], "-c", str(conf), "-p", str(ndir) + "/", "-e", str(ndir / "error.log")]
    b.commands.setdefault("nginx", shlex.join(argv))
    b.verbose("nginx: " + shlex.join(argv) + "\n" + conf.read_text())
    with open(ndir / "stdout.log", "wb") as out:
        master = Session("nginx", argv, cwd=ndir, stdout=out, stderr=subprocess.STDOUT)
    b.sessions.append(master)
    wait_listening(port, time.monotonic() + b.args.startup_timeout, master)
    st, body = http_get(port, "/")
    if st != 200:
        raise RuntimeError(f"nginx: GET / answered {st}: {body[:200]!r}")
    watcher = LogWatcher(ndir / "error.log")
    keys = ("[warn]", "[error]", "[crit]", "[alert]", "[emerg]")
    return Server("nginx", port, [*app_sessions, master],
                  server_pids=lambda: {p: describe(p) for p in sorted(master.members())},
                  app_pids=lambda: [s.pid for s in app_sessions],
                  log_notes=lambda: [ln for ln in watcher.new_lines() if any(k in ln for k in keys)],
                  info={"master_pid": master.pid, "app_ports": ports, "conf": str(conf)})


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


# --------------------------------------------------------------------------- measuring


def cpu_of(pids: list[int]) -> dict[int, float | None]:
    return {p: cpu_seconds(p) for p in pids}


def cpu_delta(before: dict[int, float | None], after: dict[int, float | None], notes: list[str],
              what: str) -> float | None:
    """CPU the processes used between two readings; processes that came or went are noted."""
    total = 0.0
    for p, c0 in before.items():
        c1 = after.get(p)
        if c0 is None or c1 is None:
            notes.append(f"{what}: pid {p} went away during the run; its CPU is not counted")
            continue
        total += c1 - c0
    for p, c1 in after.items():
        if p not in before and c1 is not None:
            notes.append(f"{what}: pid {p} ({describe(p)}) appeared during the run; all its CPU is counted")
            total += c1
    return total


class Load:
    """Busy CPU of the whole machine around a measured run, so that a run disturbed by other
    processes (another benchmark, a build) can be flagged: other = all - server - apps - wrk - us."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.busy0 = busy_cpu_seconds()
        self.kids0 = self._kids()
        self.own0 = self._own()

    @staticmethod
    def _kids() -> float:
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk, once reaped
        return ru.ru_utime + ru.ru_stime

    @staticmethod
    def _own() -> float:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return ru.ru_utime + ru.ru_stime

    def other_pct(self, accounted: float) -> float:
        wall = time.monotonic() - self.t0
        other = (busy_cpu_seconds() - self.busy0) - (self._kids() - self.kids0) - (self._own() - self.own0) - accounted
        return max(0.0, 100.0 * other / wall) if wall > 0 else 0.0


def pacer_script(b: Bench, rate_per_thread: float) -> Path:
    """A wrk Lua script sending rate_per_thread requests per second from each wrk thread."""
    path = b.tmp / f"pacer-{rate_per_thread:.3f}.lua"
    path.write_text(PACER_LUA % {"interval_ms": 1000.0 / rate_per_thread})
    return path


def warm_up(b: Bench, server: Server, path: str, connections: int, *, threads: int = 2,
            rate: float | None = None, wrk_extra: list[str] | None = None) -> None:
    """One wrk run of --warmup seconds, not measured (none with --warmup 0)."""
    args = b.args
    if args.warmup > 0:
        script = pacer_script(b, rate / threads) if rate else None
        warm = start_wrk(wrk_argv(b.tools["wrk"], f"http://{HOST}:{server.port}{path}", threads, connections,
                                  args.warmup, args.wrk_timeout, script) + (wrk_extra or []))
        finish_wrk(warm, args.warmup, args.wrk_timeout)


def measure(b: Bench, server: Server, scenario: str, path: str, connections: int, *, threads: int = 2,
            rate: float | None = None, wrk_extra: list[str] | None = None,
            during: Callable[[threading.Event], dict[str, Any]] | None = None,
            contender: str | None = None, seconds: float | None = None, warm: bool = True) -> Result:
    """Warm up (unless not `warm`), then one measured wrk run with the server's and the apps' CPU read around it.

    rate: fixed total request rate (paced with PACER_LUA), else as fast as possible.
    during: runs in a thread while the measured run goes on; gets an Event set when it ends.
    seconds: length of the measured run (default --duration)."""
    url = f"http://{HOST}:{server.port}{path}"
    script = pacer_script(b, rate / threads) if rate else None
    extra = wrk_extra or []
    args = b.args
    seconds = seconds or args.duration
    if warm:
        warm_up(b, server, path, connections, threads=threads, rate=rate, wrk_extra=wrk_extra)
    spids = server.server_pids()
    apids = server.app_pids()
    s0, a0 = cpu_of(list(spids)), cpu_of(apids)
    load = Load()
    stop = threading.Event()
    side: dict[str, Any] = {}
    thread = None
    if during is not None:
        thread = threading.Thread(target=lambda: side.update(during(stop)), daemon=True)
        thread.start()
    try:
        p = start_wrk(wrk_argv(b.tools["wrk"], url, threads, connections, seconds, args.wrk_timeout,
                               script) + extra)
        res, out = finish_wrk(p, seconds, args.wrk_timeout)
    finally:
        stop.set()
        if thread is not None:
            thread.join(timeout=10)
    s1 = cpu_of(list(server.server_pids()))
    a1 = cpu_of(server.app_pids())
    notes: list[str] = []
    r = Result(scenario, contender or server.name, res, target_rps=rate, server_pids=spids, extra=side)
    r.server_cpu_s = cpu_delta(s0, s1, notes, "server")
    r.apps_cpu_s = cpu_delta(a0, a1, notes, "apps")
    r.other_cpu_pct = load.other_pct((r.server_cpu_s or 0) + (r.apps_cpu_s or 0))
    r.notes = notes + [f"log: {ln}" for ln in server.log_notes()[:20]]
    b.verbose(f"{r.contender}: server CPU counted for " + ", ".join(f"{p} {n}" for p, n in spids.items()))
    if args.verbose > 1:
        b.verbose(out)
    return r


# --------------------------------------------------------------------------- scenarios


def scenario_hello(b: Bench) -> None:
    """GET / with wrk -t2 -c50: req/s and server CPU per request."""
    for c in b.contenders:
        with b.running(c, "hello") as s:
            r = measure(b, s, "hello", "/", 50)
        b.record(r)
        if c == "ours":
            b.ours_hello = r


def scenario_1mb(b: Bench) -> None:
    """GET /1mb with wrk -t2 -c10: MiB/s and server CPU per response."""
    for c in b.contenders:
        with b.running(c, "1mb") as s:
            b.record(measure(b, s, "1mb", "/1mb", 10))


def ours_hello(b: Bench, why: str) -> Result:
    """Ours' plain hello run of this invocation; measured now if the hello scenario did not run it."""
    if b.ours_hello is None:
        print(f"  (no hello run of ours yet; measuring one for {why})", flush=True)
        with b.running("ours", "hello") as s:
            b.ours_hello = measure(b, s, "hello", "/", 50)
        b.record(b.ours_hello)
    return b.ours_hello


@dataclass
class DirectApps:
    """Two hello.py processes the script started itself, talked to directly (the latency scenario's "app")."""

    sessions: list[Session]
    ports: list[int]


@contextmanager
def direct_apps(b: Bench) -> Iterator[DirectApps]:
    """Start the two hello.py processes, yield them, and stop them whatever happens."""
    sessions, ports = start_app_pair(b, b.rundir("latency", "app"), "direct")
    try:
        b.app_ids.setdefault("app", set()).update(identity(s.pid) for s in sessions)
        yield DirectApps(sessions, ports)
    finally:
        for s in sessions:
            for note in s.stop(grace=10):
                print(f"  app: {note}", flush=True)
            if s in b.sessions:
                b.sessions.remove(s)


def direct_wrk(b: Bench, apps: DirectApps, rate: float, seconds: float) -> list[WrkResult]:
    """Two wrk at once, one per hello.py process, each with half the connections and half the rate."""
    per = LATENCY_CONNECTIONS // INSTANCES
    script = pacer_script(b, rate / INSTANCES)
    args = b.args
    procs = [start_wrk(wrk_argv(b.tools["wrk"], f"http://{HOST}:{p}/", 1, per, seconds, args.wrk_timeout, script))
             for p in apps.ports]
    try:
        return [finish_wrk(p, seconds, args.wrk_timeout)[0] for p in procs]
    finally:
        for p in procs:  # only if interrupted or one of them failed to finish
            if p.poll() is None:
                p.kill()
                p.wait()


def measure_direct(b: Bench, apps: DirectApps, rate: float, seconds: float) -> Result:
    """The app's own latency at `rate` (no warm-up: see direct_wrk); p50 and p99 are the larger of the two."""
    pids = [s.pid for s in apps.sessions]
    a0 = cpu_of(pids)
    load = Load()
    outs = direct_wrk(b, apps, rate, seconds)
    a1 = cpu_of(pids)
    w = WrkResult(
        requests=sum(o.requests for o in outs), seconds=max(o.seconds for o in outs),
        rps=sum(o.rps for o in outs), mib_per_s=sum(o.mib_per_s for o in outs),
        p50_ms=max((o.p50_ms for o in outs if o.p50_ms is not None), default=None),
        p99_ms=max((o.p99_ms for o in outs if o.p99_ms is not None), default=None),
        connect_errors=sum(o.connect_errors for o in outs), read_errors=sum(o.read_errors for o in outs),
        write_errors=sum(o.write_errors for o in outs), timeouts=sum(o.timeouts for o in outs),
        non_2xx_3xx=sum(o.non_2xx_3xx for o in outs), exit_status=max(o.exit_status for o in outs))
    notes: list[str] = []
    r = Result("latency", "app", w, target_rps=rate, apps_cpu_s=cpu_delta(a0, a1, notes, "apps"), notes=notes,
               extra={"per_process": [asdict(o) for o in outs]})
    r.other_cpu_pct = load.other_pct(r.apps_cpu_s or 0)
    r.notes.append(f"p99 per process: {', '.join(fmt_ms(o.p99_ms) for o in outs)} (the larger one is used); "
                   "p50 likewise")
    return r


def run_pairs(b: Bench, sides: list[Callable[[float], Result]],
              summary: Callable[[list[Result]], str]) -> list[list[Result]]:
    """PAIRS rounds of one measured run of each side in turn (A, B, A, B, ...), each pair_seconds long.

    Prints every run and, after each pair, summary(that pair's results). Returns the runs per side."""
    seconds = pair_seconds(b.args.duration)
    runs: list[list[Result]] = [[] for _ in sides]
    for i in range(PAIRS):
        pair: list[Result] = []
        for k, side in enumerate(sides):
            r = side(seconds)
            runs[k].append(r)
            pair.append(r)
            b.show(r, f"  {'pair' if len(sides) > 1 else 'run '} {i + 1}  " if k == 0 else " " * 10)
        if len(pair) > 1:
            print(f"{' ' * 10}{summary(pair)}", flush=True)
    return runs


def scenario_latency(b: Bench) -> None:
    """p99 at a fixed rate (half of ours' max hello rate): ours against the app's own p99, interleaved."""
    fixed = b.args.latency_rate > 0
    rate = b.args.latency_rate if fixed else LATENCY_SHARE * ours_hello(b, "the latency scenario's rate").wrk.rps
    if rate <= 0:
        raise RuntimeError("ours' hello rate is 0; cannot pick a rate for the latency scenario")
    with_ours = "ours" in b.contenders
    busy_poll = b.args.busy_poll if with_ours else 0
    # nginx takes its turn in the rounds too: its margin over the app, measured alike, is what a proxy
    # hop costs on this machine at this rate (a reference, not a target).
    names = (["ours"] if with_ours else []) + ([BUSY] if busy_poll else []) + \
        (["nginx"] if "nginx" in b.contenders else [])
    share = "--latency-rate: not the target's rate" if fixed else f"{100 * LATENCY_SHARE:.0f}% of ours' hello rate"
    print(f"  fixed rate {rate:.0f} req/s ({share}), {LATENCY_CONNECTIONS} connections, paced by wrk delay()",
          flush=True)
    if names:
        print(f"  app (two hello.py, talked to directly), {', '.join(names)} alternate: {PAIRS} rounds of "
              f"{pair_seconds(b.args.duration)}s runs, app first, after a {b.args.warmup:g}s warm-up of each; "
              f"all stay up throughout" + (f"; {BUSY} is ours with --busy-poll {busy_poll}" if busy_poll else "")
              + ("; nginx's margin is a reference, not a target" if "nginx" in names else ""), flush=True)
    else:
        print(f"  app: {PAIRS} runs of {pair_seconds(b.args.duration)}s after a {b.args.warmup:g}s warm-up",
              flush=True)

    def diff(pair: list[Result]) -> str:
        app = pair[0]
        return "; ".join(f"{name} p99 - app p99: "
                         + ("-" if app.wrk.p99_ms is None or r.wrk.p99_ms is None
                            else f"{r.wrk.p99_ms - app.wrk.p99_ms:+.2f}ms")
                         for name, r in zip(names, pair[1:], strict=False))

    with ExitStack() as stack:
        apps = stack.enter_context(direct_apps(b))
        sides: list[Callable[[float], Result]] = [lambda sec: measure_direct(b, apps, rate, sec)]
        servers: list[Server] = []
        if with_ours:
            servers.append(stack.enter_context(b.running("ours", "latency")))
        if busy_poll:
            servers.append(stack.enter_context(b.running("ours", "latency", ["--busy-poll", str(busy_poll)],
                                                         label=BUSY)))
        if "nginx" in names:
            servers.append(stack.enter_context(b.running("nginx", "latency")))
        if b.args.warmup > 0:
            direct_wrk(b, apps, rate, b.args.warmup)
        for name, server in zip(names, servers, strict=False):
            warm_up(b, server, "/", LATENCY_CONNECTIONS, rate=rate)
            sides.append(lambda sec, server=server, name=name: measure(  # type: ignore[misc]
                b, server, "latency", "/", LATENCY_CONNECTIONS, rate=rate, seconds=sec, warm=False,
                contender=name))
        runs = run_pairs(b, sides, diff)
    rows = [combine(side) for side in runs]
    for name, row in zip(names, rows[1:], strict=False):
        diffs = latency_diffs(rows[0], row)
        print(f"  median {name} p99 - app p99: {fmt(_median(diffs), '+.2f', 'ms')} over {len(diffs)} pairs "
              + ("(a reference)" if name == "nginx" else f"(limit +{LATENCY_SLACK_MS:g}ms)"), flush=True)
    print(f"  sums over the {PAIRS} runs of each (p50 and p99: the median of the runs'):", flush=True)
    for r in rows:
        b.record(r)
    for c in b.contenders:
        if c not in names:
            with b.running(c, "latency") as s:
                b.record(measure(b, s, "latency", "/", LATENCY_CONNECTIONS, rate=rate))
    for r in b.results:
        if r.scenario != "latency":
            continue
        for i, x in enumerate(r.runs or [r]):
            if x.rate_off is not None and abs(x.rate_off) > RATE_TOLERANCE:
                run = f" (pair {i + 1})" if r.runs else ""
                print(f"  WARNING: {x.contender}{run} achieved {x.wrk.rps:.0f} req/s, {100 * x.rate_off:+.1f}% off "
                      f"the {rate:.0f} asked (tolerance ±{100 * RATE_TOLERANCE:.0f}%): its p99 is not at the same "
                      "load", flush=True)


def scrape_metrics(port: int, password: str, interval: float = 1.0) -> Callable[[threading.Event], dict[str, Any]]:
    """A `during` function: GET /metrics on the admin port every `interval` seconds until stopped."""
    auth = "Basic " + base64.b64encode(f"admin:{password}".encode()).decode()

    def run(stop: threading.Event) -> dict[str, Any]:
        ok = failed = size = 0
        times: list[float] = []
        errors: list[str] = []
        while not stop.wait(interval):
            t0 = time.monotonic()
            try:
                st, body = http_get(port, "/metrics", headers={"Authorization": auth}, timeout=5)
            except (OSError, http.client.HTTPException) as e:
                failed += 1
                errors.append(str(e))
                continue
            times.append((time.monotonic() - t0) * 1000)
            if st == 200 and b"passenger_requests_total" in body:
                ok += 1
                size = len(body)
            else:
                failed += 1
                errors.append(f"status {st}")
        return {"scrapes_ok": ok, "scrapes_failed": failed, "metrics_bytes": size,
                "scrape_ms_max": max(times) if times else None, "scrape_errors": errors[:5]}
    return run


def scenario_features(b: Bench) -> None:
    """Ours only: hello with every feature on, against plain ours, interleaved.

    Two servers run side by side: plain ours and ours with the access log, the admin
    endpoint (its /metrics scraped every second during each run), a trusted proxy and
    the version header. wrk sends X-Forwarded-For to both (the plain one trusts no
    proxy and drops it), and the runs alternate: plain, features, x PAIRS."""
    if "ours" not in b.contenders:
        print("  skipped: ours is not among --only", flush=True)
        return
    files = b.tmp / "features-files"
    files.mkdir(exist_ok=True)
    access_log = files / "access.log"
    admin_port = free_port()
    extra = ["--access-log", str(access_log), "--admin-listen", f"tcp:{admin_port}:interface={HOST}",
             "--trusted-proxy", HOST, "--show-version-in-header"]
    xff = ["-H", "X-Forwarded-For: 203.0.113.7"]
    print(f"  plain ours and ours+features alternate: {PAIRS} pairs of {pair_seconds(b.args.duration)}s runs, "
          f"plain first, after a {b.args.warmup:g}s warm-up of each; both stay up throughout; wrk sends "
          "X-Forwarded-For to both", flush=True)

    def share(pair: list[Result]) -> str:
        plain, feat = pair
        return f"features/plain: {fmt(100 * feat.wrk.rps / plain.wrk.rps if plain.wrk.rps else None, '.1f', '%')}"

    with b.running("ours", "features") as plain, b.running("ours", "features", extra) as feat:
        registry = feat.info["registry"]
        passwords = glob.glob(str(registry / "passenger.*" / "full_admin_password.txt"))
        if not passwords:
            raise RuntimeError(f"features: no full_admin_password.txt under {registry}")
        password = Path(passwords[0]).read_text().strip()
        conn = http.client.HTTPConnection(HOST, feat.port, timeout=10)
        try:
            conn.request("GET", "/", headers={"X-Forwarded-For": "203.0.113.7"})
            resp = conn.getresponse()
            resp.read()
            powered = resp.getheader("X-Powered-By")
        finally:
            conn.close()
        if not powered:
            b.problems.append("features: no X-Powered-By header although --show-version-in-header is on")
        warm_up(b, plain, "/", 50, wrk_extra=xff)
        warm_up(b, feat, "/", 50, wrk_extra=xff)
        runs = run_pairs(b, [
            lambda sec: measure(b, plain, "features", "/", 50, wrk_extra=xff, seconds=sec, warm=False),
            lambda sec: measure(b, feat, "features", "/", 50, wrk_extra=xff, seconds=sec, warm=False,
                                during=scrape_metrics(admin_port, password), contender="ours+features"),
        ], share)
    plain_row, feat_row = combine(runs[0]), combine(runs[1])
    ratios = features_ratios(plain_row, feat_row)
    print(f"  median features/plain: {fmt(100 * statistics.median(ratios) if ratios else None, '.1f', '%')} "
          f"over {len(ratios)} pairs (target >= {100 * FEATURES_MIN_SHARE:.0f}%)", flush=True)
    try:
        with open(access_log, "rb") as f:
            lines = sum(1 for _ in f)
    except OSError:
        lines = 0
    sides = [r.extra for r in feat_row.runs]
    ok = sum(x.get("scrapes_ok", 0) for x in sides)
    bad = sum(x.get("scrapes_failed", 0) for x in sides)
    slowest = max((x["scrape_ms_max"] for x in sides if x.get("scrape_ms_max") is not None), default=None)
    errors = [e for x in sides for e in x.get("scrape_errors", [])]
    feat_row.extra.update({"scrapes_ok": ok, "scrapes_failed": bad, "scrape_ms_max": slowest,
                           "scrape_errors": errors[:5], "access_log_lines": lines, "x_powered_by": powered,
                           "pair_ratios": ratios, "median_pair_ratio": statistics.median(ratios) if ratios else None})
    feat_row.notes.append(f"/metrics scraped {ok} times ({bad} failed, slowest {fmt_ms(slowest)}); "
                          f"access log {lines} lines; X-Powered-By: {powered}")
    if bad or not ok:
        b.problems.append(f"features: /metrics scrapes failed: {errors[:5]}")
    if lines < feat_row.wrk.requests:
        b.problems.append(f"features: the access log has {lines} lines for {feat_row.wrk.requests} measured requests")
    print(f"  sums over the {PAIRS} runs of each (p50 and p99: the median of the runs'):", flush=True)
    b.record(plain_row)
    b.record(feat_row)


def scenario_conns10k(b: Bench) -> None:
    """Ours only: 10,000 keep-alive connections, GET / on each every 3 s for 30 s (bench/conns_bench.py).

    --duration and --warmup do not apply: the load is always CONNS_DURATION_S long,
    after conns_bench's own baseline of the app (one hello.py, talked to directly)."""
    if "ours" not in b.contenders:
        print("  skipped: ours is not among --only", flush=True)
        return
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)  # run() raises it for its clients and the server
    try:
        result = conns_bench.run({"connections": CONNS_CONNECTIONS, "interval": CONNS_INTERVAL_S,
                                  "duration": CONNS_DURATION_S, "app": b.app, "twistd": b.args.twistd,
                                  "ours_args": b.args.ours_args, "startup_timeout": b.args.startup_timeout,
                                  "keep_logs": b.args.keep_logs, "verbose": True}, indent="  ")
    except Exception as e:  # the other scenarios' figures still stand: report this one as not measured
        print(f"  conns10k failed: {e}", flush=True)
        b.problems.append(f"conns10k: {e}")
        b.extras["conns10k"] = {"error": str(e)}
        return
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, nofile)
    print(textwrap.indent(conns_bench.report(result, with_targets=False), "  "), flush=True)
    b.extras["conns10k"] = result


@dataclass(frozen=True)
class Scenario:
    name: str
    run: Callable[[Bench], None]
    default: bool = True  # part of the run when no --scenario is given


# To add a scenario: write scenario_NAME(b), register it here, and add its targets to checks().
SCENARIOS = [
    Scenario("hello", scenario_hello),
    Scenario("1mb", scenario_1mb),
    Scenario("latency", scenario_latency),
    Scenario("features", scenario_features),
    Scenario("conns10k", scenario_conns10k),
]


# --------------------------------------------------------------------------- report


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def checks(b: Bench) -> list[Check]:
    out: list[Check] = []
    ran = {r.scenario for r in b.results}

    def throughput(scenario: str, unit: str, value: Callable[[Result], float], min_ratio: float,
                   max_cpu: float) -> None:
        ours, pas = b.find(scenario, "ours"), b.find(scenario, "passenger")
        if ours and pas:
            need = min_ratio * value(pas)
            out.append(Check(scenario, f"ours >= {min_ratio:g}x Passenger {unit}", value(ours) >= need,
                             f"ours {value(ours):.1f} vs Passenger {value(pas):.1f} ({ratio(value(ours), value(pas))}); "
                             f"needs >= {need:.1f}"))
        else:
            out.append(Check(scenario, f"ours >= {min_ratio:g}x Passenger {unit}", None,
                             "needs both ours and passenger"))
        cpu = ours.cpu_us if ours else None
        out.append(Check(scenario, f"ours server CPU <= {max_cpu:g} us/{'response' if scenario == '1mb' else 'request'}",
                         None if cpu is None else cpu <= max_cpu, f"{fmt(cpu, '.1f')} us"))

    if "hello" in ran:
        throughput("hello", "req/s", lambda r: r.wrk.rps, HELLO_MIN_RATIO, HELLO_MAX_CPU_US)
    if "1mb" in ran:
        throughput("1mb", "MiB/s", lambda r: r.wrk.mib_per_s, MB_MIN_RATIO, MB_MAX_CPU_US)
    if "latency" in ran:
        app = b.find("latency", "app")
        fixed = b.args.latency_rate > 0  # a rate of one's choosing: references, not the target
        for name in ("ours", BUSY):
            ours = b.find("latency", name)
            if name == BUSY and ours is None:
                continue  # --busy-poll 0
            shown = "ours" if name == "ours" else f"ours --busy-poll {b.args.busy_poll}"
            what = f"{shown} p99 <= app p99 + {LATENCY_SLACK_MS:g} ms (median of {PAIRS} interleaved pairs)"
            if fixed:
                what += ", at the fixed --latency-rate (a reference, not the target)"
            diffs = latency_diffs(app, ours)
            if ours and app and diffs:
                med = statistics.median(diffs)
                off = [f"{x.contender} pair {i + 1} {100 * (x.rate_off or 0):+.0f}%" for r in (app, ours)
                       for i, x in enumerate(r.runs) if x.rate_off is not None and abs(x.rate_off) > RATE_TOLERANCE]
                out.append(Check("latency", what, None if fixed else med <= LATENCY_SLACK_MS,
                                 f"median {name} - app {med:+.2f}ms over {len(diffs)} pairs "
                                 f"({', '.join(f'{d:+.2f}' for d in diffs)} ms; limit +{LATENCY_SLACK_MS:g}ms) "
                                 f"at {ours.target_rps or 0:.0f} req/s"
                                 + (f"; RATE OFF: {', '.join(off)}" if off else ""), reference=fixed))
            else:
                out.append(Check("latency", what, None, "needs ours and the app"))
        nginx = latency_diffs(app, b.find("latency", "nginx"))
        if nginx:
            out.append(Check("latency", "nginx p99 - app p99, the same rounds (a reference, not a target)", None,
                             f"median {statistics.median(nginx):+.2f}ms ({', '.join(f'{d:+.2f}' for d in nginx)} ms)",
                             reference=True))
    feat = b.find("features", "ours+features")
    if feat is not None:
        plain = b.find("features", "ours")
        ratios = features_ratios(plain, feat)
        what = f"req/s >= {100 * FEATURES_MIN_SHARE:.0f}% of plain ours (median of {PAIRS} interleaved pairs)"
        if plain and ratios:
            med = statistics.median(ratios)
            out.append(Check("features", what, med >= FEATURES_MIN_SHARE,
                             f"median {100 * med:.1f}% over {len(ratios)} pairs "
                             f"({', '.join(f'{100 * x:.1f}' for x in ratios)}%); summed {feat.wrk.rps:.1f} vs "
                             f"plain {plain.wrk.rps:.1f} req/s; needs >= {100 * FEATURES_MIN_SHARE:.0f}%"))
        else:
            out.append(Check("features", what, None, "no pair with a plain run that served requests"))
    conns = b.extras.get("conns10k")
    if conns is not None:
        if "targets" in conns:
            out += [Check("conns10k", what, passed, detail) for passed, what, detail in conns_bench.targets(conns)]
        else:
            out.append(Check("conns10k", f"{CONNS_CONNECTIONS} keep-alive connections", None,
                             f"not measured: {conns.get('error')}"))
    return out


def report(b: Bench) -> tuple[str, list[Check]]:
    head = ["scenario", "contender", "req/s", "MiB/s", "CPU us/req", "apps us/req", "p50", "p99", "errors",
            "other CPU", "rate"]
    rows: list[list[str]] = []
    last = ""
    for r in b.results:
        w = r.wrk
        rows.append([r.scenario if r.scenario != last else "", r.contender, f"{w.rps:.1f}",
                     f"{w.mib_per_s:.1f}" if r.scenario == "1mb" else "", fmt(r.cpu_us, ".1f"),
                     fmt(r.apps_cpu_us, ".1f"), fmt_ms(w.p50_ms), fmt_ms(w.p99_ms), w.error_text(),
                     fmt(r.other_cpu_pct, ".0f", "%"),
                     f"asked {r.target_rps:.0f} ({100 * (r.rate_off or 0):+.1f}%)" if r.target_rps else ""])
        last = r.scenario
    lines = [table(head, rows)] if rows else []
    ratios: list[str] = []
    for scenario in dict.fromkeys(r.scenario for r in b.results):
        ours = b.find(scenario, "ours")
        if ours is None:
            continue
        parts = []
        for other in ("passenger", "nginx"):
            o = b.find(scenario, other)
            if o is None:
                continue
            if scenario == "latency":
                parts.append(f"ours/{other}: p99 {ratio(ours.wrk.p99_ms, o.wrk.p99_ms)}")
            else:
                tp = (f"MiB/s {ratio(ours.wrk.mib_per_s, o.wrk.mib_per_s)}" if scenario == "1mb"
                      else f"req/s {ratio(ours.wrk.rps, o.wrk.rps)}")
                parts.append(f"ours/{other}: {tp}, CPU/req {ratio(ours.cpu_us, o.cpu_us)}")
        if parts:
            ratios.append(f"  {scenario:<8} " + "   ".join(parts))
    if ratios:
        lines += ["", "Ratios (ours / other)", *ratios]
    cs = checks(b)
    lines += ["", "Targets"] + [c.line() for c in cs]
    noisy = [f"{r.scenario}/{r.contender} {r.other_cpu_pct:.0f}%" for r in b.results
             if r.other_cpu_pct is not None and r.other_cpu_pct > OTHER_CPU_WARN_PCT]
    if noisy:
        lines += ["", f"WARNING: other processes used more than {OTHER_CPU_WARN_PCT:g}% of a core during "
                  f"{len(noisy)} run(s) ({', '.join(noisy)}); compare only runs on an idle machine"]
    conns_others = b.extras.get("conns10k", {}).get("through", {}).get("cpu_pct", {}).get("others")
    if conns_others is not None and conns_others > conns_bench.OTHERS_NOTE_PCT:
        lines += ["", f"WARNING: other processes used {conns_others:.0f}% of a core during the conns10k load (more "
                  f"than {conns_bench.OTHERS_NOTE_PCT:g}%): its latencies, and its last target, are skewed by them"]
    return "\n".join(lines).lstrip("\n"), cs  # no table when only conns10k ran


def check_same_apps(b: Bench) -> None:
    """Every contender's apps must have run the same program as the same user, or the comparison is off."""
    seen = {k: frozenset(v) for k, v in b.app_ids.items() if v}
    if len(set(seen.values())) > 1:
        text = "\n".join(f"    {k}: {', '.join(sorted(i.text() for i in v))}" for k, v in seen.items())
        print(f"WARNING: the app processes did not all run the same program as the same user:\n{text}", flush=True)
        b.problems.append("app processes differed between contenders")
    elif seen:
        print(f"app processes of every contender: {', '.join(sorted(i.text() for i in next(iter(seen.values()))))}")


def versions(b: Bench) -> dict[str, str]:
    def first_line(argv: list[str]) -> str:
        try:
            p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"? ({e})"
        return (p.stdout.strip().splitlines() or ["?"])[0]
    python = b.args.twistd.parent / "python"
    where = first_line([str(python if python.exists() else sys.executable), "-c",
                        "import passenger.http.front as m; print(m.__file__)"])
    build = ("the request path compiled by mypyc" if where.endswith(".so")
             else "the request path as plain Python" if where.endswith(".py") else f"? ({where})")
    return {"passenger": first_line([b.tools["passenger"], "--version"]),
            "nginx": first_line([b.tools["nginx"], "-v"]),
            "wrk": first_line([b.tools["wrk"], "-v"]),
            "server_python": f"{platform.python_implementation()} {platform.python_version()}, {build}"}


# --------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    ap = arg_parser(__doc__, "the benchmark app")
    add_wrk_options(ap, warmup=3)
    ap.add_argument("--scenario", action="append", choices=[s.name for s in SCENARIOS],
                    help="run this scenario (repeatable; default: " +
                         ", ".join(s.name for s in SCENARIOS if s.default) + ")")
    ap.add_argument("--only", action="append", choices=CONTENDERS,
                    help="run only this contender (repeatable; default: all three)")
    ap.add_argument("--busy-poll", type=int, default=BUSY_POLL_US, metavar="USEC",
                    help=f"the latency scenario also measures ours with --busy-poll USEC ({BUSY}), interleaved "
                         f"with the others (default {BUSY_POLL_US}; 0: ours with its defaults only)")
    ap.add_argument("--latency-rate", type=float, default=0.0, metavar="REQS",
                    help="run the latency scenario at this fixed rate instead of half of ours' hello rate; its "
                         "lines are then references, not the target (default 0: the target's rate)")
    ap.add_argument("--ours-args", default="", metavar="ARGS",
                    help="extra options appended to ours' command line (one shell-quoted string)")
    ap.add_argument("-v", "--verbose", action="count", default=0,
                    help="commands, pids counted as server CPU, configs; -vv adds wrk's output")
    ap.add_argument("--startup-timeout", type=float, default=60,
                    help="seconds a contender may take to be ready with its 2 app processes (default 60)")
    args = ap.parse_args()
    check_wrk_options(ap, args)
    if not 0 <= args.busy_poll <= 100_000:
        ap.error(f"--busy-poll {args.busy_poll}: must be from 0 to 100000 microseconds")
    try:
        shlex.split(args.ours_args)
    except ValueError as e:
        ap.error(f"--ours-args: {e}")
    return args


def main() -> int:
    t_start = time.monotonic()
    args = parse_args()
    app = check_inputs(args)
    tools = ensure_installed({"wrk": "wrk", "nginx": "nginx", "passenger": "passenger"})
    scenarios = [s for s in SCENARIOS if (s.name in args.scenario if args.scenario else s.default)]
    install_signal_handlers()

    tmp = Path(tempfile.mkdtemp(prefix="compare-bench-"))
    if os.geteuid() == 0:
        os.chmod(tmp, 0o711)  # Passenger and nginx's workers run as the app account and need to get through
    b = Bench(args, app, tools, tmp)
    before = sorted(os.listdir(app.parent))
    status = 0
    cs: list[Check] = []
    vers: dict[str, str] = {}
    try:
        vers = versions(b)
        print(f"compare benchmark: {os.cpu_count()} CPUs; {vers['passenger']}; {vers['nginx']}; {vers['wrk']}; "
              f"ours on {vers['server_python']}")
        print(f"app: {app}, {INSTANCES} processes per contender"
              + (f", run as {b.account.name!r} (as ours runs them)" if b.account else ""))
        print(f"contenders: {', '.join(b.contenders)}; scenarios: {', '.join(s.name for s in scenarios)}")
        print(f"each run: fresh start, {args.warmup:g}s warm-up, {args.duration:g}s measured; latency (app, ours) "
              f"and features (plain, features): {PAIRS} interleaved pairs of {pair_seconds(args.duration)}s runs "
              f"instead, after one warm-up of each side; logs in {tmp}")
        print("CPU us/req: utime+stime of the server's processes (not the apps) during the measured run / "
              "requests wrk counted\n", flush=True)
        for sc in scenarios:
            print(f"[{sc.name}] {(sc.run.__doc__ or '').splitlines()[0]}", flush=True)
            sc.run(b)
            print(flush=True)
        check_same_apps(b)
        if b.results or b.extras:
            text, cs = report(b)
            print("\n" + text)
        if sorted(os.listdir(app.parent)) != before:
            b.problems.append(f"the app directory {app.parent} changed during the run")
        if b.problems:
            print("\nSomething went wrong (exit status 1):\n" + "\n".join("  " + p for p in b.problems))
            status = 1
    except (KeyboardInterrupt, Exception) as e:
        status = failed(e)
        args.keep_logs = args.keep_logs or status == 1
    finally:
        ignore_signals()
        stop_all(b.sessions)
        elapsed = time.monotonic() - t_start
        print(f"\ntotal time {elapsed:.0f}s", flush=True)
        if args.json and (b.results or b.extras):
            doc = {
                "meta": {"cpus": os.cpu_count(), "duration_s": args.duration, "warmup_s": args.warmup,
                         "app": str(app), "app_account": b.account.name if b.account else None,
                         "instances": INSTANCES, "versions": vers, "commands": b.commands,
                         "ours_args": args.ours_args, "elapsed_s": elapsed,
                         "app_processes": {k: sorted(i.text() for i in v) for k, v in b.app_ids.items()},
                         "problems": b.problems},
                "results": [r.to_json() for r in b.results],
                "checks": [asdict(c) for c in cs],
                **b.extras,
            }
            write_json(args.json, doc, default=str)
        remove_logs(tmp, args.keep_logs)
    return status


if __name__ == "__main__":
    sys.exit(main())

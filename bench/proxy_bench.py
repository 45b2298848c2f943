#!/usr/bin/env python3
"""Benchmark passenger's reverse proxy against a direct connection to the app.

Run from the repository root:

    .venv/bin/python bench/proxy_bench.py [--duration 10] [--app PATH] [--json FILE]

For each scenario, wrk runs twice: once directly against one hello.py process
("direct"), once through ``twistd -n passenger`` with two hello.py processes
("through").  Everything listens on 127.0.0.1 only.  Every process the script
starts runs in a session of its own and is stopped on exit, Ctrl-C, SIGTERM or
error.  See bench/README.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchlib import (
    HOST,
    Session,
    WrkResult,
    add_wrk_options,
    arg_parser,
    check_inputs,
    check_wrk_options,
    children,
    cpu_seconds,
    ensure_installed,
    failed,
    fmt,
    fmt_mib,
    fmt_ms,
    free_port,
    http_get,
    ignore_signals,
    install_signal_handlers,
    notable,
    remove_logs,
    rss_kib,
    run_wrk,
    start_app,
    start_twistd,
    stop_all,
    table,
    twistd_argv,
    wait_listening,
    write_json,
)


@dataclass(frozen=True)
class Scenario:
    name: str
    path: str
    connections: int
    threads: int = 2
    transfer: bool = False  # report MiB/s
    ideal_rps: float | None = None  # report % of ideal


SCENARIOS = [
    Scenario("hello", "/", 50),
    Scenario("1mb", "/1mb", 10, transfer=True),
    # 20 connections, each waiting 50 ms per request: at most 20 * 1000/50 = 400 req/s.
    Scenario("sleep50", "/sleep?ms=50", 20, ideal_rps=20 * 1000 / 50),
]


# --------------------------------------------------------------------------- wrk


def wrk_scenario(wrk: str, sc: Scenario, port: int, seconds: float, timeout_s: int) -> tuple[WrkResult, str]:
    return run_wrk(wrk, f"http://{HOST}:{port}{sc.path}", sc.threads, sc.connections, seconds, timeout_s)


# --------------------------------------------------------------------------- measuring


@dataclass
class Run:
    target: str  # "direct" | "through"
    wrk: WrkResult
    proc_cpu_pct: float | None  # hello.py (direct) or twistd (through), % of one core
    apps_cpu_pct: float | None = None  # through: both app processes together
    server_rss_kib: int | None = None  # through: twistd VmRSS after the run
    server_alive: bool = True
    log_notes: list[str] = field(default_factory=list)
    wrk_output: str = ""


def measure(wrk: str, sc: Scenario, port: int, pid: int, app_pids: list[int],
            args: argparse.Namespace, target: str) -> Run:
    if args.warmup > 0:
        wrk_scenario(wrk, sc, port, args.warmup, args.wrk_timeout)
    c0 = cpu_seconds(pid)
    a0 = [cpu_seconds(p) for p in app_pids]
    t0 = time.monotonic()
    res, out = wrk_scenario(wrk, sc, port, args.duration, args.wrk_timeout)
    wall = time.monotonic() - t0
    c1 = cpu_seconds(pid)
    a1 = [cpu_seconds(p) for p in app_pids]
    cpu = None if c0 is None or c1 is None else 100.0 * (c1 - c0) / wall
    apps = None
    if app_pids and all(x is not None for x in a0 + a1):
        apps = 100.0 * sum(b - a for a, b in zip(a0, a1, strict=True) if a is not None and b is not None) / wall
    return Run(target, res, cpu, apps, wrk_output=out)


def print_run(sc: Scenario, r: Run) -> None:
    w = r.wrk
    line = f"  {r.target:<8} {w.rps:>10.1f} req/s"
    if sc.transfer:
        line += f"  {w.mib_per_s:>8.1f} MiB/s"
    if sc.ideal_rps:
        line += f"  ({100 * w.rps / sc.ideal_rps:.1f}% of ideal {sc.ideal_rps:.0f})"
    line += f"  p50 {fmt_ms(w.p50_ms)}  p99 {fmt_ms(w.p99_ms)}  errors {w.error_text()}"
    who = "hello.py" if r.target == "direct" else "server"
    line += f"  {who} CPU {fmt(r.proc_cpu_pct, '.0f', '%')}"
    if r.target == "through":
        line += f"  apps CPU {fmt(r.apps_cpu_pct, '.0f', '%')}  server RSS {fmt_mib(r.server_rss_kib)}"
    print(line, flush=True)


def summary(results: list[dict[str, Any]], rest_rss: int | None) -> str:
    head = ["scenario", "conns", "target", "req/s", "MiB/s", "% ideal", "p50", "p99", "errors",
            "CPU (1 core)", "server RSS", "through/direct"]
    rows: list[list[str]] = []
    for item in results:
        sc: Scenario = item["scenario"]
        d: Run = item["direct"]
        t: Run = item["through"]
        for r in (d, t):
            w = r.wrk
            ratio = ""
            if r is t:
                ratio = f"{t.wrk.rps / d.wrk.rps:.2f}x req/s" if d.wrk.rps else "-"
                if sc.transfer and d.wrk.mib_per_s:
                    ratio += f", {t.wrk.mib_per_s / d.wrk.mib_per_s:.2f}x MiB/s"
            cpu = (f"app {fmt(r.proc_cpu_pct, '.0f', '%')}" if r is d
                   else f"server {fmt(r.proc_cpu_pct, '.0f', '%')}, apps {fmt(r.apps_cpu_pct, '.0f', '%')}")
            rows.append([
                sc.name if r is d else "", str(sc.connections) if r is d else "", r.target,
                f"{w.rps:.1f}", f"{w.mib_per_s:.1f}" if sc.transfer else "",
                f"{100 * w.rps / sc.ideal_rps:.1f}%" if sc.ideal_rps else "",
                fmt_ms(w.p50_ms), fmt_ms(w.p99_ms), w.error_text(), cpu,
                fmt_mib(r.server_rss_kib) if r is t else "", ratio,
            ])
    return (table(head, rows) +
            f"\nserver RSS at rest (2 app processes, before any load): {fmt_mib(rest_rss)}")


# --------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    ap = arg_parser(__doc__, "the hello.py benchmark app")
    add_wrk_options(ap, warmup=2)
    ap.add_argument("--scenario", action="append", choices=[s.name for s in SCENARIOS],
                    help="run only this scenario (repeatable; default: all)")
    ap.add_argument("--startup-timeout", type=float, default=60,
                    help="seconds to wait for the server's 2 app processes to be ready (default 60)")
    args = ap.parse_args()
    check_wrk_options(ap, args)
    return args


def main() -> int:
    args = parse_args()
    app = check_inputs(args)
    wrk = ensure_installed({"wrk": "wrk"})["wrk"]
    scenarios = [s for s in SCENARIOS if not args.scenario or s.name in args.scenario]
    python = shutil.which("python3") or "python3"
    app_command = "python3 " + shlex.quote(app.name)

    install_signal_handlers()

    tmp = Path(tempfile.mkdtemp(prefix="passenger-bench-"))
    sessions: list[Session] = []
    results: list[dict[str, Any]] = []
    rest_rss: int | None = None
    status = 0
    log_path = tmp / "twistd.log"
    try:
        wrk_version = subprocess.run([wrk, "-v"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, timeout=10).stdout.splitlines()[0:1]
        print(f"passenger proxy benchmark: {os.cpu_count()} CPUs, {platform.python_implementation()} "
              f"{platform.python_version()} (server), {wrk_version[0] if wrk_version else 'wrk'}")
        print(f"app: {app} (python3 = {python})")
        print(f"each run: {args.warmup:g}s warm-up, then {args.duration:g}s measured; logs in {tmp}")
        print("direct  = one hello.py process")
        print("through = twistd passenger -> 2 hello.py processes (--min-instances 2 --max-pool-size 2)")
        print("CPU = utime+stime delta / wall time, % of one core; wrk shares the same CPUs.\n", flush=True)

        # Direct: one hello.py, started the way passenger starts it.
        dport = free_port()
        direct = start_app("direct hello.py", app_command, app.parent,
                           dict(os.environ, PORT=str(dport), PYTHONUNBUFFERED="1"), tmp / "direct.log")
        sessions.append(direct)
        wait_listening(dport, time.monotonic() + 20, direct)
        st, body = http_get(dport, "/")
        if st != 200:
            raise RuntimeError(f"direct GET / answered {st}: {body[:200]!r}")
        print(f"direct hello.py: pid {direct.pid} on {HOST}:{dport}")

        # Through: the server with 2 app processes.
        sport = free_port()
        argv = twistd_argv(args.twistd, tmp, app.parent, app_command, sport, 2)
        print("server: " + " ".join(shlex.quote(a) for a in argv), flush=True)
        server, watcher = start_twistd(argv, tmp, sport, 2, args.startup_timeout, sessions)
        apps = children(server.pid)
        time.sleep(1.0)
        rest_rss = rss_kib(server.pid)
        print(f"server: twistd pid {server.pid} on {HOST}:{sport}, app pids {apps}")
        print(f"server RSS at rest (2 app processes, before any load): {fmt_mib(rest_rss)}\n", flush=True)
        watcher.new_lines()  # forget the start-up lines

        for sc in scenarios:
            print(f"[{sc.name}] GET {sc.path}  wrk -t{sc.threads} -c{sc.connections} -d{args.duration:g}s --latency",
                  flush=True)
            d = measure(wrk, sc, dport, direct.pid, [], args, "direct")
            print_run(sc, d)
            if not direct.running():
                raise RuntimeError(f"the direct hello.py exited with status {direct.proc.returncode}")
            if not server.running():
                raise RuntimeError(f"the server exited with status {server.proc.returncode}")
            apps = children(server.pid)
            t = measure(wrk, sc, sport, server.pid, apps, args, "through")
            t.server_rss_kib = rss_kib(server.pid)
            t.server_alive = server.running()
            t.log_notes = notable(watcher.new_lines())
            print_run(sc, t)
            if t.wrk.rps and d.wrk.rps:
                print(f"  through/direct: {t.wrk.rps / d.wrk.rps:.2f}x req/s", flush=True)
            if t.log_notes:
                print("  server log during this scenario (warm-up included):")
                for ln in t.log_notes[:30]:
                    print("    " + ln)
                if len(t.log_notes) > 30:
                    print(f"    ... {len(t.log_notes) - 30} more in {log_path}")
            now_apps = children(server.pid)
            if now_apps != apps:
                print(f"  NOTE: app processes changed during the run: {apps} -> {now_apps}")
            print(flush=True)
            results.append({"scenario": sc, "direct": d, "through": t})
            if not t.server_alive:
                print(f"  the server died (status {server.proc.returncode}); stopping here", flush=True)
                status = 1
                break

        print("Summary (direct = one hello.py process; through = passenger with 2 hello.py processes)")
        print(summary(results, rest_rss))
        if any(r[k].wrk.errors or r[k].wrk.exit_status for r in results for k in ("direct", "through")):
            print("\nSome runs had errors; see above (wrk's own counts) and the server log.")
            status = status or 1
    except (KeyboardInterrupt, Exception) as e:
        status = failed(e)
        args.keep_logs = args.keep_logs or status == 1
    finally:
        ignore_signals()
        stop_all(sessions)
        if args.json and results:
            doc = {
                "meta": {"duration_s": args.duration, "warmup_s": args.warmup, "cpus": os.cpu_count(),
                         "app": str(app), "direct": "one hello.py process",
                         "through": "twistd passenger, --min-instances 2 --max-pool-size 2",
                         "server_rss_at_rest_kib": rest_rss},
                "scenarios": [
                    {"name": r["scenario"].name, "path": r["scenario"].path,
                     "connections": r["scenario"].connections, "ideal_rps": r["scenario"].ideal_rps,
                     "ratio_rps": (r["through"].wrk.rps / r["direct"].wrk.rps) if r["direct"].wrk.rps else None,
                     **{k: {**{f: v for f, v in asdict(r[k]).items() if f not in ("wrk", "wrk_output")},
                            "wrk": {**asdict(r[k].wrk), "errors": r[k].wrk.errors}}
                        for k in ("direct", "through")}}
                    for r in results
                ],
            }
            write_json(args.json, doc)
        remove_logs(tmp, args.keep_logs)
    return status


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Benchmark how long passenger takes to spawn an app, against starting the app directly.

Run from the repository root:

    .venv/bin/python bench/spawn_bench.py [--count 20] [--app PATH] [--json FILE]

"direct": COUNT times, start ``/bin/sh -c "exec python3 hello.py"`` with PORT set
and time it from just before the fork to the first TCP connect to 127.0.0.1:PORT
that succeeds (probing every 0.5 ms).  One more spawn runs first as a warm-up and
is not counted.  "through": start ``twistd -n passenger --min-instances COUNT
--max-pool-size COUNT``, which spawns COUNT processes one after another, and read
the "(N ms)" that passenger logs for each spawn (from the start of the spawn's
preparation to its first successful connect).  The figure that matters is
median(through) - median(direct): what passenger adds to a spawn (target: 15 ms
at most).  When run as root, the direct side runs the app as the account
passenger switches to, and the script checks that both sides ran the same
program as the same user.  Everything listens on 127.0.0.1 only.  Every process the script starts
runs in a session of its own and is stopped on exit, Ctrl-C, SIGTERM or error.
See bench/README.md.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from benchlib import (
    HOST,
    Account,
    Identity,
    LogWatcher,
    Session,
    alive,
    app_account,
    arg_parser,
    check_inputs,
    children,
    failed,
    free_port,
    identity,
    ignore_signals,
    install_signal_handlers,
    notable,
    remove_logs,
    session_members,
    stop_all,
    twistd_argv,
    write_json,
)

TARGET_MS = 15.0
PROBE_INTERVAL = 0.0005  # seconds between connect attempts in the direct measurement
READY_RE = re.compile(r"Process (\d+) of (\S+) is ready on port (\d+) \((\d+(?:\.\d+)?) ms\)")


# --------------------------------------------------------------------------- figures


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), interpolating linearly between closest ranks (numpy's default)."""
    xs = sorted(values)
    if not xs:
        raise ValueError("no values")
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


@dataclass
class Stats:
    n: int
    median_ms: float
    p90_ms: float
    min_ms: float
    max_ms: float
    mean_ms: float

    @classmethod
    def of(cls, values: list[float]) -> Stats:
        return cls(len(values), statistics.median(values), percentile(values, 90), min(values), max(values),
                   statistics.fmean(values))

    def line(self) -> str:
        return (f"median {self.median_ms:7.1f} ms   p90 {self.p90_ms:7.1f} ms   "
                f"(min {self.min_ms:.1f}, max {self.max_ms:.1f}, mean {self.mean_ms:.1f}; n={self.n})")


def fmt_list(values: list[float]) -> str:
    return " ".join(f"{v:.0f}" if v == int(v) else f"{v:.1f}" for v in values)


# --------------------------------------------------------------------------- direct


class DirectError(RuntimeError):
    pass


def connect_ok(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        return s.connect_ex((HOST, port)) == 0


def kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def spawn_direct(argv: list[str], cwd: Path, account: Account | None, log: IO[bytes], timeout: float,
                 live: list[subprocess.Popen[bytes]]) -> tuple[float, Identity]:
    """Start the app once; ms from just before the fork to the first successful connect, and who ran."""
    port = free_port()
    # What passenger adds to its own environment that could matter to a Python app.
    env = dict(os.environ, PORT=str(port), PYTHONUNBUFFERED="1", IN_PASSENGER="1", PWD=str(cwd))
    kw: dict[str, Any] = {}
    if account is not None:
        env.update(account.environment())
        kw = {"user": account.uid, "group": account.gid, "extra_groups": list(account.groups)}
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                            start_new_session=True, **kw)
    live.append(proc)
    try:
        deadline = t0 + timeout
        while True:
            if connect_ok(port):
                ms = (time.perf_counter() - t0) * 1000
                return ms, identity(proc.pid)
            if proc.poll() is not None:
                raise DirectError(f"the app (pid {proc.pid}) exited with status {proc.returncode} "
                                  f"before listening on {HOST}:{port}")
            if time.perf_counter() > deadline:
                raise DirectError(f"the app (pid {proc.pid}) was not listening on {HOST}:{port} after {timeout:g}s")
            time.sleep(PROBE_INTERVAL)
    finally:
        kill_group(proc.pid)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass  # swept up at exit
        else:
            live.remove(proc)


# --------------------------------------------------------------------------- through


@dataclass
class Spawn:
    pid: int
    app: str
    port: int
    ms: float


@dataclass
class ServerStop:
    exited: bool = False  # exited on SIGTERM within the grace period
    status: int | None = None
    seconds: float | None = None
    app_pids: list[int] = field(default_factory=list)  # its app processes when TERM was sent
    apps_left: list[int] = field(default_factory=list)  # of those, still alive once it had exited
    notes: list[str] = field(default_factory=list)


def wait_ready(server: Session, watcher: LogWatcher, count: int, timeout: float, stdout_path: Path,
               seen: list[str]) -> list[Spawn]:
    spawns: list[Spawn] = []
    deadline = time.monotonic() + timeout
    while True:
        new = watcher.new_lines()
        seen += new
        for ln in new:
            if m := READY_RE.search(ln):
                spawns.append(Spawn(int(m.group(1)), m.group(2), int(m.group(3)), float(m.group(4))))
        if len(spawns) >= count:
            return spawns
        if not server.running():
            out = stdout_path.read_text(errors="replace")
            raise RuntimeError(f"the server exited with status {server.proc.returncode} after {len(spawns)} of "
                               f"{count} spawns:\n{out}\n" + "\n".join(seen[-40:]))
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(spawns)} of {count} app processes were ready after {timeout:g}s; "
                               "server log:\n" + "\n".join(seen[-40:]))
        time.sleep(0.05)


def stop_server(server: Session, grace: float) -> ServerStop:
    """SIGTERM twistd and check that it, and the app processes it started, go away."""
    res = ServerStop()
    members = session_members(server.pid)
    res.app_pids = sorted(p for p in members if p != server.pid)
    t0 = time.monotonic()
    try:
        server.proc.send_signal(signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        res.status = server.proc.wait(timeout=grace)
        res.exited = True
        res.seconds = time.monotonic() - t0
    except subprocess.TimeoutExpired:
        res.notes.append(f"twistd (pid {server.pid}) was still running {grace:g}s after SIGTERM")
    if res.exited:
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and any(alive(p, s) for p, s in members.items() if p != server.pid):
            time.sleep(0.05)
        res.apps_left = [p for p, s in members.items() if p != server.pid and alive(p, s)]
        if res.apps_left:
            res.notes.append(f"app processes {res.apps_left} outlived twistd")
    res.notes += server.stop(grace=5)  # KILLs whatever is left in its session
    return res


# --------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    ap = arg_parser(__doc__, "the app to spawn")
    ap.add_argument("--count", type=int, default=20, help="spawns to time on each side (default 20)")
    ap.add_argument("--spawn-timeout", type=float, default=10,
                    help="seconds one spawn may take to listen; the server gets 20 + COUNT times this (default 10)")
    args = ap.parse_args()
    if args.count < 1:
        ap.error("--count must be at least 1")
    if args.spawn_timeout <= 0:
        ap.error("--spawn-timeout must be positive")
    return args


def main() -> int:
    args = parse_args()
    app = check_inputs(args)
    python3 = shutil.which("python3")
    if python3 is None:
        sys.exit("ERROR: no python3 on PATH; the app is started as `python3 hello.py`")
    account = app_account(app.parent)
    app_command = "python3 " + shlex.quote(app.name)
    direct_argv = ["/bin/sh", "-c", "exec " + app_command]
    n = args.count

    install_signal_handlers()

    tmp = Path(tempfile.mkdtemp(prefix="passenger-spawn-bench-"))
    live: list[subprocess.Popen[bytes]] = []  # direct app processes not yet reaped
    sessions: list[Session] = []
    warmup_ms: float | None = None
    direct: list[float] = []
    direct_ids: set[Identity] = set()
    through_ids: set[Identity] = set()
    spawns: list[Spawn] = []
    stop: ServerStop | None = None
    log_notes: list[str] = []
    status = 0
    log_path = tmp / "twistd.log"
    direct_log = open(tmp / "direct.log", "wb")  # closed in `finally`
    try:
        print(f"passenger spawn benchmark: {os.cpu_count()} CPUs, {platform.python_implementation()} "
              f"{platform.python_version()} (server), count {n}")
        print(f"app: {app}")
        print(f"command: /bin/sh -c {shlex.quote('exec ' + app_command)}  (python3 on PATH here: {python3})")
        if account is not None:
            print(f"running as root, so passenger runs the app as {account.name!r} (the app root's owner, "
                  "never root); so does the direct side")
        print(f"logs in {tmp}\n", flush=True)

        # Direct: the app's own exec-to-listen time.
        print(f"direct: {n} spawns (+1 warm-up), connect probed every {PROBE_INTERVAL * 1000:g} ms", flush=True)
        warmup_ms, ident = spawn_direct(direct_argv, app.parent, account, direct_log, args.spawn_timeout, live)
        direct_ids.add(ident)
        for _ in range(n):
            ms, ident = spawn_direct(direct_argv, app.parent, account, direct_log, args.spawn_timeout, live)
            direct.append(ms)
            direct_ids.add(ident)
        d = Stats.of(direct)
        print(f"  ran: {', '.join(sorted(i.text() for i in direct_ids))}")
        print(f"  warm-up {warmup_ms:.1f} ms (not counted); ms: {' '.join(f'{v:.1f}' for v in direct)}")
        print(f"  {d.line()}\n", flush=True)

        # Through: passenger spawns n processes, one at a time.
        sport = free_port()
        argv = twistd_argv(args.twistd, tmp, app.parent, app_command, sport, n)
        print("through: " + " ".join(shlex.quote(a) for a in argv), flush=True)
        stdout_path = tmp / "twistd.stdout"
        with open(stdout_path, "wb") as out:
            server = Session("twistd passenger", argv, cwd=tmp, stdout=out, stderr=subprocess.STDOUT)
        sessions.append(server)
        watcher = LogWatcher(log_path)
        seen: list[str] = []
        timeout = 20 + n * args.spawn_timeout
        spawns = wait_ready(server, watcher, n, timeout, stdout_path, seen)[:n]
        through_ids = {identity(sp.pid) for sp in spawns}
        print(f"  ran: {', '.join(sorted(i.text() for i in through_ids))}")
        through = [s.ms for s in spawns]
        t = Stats.of(through)
        whole = all(v == int(v) for v in through)
        print(f"  ms{' (logged in whole ms)' if whole else ''}: {fmt_list(through)}")
        print(f"  {t.line()}", flush=True)
        if len({s.pid for s in spawns}) != n:
            print(f"  NOTE: the ready lines name only {len({s.pid for s in spawns})} distinct pids")
        log_notes = [ln for ln in notable(seen + watcher.new_lines())
                     if "Spawning process" not in ln]
        if log_notes:
            print("  server log (warnings, errors, exits):")
            for ln in log_notes[:20]:
                print("    " + ln)
        running = children(server.pid)
        if len(running) != n:
            print(f"  NOTE: twistd has {len(running)} child processes, expected {n}")

        stop = stop_server(server, grace=10)
        if stop.exited:
            print(f"  server: exited {stop.seconds:.2f}s after SIGTERM with status {stop.status}; "
                  + (f"its {len(stop.app_pids)} app processes are gone" if not stop.apps_left
                     else f"app processes left behind: {stop.apps_left}"))
        for note in stop.notes:
            print(f"  server: {note}")
        if not stop.exited or stop.status != 0 or stop.apps_left:
            status = 1
        print(flush=True)

        if through_ids != direct_ids:
            print("WARNING: passenger's app processes did not run the same program as the same user as the direct "
                  "ones,\n         so the overhead below compares different things:\n"
                  f"           direct:  {', '.join(sorted(i.text() for i in direct_ids))}\n"
                  f"           through: {', '.join(sorted(i.text() for i in through_ids))}\n", flush=True)
            status = 1
        overhead = t.median_ms - d.median_ms
        meets = overhead <= TARGET_MS
        print("Summary")
        print(f"  direct  (python3 {app.name}):  {d.line()}")
        print(f"  through (passenger):        {t.line()}")
        print(f"  overhead = median(through) - median(direct) = {overhead:.1f} ms   "
              f"target <= {TARGET_MS:g} ms: {'MET' if meets else 'NOT MET'}")
        if whole:
            print("  (passenger logs whole ms, so the overhead is good to about +-0.5 ms)")
    except (KeyboardInterrupt, Exception) as e:
        status = failed(e)
        if isinstance(e, DirectError):
            direct_log.flush()
            tail = (tmp / "direct.log").read_text(errors="replace").splitlines()[-15:]
            if tail:
                print("the app's output (last lines):\n" + "\n".join("  " + ln for ln in tail), file=sys.stderr)
        args.keep_logs = args.keep_logs or status == 1
    finally:
        ignore_signals()
        stop_all(sessions)
        # Direct app processes still around (and any child of ours an interrupt left without a Popen).
        for p in live:
            kill_group(p.pid)
        for pid in children(os.getpid()):
            kill_group(pid)
        for p in live:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                print(f"cleanup: could not stop pid {p.pid}", file=sys.stderr)
        direct_log.close()
        if args.json and (direct or spawns):
            dstats = Stats.of(direct) if direct else None
            tstats = Stats.of([s.ms for s in spawns]) if len(spawns) == n else None
            doc = {
                "meta": {"count": n, "cpus": os.cpu_count(), "app": str(app),
                         "command": "/bin/sh -c " + shlex.quote("exec " + app_command),
                         "python3_on_path": python3, "app_user": account.name if account else None,
                         "direct_ran": sorted(i.text() for i in direct_ids),
                         "through_ran": sorted(i.text() for i in through_ids),
                         "same_program_and_user": bool(direct_ids) and direct_ids == through_ids,
                         "server_python": platform.python_version(), "target_ms": TARGET_MS,
                         "direct": f"Popen to first successful connect, probed every {PROBE_INTERVAL * 1000:g} ms",
                         "through": f"passenger's logged time to ready; --min-instances {n} --max-pool-size {n}",
                         "complete": dstats is not None and tstats is not None},
                "direct": {"warmup_ms": warmup_ms, "times_ms": direct,
                           "stats": asdict(dstats) if dstats else None},
                "through": {"times_ms": [s.ms for s in spawns], "spawns": [asdict(s) for s in spawns],
                            "stats": asdict(tstats) if tstats else None,
                            "server_stop": asdict(stop) if stop else None, "log_notes": log_notes},
                "overhead_ms": (tstats.median_ms - dstats.median_ms) if dstats and tstats else None,
                "meets_target": (tstats.median_ms - dstats.median_ms <= TARGET_MS) if dstats and tstats else None,
            }
            write_json(args.json, doc)
        remove_logs(tmp, args.keep_logs)
    return status


if __name__ == "__main__":
    sys.exit(main())

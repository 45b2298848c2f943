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
import http.client
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEFAULT_APP = REPO.parent / "shared" / "bench-apps" / "hello.py"
HOST = "127.0.0.1"
READY_RE = re.compile(r"Process \d+ of \S+ is ready")
CLK_TCK = os.sysconf("SC_CLK_TCK")
MIB = 1024 * 1024


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


# --------------------------------------------------------------------------- /proc


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat from field 3 (state) on; None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rindex(")") + 2:].split()


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of the process (all its threads), in seconds."""
    f = _stat_fields(pid)
    if f is None:
        return None
    return (int(f[11]) + int(f[12])) / CLK_TCK


def start_time(pid: int) -> int | None:
    f = _stat_fields(pid)
    return None if f is None else int(f[19])


def rss_kib(pid: int) -> int | None:
    """VmRSS of the process in KiB."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def all_pids() -> Iterator[int]:
    for name in os.listdir("/proc"):
        if name.isdigit():
            yield int(name)


def children(pid: int) -> list[int]:
    """Direct children of pid (the app processes of twistd)."""
    out = []
    for p in all_pids():
        f = _stat_fields(p)
        if f is not None and int(f[1]) == pid:
            out.append(p)
    return sorted(out)


def session_members(sid: int) -> dict[int, int]:
    """pid -> start time of every live process in session sid."""
    out = {}
    for p in all_pids():
        f = _stat_fields(p)
        if f is not None and int(f[3]) == sid and f[0] != "Z":
            out[p] = int(f[19])
    return out


def alive(pid: int, started: int | None) -> bool:
    f = _stat_fields(pid)
    return f is not None and f[0] != "Z" and (started is None or int(f[19]) == started)


# --------------------------------------------------------------------------- processes


class Session:
    """A process started in a new session, so it and everything it spawns can be found and stopped."""

    def __init__(self, label: str, argv: list[str], **kw: Any) -> None:
        self.label = label
        self.proc = subprocess.Popen(argv, start_new_session=True, stdin=subprocess.DEVNULL, **kw)
        self.pid = self.proc.pid
        self.started = start_time(self.pid)

    def running(self) -> bool:
        return self.proc.poll() is None

    def stop(self, grace: float) -> list[str]:
        """TERM the leader, wait up to grace, then KILL whatever of the session is left.

        Returns notes about anything that had to be killed or survived."""
        notes: list[str] = []
        members = session_members(self.pid)  # includes the app processes of twistd
        if self.running():
            try:
                self.proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                notes.append(f"{self.label} (pid {self.pid}) ignored TERM for {grace:.0f}s; sent KILL")
                self.proc.kill()
                self.proc.wait(timeout=5)
        # The apps get TERM from passenger itself; give them a moment, then KILL stragglers.
        members.update(session_members(self.pid))
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(alive(p, s) for p, s in members.items()):
            time.sleep(0.1)
        for p, s in members.items():
            if alive(p, s):
                notes.append(f"{self.label}: pid {p} still running after {grace:.0f}s; sent KILL")
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 2  # KILL takes effect at once; wait for it with a deadline
        while time.monotonic() < deadline and any(alive(p, s) for p, s in members.items()):
            time.sleep(0.02)
        left = [p for p, s in members.items() if alive(p, s)]
        if left:
            notes.append(f"{self.label}: could not stop pids {left}")
        return notes


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, deadline: float, sess: Session) -> None:
    while time.monotonic() < deadline:
        if not sess.running():
            raise RuntimeError(f"{sess.label} exited with status {sess.proc.returncode} before listening")
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{sess.label} was not listening on {HOST}:{port} in time")


def http_get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


class LogWatcher:
    """Reads what twistd appended to its logfile since the last call (survives one rotation)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def new_lines(self) -> list[str]:
        try:
            size = self.path.stat().st_size
        except OSError:
            return []
        text = ""
        if size < self.offset:  # LogFile rotated at 1 MB: finish the old file first
            rotated = self.path.with_name(self.path.name + ".1")
            try:
                with open(rotated, errors="replace") as f:
                    f.seek(self.offset)
                    text = f.read()
            except OSError:
                pass
            self.offset = 0
        with open(self.path, errors="replace") as f:
            f.seek(self.offset)
            chunk = f.read()
            self.offset = f.tell()
        text += chunk
        return text.splitlines()


def notable(lines: list[str]) -> list[str]:
    """Server log lines worth showing: warnings, errors, tracebacks, process churn."""
    keys = ("#warn]", "#error]", "#critical]", "#failure]", "Traceback", "Unhandled",
            "Spawning process", "exited", "killed", "Could not", "503", "502")
    return [ln for ln in lines if any(k in ln for k in keys)]


# --------------------------------------------------------------------------- wrk


def ensure_wrk() -> str:
    path = shutil.which("wrk")
    if path:
        return path
    print("wrk is not installed; installing it with `apt-get install -y wrk` ...", flush=True)
    if os.geteuid() != 0:
        sys.exit("ERROR: wrk is missing and this is not root, so it cannot be installed here.\n"
                 "       Install it (e.g. `sudo apt-get install -y wrk`) and run again.")
    try:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        r = subprocess.run(["apt-get", "install", "-y", "wrk"], env=env, timeout=300,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if r.returncode != 0:  # maybe the package lists are stale or missing
            subprocess.run(["apt-get", "update"], env=env, timeout=300,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            r = subprocess.run(["apt-get", "install", "-y", "wrk"], env=env, timeout=300,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    except (OSError, subprocess.TimeoutExpired) as e:
        sys.exit(f"ERROR: could not install wrk with apt-get: {e}\n"
                 "       Install wrk yourself (https://github.com/wg/wrk) and run again.")
    path = shutil.which("wrk")
    if r.returncode != 0 or not path:
        tail = "\n".join("       " + ln for ln in r.stdout.splitlines()[-8:])
        sys.exit(f"ERROR: `apt-get install -y wrk` failed (status {r.returncode}):\n{tail}\n"
                 "       Install wrk yourself (https://github.com/wg/wrk) and run again.")
    print(f"installed {path}", flush=True)
    return path


_TIME_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_SIZE_UNITS = {"B": 1, "KB": 1024, "MB": MIB, "GB": 1024 * MIB, "TB": 1024 * 1024 * MIB}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if not m:
        raise ValueError(f"unparseable wrk time {text!r}")
    return float(m.group(1)) * _TIME_UNITS[m.group(2)]


def _bytes(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(B|KB|MB|GB|TB)", text)
    if not m:
        raise ValueError(f"unparseable wrk size {text!r}")
    return float(m.group(1)) * _SIZE_UNITS[m.group(2)]


@dataclass
class WrkResult:
    requests: int = 0
    seconds: float = 0.0
    rps: float = 0.0
    mib_per_s: float = 0.0  # wrk's "MB" is 2**20 bytes
    p50_ms: float | None = None
    p99_ms: float | None = None
    connect_errors: int = 0
    read_errors: int = 0
    write_errors: int = 0
    timeouts: int = 0
    non_2xx_3xx: int = 0
    exit_status: int = 0

    @property
    def errors(self) -> int:
        return self.connect_errors + self.read_errors + self.write_errors + self.timeouts + self.non_2xx_3xx

    def error_text(self) -> str:
        if not self.errors and not self.exit_status:
            return "0"
        parts = [f"{k}={v}" for k, v in (("connect", self.connect_errors), ("read", self.read_errors),
                                         ("write", self.write_errors), ("timeout", self.timeouts),
                                         ("non2xx", self.non_2xx_3xx), ("wrk-exit", self.exit_status)) if v]
        return " ".join(parts)


def parse_wrk(out: str) -> WrkResult:
    r = WrkResult()
    if m := re.search(r"^\s*(\d+) requests in ([\d.]+\w+), ([\d.]+\w+) read", out, re.M):
        r.requests = int(m.group(1))
        r.seconds = _ms(m.group(2)) / 1000
    if m := re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M):
        r.rps = float(m.group(1))
    if m := re.search(r"^Transfer/sec:\s+([\d.]+\w+)", out, re.M):
        r.mib_per_s = _bytes(m.group(1)) / MIB
    if m := re.search(r"^\s+50%\s+([\d.]+\w+)", out, re.M):
        r.p50_ms = _ms(m.group(1))
    if m := re.search(r"^\s+99%\s+([\d.]+\w+)", out, re.M):
        r.p99_ms = _ms(m.group(1))
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        r.connect_errors, r.read_errors, r.write_errors, r.timeouts = map(int, m.groups())
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        r.non_2xx_3xx = int(m.group(1))
    return r


def run_wrk(wrk: str, sc: Scenario, port: int, seconds: float, timeout_s: int) -> tuple[WrkResult, str]:
    url = f"http://{HOST}:{port}{sc.path}"
    argv = [wrk, f"-t{sc.threads}", f"-c{sc.connections}", f"-d{max(1, round(seconds))}s",
            f"--timeout={timeout_s}s", "--latency", url]
    # wrk stays in our process group, so Ctrl-C reaches it; run() kills it on any exception.
    p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       timeout=seconds + timeout_s + 30)
    res = parse_wrk(p.stdout)
    res.exit_status = p.returncode
    if p.returncode != 0 or res.requests == 0:
        print(f"    wrk exited with status {p.returncode}; its output:\n" +
              "\n".join("      " + ln for ln in p.stdout.splitlines()), flush=True)
    return res, p.stdout


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
        run_wrk(wrk, sc, port, args.warmup, args.wrk_timeout)
    c0 = cpu_seconds(pid)
    a0 = [cpu_seconds(p) for p in app_pids]
    t0 = time.monotonic()
    res, out = run_wrk(wrk, sc, port, args.duration, args.wrk_timeout)
    wall = time.monotonic() - t0
    c1 = cpu_seconds(pid)
    a1 = [cpu_seconds(p) for p in app_pids]
    cpu = None if c0 is None or c1 is None else 100.0 * (c1 - c0) / wall
    apps = None
    if app_pids and all(x is not None for x in a0 + a1):
        apps = 100.0 * sum(b - a for a, b in zip(a0, a1, strict=True) if a is not None and b is not None) / wall
    return Run(target, res, cpu, apps, wrk_output=out)


def fmt(v: float | None, spec: str = ".0f", suffix: str = "") -> str:
    return "-" if v is None else format(v, spec) + suffix


def fmt_ms(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.2f}ms" if v < 10 else f"{v:.1f}ms" if v < 1000 else f"{v / 1000:.2f}s"


def fmt_mib(kib: int | None) -> str:
    return "-" if kib is None else f"{kib / 1024:.1f} MiB"


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
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(widths[i]) for i, h in enumerate(head)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(widths[i]) for i, c in enumerate(row)).rstrip() for row in rows]
    lines.append(f"server RSS at rest (2 app processes, before any load): {fmt_mib(rest_rss)}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=10, help="seconds per measured wrk run (default 10)")
    ap.add_argument("--warmup", type=float, default=2, help="seconds of warm-up before each run, 0 = none (default 2)")
    ap.add_argument("--app", type=Path, default=DEFAULT_APP,
                    help=f"the hello.py benchmark app (default {DEFAULT_APP})")
    ap.add_argument("--json", type=Path, default=None, metavar="FILE", help="also write the figures to FILE as JSON")
    ap.add_argument("--twistd", type=Path, default=Path(sys.executable).parent / "twistd",
                    help="twistd to run (default: next to this python)")
    ap.add_argument("--scenario", action="append", choices=[s.name for s in SCENARIOS],
                    help="run only this scenario (repeatable; default: all)")
    ap.add_argument("--startup-timeout", type=float, default=60,
                    help="seconds to wait for the server's 2 app processes to be ready (default 60)")
    ap.add_argument("--wrk-timeout", type=int, default=5,
                    help="wrk --timeout in seconds: slower responses count as timeout errors (default 5)")
    ap.add_argument("--keep-logs", action="store_true", help="keep the temporary directory with the logs")
    args = ap.parse_args()
    if args.duration < 1:
        ap.error("--duration must be at least 1 second")
    return args


def check_inputs(args: argparse.Namespace) -> Path:
    """The benchmark app's resolved path; exit with a clear message if it or twistd is missing."""
    app: Path = args.app.resolve()
    if not app.is_file():
        sys.exit(f"ERROR: benchmark app not found: {app} (use --app PATH)")
    if not args.twistd.exists():
        sys.exit(f"ERROR: twistd not found at {args.twistd} (create the venv with `make run`/`make test`, "
                 "or pass --twistd)")
    return app


def main() -> int:
    args = parse_args()
    app = check_inputs(args)
    wrk = ensure_wrk()
    scenarios = [s for s in SCENARIOS if not args.scenario or s.name in args.scenario]
    python = shutil.which("python3") or "python3"
    app_command = "python3 " + shlex.quote(app.name)

    # Ctrl-C raises KeyboardInterrupt; make TERM and HUP unwind the same way so `finally` cleans up.
    def on_signal(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

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
        direct = Session("direct hello.py", ["/bin/sh", "-c", "exec " + app_command], cwd=app.parent,
                         env=dict(os.environ, PORT=str(dport), PYTHONUNBUFFERED="1"),
                         stdout=open(tmp / "direct.log", "wb"), stderr=subprocess.STDOUT)
        sessions.append(direct)
        wait_listening(dport, time.monotonic() + 20, direct)
        st, body = http_get(dport, "/")
        if st != 200:
            raise RuntimeError(f"direct GET / answered {st}: {body[:200]!r}")
        print(f"direct hello.py: pid {direct.pid} on {HOST}:{dport}")

        # Through: the server with 2 app processes.
        sport = free_port()
        argv = [str(args.twistd), "-n", "--logfile", str(log_path), "--pidfile", str(tmp / "twistd.pid"),
                "passenger", "--app-root", str(app.parent), "--app-start-command", app_command,
                "--address", HOST, "--port", str(sport), "--min-instances", "2", "--max-pool-size", "2"]
        print("server: " + " ".join(shlex.quote(a) for a in argv), flush=True)
        server = Session("twistd passenger", argv, cwd=tmp,
                         stdout=open(tmp / "twistd.stdout", "wb"), stderr=subprocess.STDOUT)
        sessions.append(server)
        watcher = LogWatcher(log_path)
        ready = 0
        seen: list[str] = []
        deadline = time.monotonic() + args.startup_timeout
        while ready < 2:
            if not server.running():
                out = (tmp / "twistd.stdout").read_text(errors="replace")
                raise RuntimeError(f"the server exited with status {server.proc.returncode} while starting:\n"
                                   f"{out}\n" + "\n".join(seen + watcher.new_lines()))
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {ready} of 2 app processes were ready after {args.startup_timeout:g}s; "
                                   "server log:\n" + "\n".join(seen + watcher.new_lines()))
            new = watcher.new_lines()
            seen += new
            ready += sum(1 for ln in new if READY_RE.search(ln))
            time.sleep(0.1)
        wait_listening(sport, time.monotonic() + 10, server)
        st, body = http_get(sport, "/")
        if st != 200:
            raise RuntimeError(f"GET / through the server answered {st}: {body[:200]!r}")
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
    except KeyboardInterrupt as e:
        print(f"\ninterrupted ({str(e) or 'Ctrl-C'}); cleaning up", file=sys.stderr)
        status = 130
    except Exception as e:
        print(f"\nERROR: {e}", file=sys.stderr)
        args.keep_logs = True
        status = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # don't let a second Ctrl-C skip the cleanup
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for s in reversed(sessions):
            for note in s.stop(grace=10):
                print("cleanup: " + note, file=sys.stderr)
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
            args.json.write_text(json.dumps(doc, indent=2) + "\n")
            print(f"wrote {args.json}")
        if args.keep_logs:
            print(f"logs kept in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())

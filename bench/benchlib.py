"""Helpers shared by the benchmark scripts in bench/ (stdlib only).

Processes (/proc readings, sessions that can be stopped by pid, the account and
identity app processes run as), installing the tools, running and parsing wrk,
starting ``twistd passenger`` and waiting for its app processes, cleaning up,
and formatting.  See bench/README.md.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEFAULT_APP = REPO.parent / "shared" / "bench-apps" / "hello.py"
HOST = "127.0.0.1"
READY_RE = re.compile(r"Process \d+ of \S+ is ready")
CLK_TCK = os.sysconf("SC_CLK_TCK")
MIB = 1024 * 1024


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


def busy_cpu_seconds(interrupts: bool = False) -> float:
    """CPU time all CPUs spent running processes since boot (user, nice, system; /proc/stat).

    Interrupt and softirq time is left out unless `interrupts`: it is not in any
    process's utime+stime, and on loopback much of it is the traffic of the run
    itself.  Steal is in: a hypervisor taking the CPU disturbs a run as much as
    another process does."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = v
    return (user + nice + system + steal + (irq + softirq if interrupts else 0)) / CLK_TCK


def start_time(pid: int) -> int | None:
    f = _stat_fields(pid)
    return None if f is None else int(f[19])


def session_id(pid: int) -> int | None:
    f = _stat_fields(pid)
    return None if f is None else int(f[3])


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


def cmdline(pid: int) -> list[str]:
    """argv of the process ([] if gone or a kernel thread)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


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


# --------------------------------------------------------------------------- who runs the apps


@dataclass(frozen=True)
class Account:
    """An account app processes run as."""

    uid: int
    gid: int
    name: str
    home: str
    shell: str
    groups: tuple[int, ...]

    def environment(self) -> dict[str, str]:
        return {"USER": self.name, "LOGNAME": self.name, "HOME": self.home, "SHELL": self.shell}


def app_account(root: Path) -> Account | None:
    """The account passenger runs the app as (Passenger's user switching, passenger-gls.md section 5).

    Only a server running as root switches: to the owner of the app root, never to
    root (``nobody`` then).  None: the apps run as this script's user.  The callers
    check it against the server's app processes afterwards (with ``identity``).
    """
    if os.geteuid() != 0:
        return None
    owner = root.stat().st_uid
    try:
        pw = pwd.getpwuid(owner) if owner != 0 else pwd.getpwnam("nobody")
    except KeyError:
        pw = pwd.getpwnam("nobody")
    return Account(pw.pw_uid, pw.pw_gid, pw.pw_name, pw.pw_dir, pw.pw_shell,
                   tuple(os.getgrouplist(pw.pw_name, pw.pw_gid)))


@dataclass(frozen=True)
class Identity:
    """Who a process runs as and what it runs: to check that both sides start the same thing."""

    uid: int | None
    exe: str | None

    def text(self) -> str:
        name = "?"
        if self.uid is not None:
            try:
                name = pwd.getpwuid(self.uid).pw_name
            except KeyError:
                name = str(self.uid)
        return f"{self.exe or '?'} as {name}"


def identity(pid: int) -> Identity:
    uid = exe = None
    try:
        exe = os.path.realpath(os.readlink(f"/proc/{pid}/exe"))
    except OSError:
        pass
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Uid:"):
                    uid = int(line.split()[1])
                    break
    except OSError:
        pass
    return Identity(uid, exe)


# --------------------------------------------------------------------------- processes


class Session:
    """A process started in a new session, so it and everything it spawns can be found and stopped.

    A program that daemonizes into sessions of its own (Passenger's watchdog) can
    have those sessions adopted, by pid, so that ``stop`` sweeps them up as well."""

    def __init__(self, label: str, argv: list[str], **kw: Any) -> None:
        self.label = label
        self.proc = subprocess.Popen(argv, start_new_session=True, stdin=subprocess.DEVNULL, **kw)
        self.pid = self.proc.pid
        self.started = start_time(self.pid)
        self.adopted: dict[int, int | None] = {}  # session leader pid -> its start time

    def running(self) -> bool:
        return self.proc.poll() is None

    def adopt(self, leader: int) -> None:
        """Also stop the session led by pid `leader` (a daemon this session's program started)."""
        if leader not in self.adopted and leader != self.pid:
            self.adopted[leader] = start_time(leader)

    def members(self) -> dict[int, int]:
        """pid -> start time of every live process in this session and the adopted ones."""
        out = session_members(self.pid)
        for leader, started in self.adopted.items():
            if started is None or start_time(leader) in (started, None):
                out.update(session_members(leader))
        return out

    def stop(self, grace: float) -> list[str]:
        """TERM the leader, wait up to grace, then KILL whatever of the session is left.

        Returns notes about anything that had to be killed or survived."""
        notes: list[str] = []
        members = self.members()  # includes the app processes of twistd
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
        members.update(self.members())
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


def http_get(port: int, path: str, headers: dict[str, str] | None = None, timeout: float = 10,
             host: str = HOST) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over a Unix socket (an admin API socket)."""

    def __init__(self, path: str, timeout: float = 5) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.unix_path)
        self.sock = sock


def unix_http_get(path: str, url: str, timeout: float = 5) -> tuple[int, bytes]:
    conn = UnixHTTPConnection(path, timeout)
    try:
        conn.request("GET", url)
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


NOTABLE = ("#warn]", "#error]", "#critical]", "#failure]", "Traceback", "Unhandled",
           "Spawning process", "exited", "killed", "Could not", "503", "502")


def notable(lines: list[str], also: tuple[str, ...] = ()) -> list[str]:
    """Server log lines worth showing: warnings, errors, tracebacks, process churn (and any of `also`)."""
    keys = NOTABLE + also
    return [ln for ln in lines if any(k in ln for k in keys)]


def install_signal_handlers() -> None:
    """Ctrl-C raises KeyboardInterrupt; make TERM and HUP unwind the same way so `finally` cleans up."""
    def on_signal(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)


def ignore_signals() -> None:
    """Called first in `finally`: don't let a second Ctrl-C or TERM skip the cleanup."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def failed(e: BaseException) -> int:
    """The exit status for an exception that ended a run (130 for Ctrl-C/TERM/HUP, else 1), said on stderr."""
    if isinstance(e, KeyboardInterrupt):
        print(f"\ninterrupted ({str(e) or 'Ctrl-C'}); cleaning up", file=sys.stderr)
        return 130
    print(f"\nERROR: {e}", file=sys.stderr)
    return 1


def stop_all(sessions: list[Session], grace: float = 10) -> None:
    """Stop every session, the last started first, printing a cleanup note for anything that had to be killed."""
    for s in reversed(sessions):
        for note in s.stop(grace=grace):
            print("cleanup: " + note, file=sys.stderr)


def write_json(path: Path, doc: dict[str, Any], default: Any = None) -> None:
    path.write_text(json.dumps(doc, indent=2, default=default) + "\n")
    print(f"wrote {path}")


def remove_logs(tmp: Path, keep: bool) -> None:
    """Delete the run's temporary directory, or say where it was kept."""
    if keep:
        print(f"logs kept in {tmp}", file=sys.stderr)
    else:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- the server under test


def arg_parser(doc: str | None, app_help: str = "the benchmark app") -> argparse.ArgumentParser:
    """A parser described by the first paragraph of the script's docstring, with the options
    every bench script has: --app, --twistd, --json, --keep-logs."""
    ap = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--app", type=Path, default=DEFAULT_APP, help=f"{app_help} (default {DEFAULT_APP})")
    ap.add_argument("--twistd", type=Path, default=Path(sys.executable).parent / "twistd",
                    help="twistd to run (default: next to this python)")
    ap.add_argument("--json", type=Path, default=None, metavar="FILE", help="also write every figure to FILE as JSON")
    ap.add_argument("--keep-logs", action="store_true", help="keep the temporary directory with the logs")
    return ap


def check_inputs(args: argparse.Namespace) -> Path:
    """The benchmark app's resolved path; exit with a clear message if it or twistd is missing."""
    app: Path = args.app.resolve()
    if not app.is_file():
        sys.exit(f"ERROR: benchmark app not found: {app} (use --app PATH)")
    if not args.twistd.exists():
        sys.exit(f"ERROR: twistd not found at {args.twistd} (create the venv with `make run`/`make test`, "
                 "or pass --twistd)")
    return app


def twistd_argv(twistd: Path, tmp: Path, app_root: Path, app_command: str, port: int, instances: int,
                extra: list[str] | None = None) -> list[str]:
    """``twistd -n passenger`` serving app_root on HOST:port with exactly `instances` app processes."""
    return [str(twistd), "-n", "--logfile", str(tmp / "twistd.log"), "--pidfile", str(tmp / "twistd.pid"),
            "passenger", "--app-root", str(app_root), "--app-start-command", app_command,
            "--address", HOST, "--port", str(port), "--min-instances", str(instances),
            "--max-pool-size", str(instances), *(extra or [])]


def start_app(label: str, app_command: str, cwd: Path, env: dict[str, str], log: Path, **kw: Any) -> Session:
    """One app process started the way passenger starts it (``/bin/sh -c "exec COMMAND"``, PORT in env),
    its output going to `log`; kw goes to Popen (user, group, ...)."""
    with open(log, "wb") as out:
        return Session(label, ["/bin/sh", "-c", "exec " + app_command], cwd=cwd, env=env,
                       stdout=out, stderr=subprocess.STDOUT, **kw)


def start_twistd(argv: list[str], tmp: Path, port: int, instances: int, timeout: float,
                 sessions: list[Session], check_path: str | None = "/",
                 **kw: Any) -> tuple[Session, LogWatcher]:
    """Start the server (argv from twistd_argv, logging to tmp/twistd.log) and wait until the log
    shows `instances` ready app processes, it listens, and GET check_path answers 200 (unless None).

    The session is appended to `sessions` as soon as it exists, for the caller's cleanup.
    kw goes to Popen (e.g. preexec_fn)."""
    stdout_path = tmp / "twistd.stdout"
    with open(stdout_path, "wb") as out:
        server = Session("twistd passenger", argv, cwd=tmp, stdout=out, stderr=subprocess.STDOUT, **kw)
    sessions.append(server)
    watcher = LogWatcher(tmp / "twistd.log")
    ready = 0
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while ready < instances:
        if not server.running():
            out_text = stdout_path.read_text(errors="replace")
            raise RuntimeError(f"the server exited with status {server.proc.returncode} while starting:\n"
                               f"{out_text}\n" + "\n".join(seen + watcher.new_lines()))
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {ready} of {instances} app processes were ready after {timeout:g}s; "
                               "server log:\n" + "\n".join(seen + watcher.new_lines()))
        new = watcher.new_lines()
        seen += new
        ready += sum(1 for ln in new if READY_RE.search(ln))
        time.sleep(0.1)
    wait_listening(port, time.monotonic() + 10, server)
    if check_path is not None:
        st, body = http_get(port, check_path)
        if st != 200:
            raise RuntimeError(f"GET {check_path} through the server answered {st}: {body[:200]!r}")
    return server, watcher


# --------------------------------------------------------------------------- installing tools


def ensure_installed(tools: dict[str, str]) -> dict[str, str]:
    """Path of each command in `tools` (command -> Debian package).

    Missing ones are installed with ``apt-get install -y`` when running as root;
    otherwise this says what to install and exits with status 1."""
    missing = {cmd: pkg for cmd, pkg in tools.items() if not shutil.which(cmd)}
    if missing:
        pkgs = sorted(set(missing.values()))
        names = ", ".join(sorted(missing))
        if os.geteuid() != 0:
            sys.exit(f"ERROR: {names} {'is' if len(missing) == 1 else 'are'} missing and this is not root, "
                     "so the script cannot install them.\n"
                     f"       Install them (e.g. `sudo apt-get install -y {' '.join(pkgs)}`) and run again.")
        print(f"{names} not installed; installing with `apt-get install -y {' '.join(pkgs)}` ...", flush=True)
        try:
            env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
            argv = ["apt-get", "install", "-y", *pkgs]
            r = subprocess.run(argv, env=env, timeout=600,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            if r.returncode != 0:  # maybe the package lists are stale or missing
                subprocess.run(["apt-get", "update"], env=env, timeout=300,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                r = subprocess.run(argv, env=env, timeout=600,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        except (OSError, subprocess.TimeoutExpired) as e:
            sys.exit(f"ERROR: could not install {' '.join(pkgs)} with apt-get: {e}\n"
                     "       Install them yourself and run again.")
        still = [cmd for cmd in missing if not shutil.which(cmd)]
        if r.returncode != 0 or still:
            tail = "\n".join("       " + ln for ln in r.stdout.splitlines()[-8:])
            sys.exit(f"ERROR: `apt-get install -y {' '.join(pkgs)}` failed (status {r.returncode}):\n{tail}\n"
                     "       Install them yourself and run again.")
        print("installed " + ", ".join(str(shutil.which(cmd)) for cmd in missing), flush=True)
    return {cmd: str(shutil.which(cmd)) for cmd in tools}


# --------------------------------------------------------------------------- wrk


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


def add_wrk_options(ap: argparse.ArgumentParser, warmup: float) -> None:
    """--duration, --warmup and --wrk-timeout (check them with check_wrk_options once parsed)."""
    ap.add_argument("--duration", type=float, default=10, help="seconds per measured wrk run (default 10)")
    ap.add_argument("--warmup", type=float, default=warmup,
                    help=f"seconds of warm-up before each run, 0 = none (default {warmup:g})")
    ap.add_argument("--wrk-timeout", type=int, default=5,
                    help="wrk --timeout in seconds: slower responses count as timeout errors (default 5)")


def check_wrk_options(ap: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.duration < 1:
        ap.error("--duration must be at least 1 second")
    if args.warmup < 0:
        ap.error("--warmup must not be negative")


def wrk_argv(wrk: str, url: str, threads: int, connections: int, seconds: float, timeout_s: int,
             script: Path | None = None) -> list[str]:
    argv = [wrk, f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s",
            f"--timeout={timeout_s}s", "--latency"]
    if script is not None:
        argv += ["-s", str(script)]
    return [*argv, url]


def start_wrk(argv: list[str]) -> subprocess.Popen[str]:
    """wrk stays in our process group, so Ctrl-C reaches it; finish_wrk kills it on any exception."""
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish_wrk(p: subprocess.Popen[str], seconds: float, timeout_s: int) -> tuple[WrkResult, str]:
    """Wait for a wrk started by start_wrk (bounded) and parse what it printed."""
    try:
        out, _ = p.communicate(timeout=seconds + timeout_s + 30)
    except BaseException:
        p.kill()
        p.wait()
        raise
    res = parse_wrk(out)
    res.exit_status = p.returncode
    if p.returncode != 0 or res.requests == 0:
        print(f"    wrk exited with status {p.returncode}; its output:\n" +
              "\n".join("      " + ln for ln in out.splitlines()), flush=True)
    return res, out


def run_wrk(wrk: str, url: str, threads: int, connections: int, seconds: float, timeout_s: int,
            script: Path | None = None) -> tuple[WrkResult, str]:
    argv = wrk_argv(wrk, url, threads, connections, seconds, timeout_s, script)
    return finish_wrk(start_wrk(argv), seconds, timeout_s)


# --------------------------------------------------------------------------- formatting


def fmt(v: float | None, spec: str = ".0f", suffix: str = "") -> str:
    return "-" if v is None else format(v, spec) + suffix


def fmt_ms(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.2f}ms" if v < 10 else f"{v:.1f}ms" if v < 1000 else f"{v / 1000:.2f}s"


def fmt_mib(kib: int | None) -> str:
    return "-" if kib is None else f"{kib / 1024:.1f} MiB"


def table(head: list[str], rows: list[list[str]]) -> str:
    """Left-aligned columns, a dashed rule under the header."""
    widths = [max([len(h), *(len(row[i]) for row in rows)]) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(widths[i]) for i, h in enumerate(head)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(widths[i]) for i, c in enumerate(row)).rstrip() for row in rows]
    return "\n".join(lines)

"""``--hook EVENT=COMMAND`` on a real server: which events run the command, with what environment.

A recorder hook (a script written into the test's directory) appends its
PASSENGER_* environment as one JSON line per run; the tests wait for the lines
they expect (with a deadline).  Also: a failing hook is logged and changes
nothing, and a hook that never ends blocks nothing.
"""

from __future__ import annotations

import json
import re
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.integration.conftest import (
    APPS,
    RawRequest,
    Server,
    echo_app_args,
    kill_pids,
    pid_alive,
    wait_for,
    world_dir,
)
from tests.integration.test_admin_api import APP, Admin, app_get, find_instance, pool_pids

Serve = Callable[..., Server]
EVENTS = ("attached_process", "detached_process", "spawn_failed", "queue_full_error")

RECORDER = """#!{python}
import json, os
record = {{k: v for k, v in os.environ.items() if k.startswith("PASSENGER_")}}
record["cwd"] = os.getcwd()
record["instance_dir_exists"] = os.path.isdir(os.environ.get("PASSENGER_INSTANCE_DIR", "/nonexistent"))
with open({out!r}, "a") as f:
    f.write(json.dumps(record) + "\\n")
"""


def recorder(tmp_path: Path) -> tuple[Path, Path]:
    """A hook script that records its environment: (the script, the file it writes)."""
    out = tmp_path / "hook-runs.jsonl"
    script = tmp_path / "record-hook"
    script.write_text(RECORDER.format(python=sys.executable, out=str(out)))
    script.chmod(0o755)
    return script, out


def runs(out: Path) -> list[dict[str, Any]]:
    try:
        return [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        return []


def wait_run(out: Path, event: str, timeout: float = 10.0, **env: str) -> dict[str, Any]:
    """The first recorded run of ``event`` whose PASSENGER_<NAME> variables have these values."""
    def found() -> dict[str, Any] | None:
        for run in runs(out):
            if run.get("PASSENGER_HOOK_NAME") == event and all(
                    run.get(f"PASSENGER_{name.upper()}") == value for name, value in env.items()):
                return run
        return None

    return wait_for(found, timeout, what=f"a run of the {event} hook with {env}")


def start(serve: Serve, hooks: dict[str, str], *extra: str, ready: int = 1) -> tuple[Server, Admin, Path]:
    registry = world_dir("registry", 0o755)
    args = echo_app_args("--instance-registry-dir", str(registry), *extra)
    for event, command in hooks.items():
        args += ["--hook", f"{event}={command}"]
    server = serve(args, ready=ready)
    directory = find_instance(registry, server)
    return server, Admin(str(directory / "agents.s" / "core_api")), directory


def all_hooks(script: Path) -> dict[str, str]:
    return dict.fromkeys(EVENTS, str(script))


def test_attached_process(serve: Serve, tmp_path: Path) -> None:
    script, out = recorder(tmp_path)
    _, admin, directory = start(serve, all_hooks(script))
    [pid] = pool_pids(admin)
    run = wait_run(out, "attached_process")
    assert run["PASSENGER_PROCESS_PID"] == str(pid)
    assert run["PASSENGER_APP_ROOT"] == str(APPS)
    assert run["PASSENGER_APP_GROUP_NAME"] == APP
    assert run["PASSENGER_INSTANCE_DIR"] == str(directory)
    assert run["instance_dir_exists"] is True
    assert run["cwd"] == str(APPS)
    assert "PASSENGER_ERROR_ID" not in run and "PASSENGER_QUEUE_LENGTH" not in run
    assert [r["PASSENGER_HOOK_NAME"] for r in runs(out)] == ["attached_process"]


def test_detached_process_after_a_detach(serve: Serve, tmp_path: Path) -> None:
    script, out = recorder(tmp_path)
    _, admin, directory = start(serve, all_hooks(script))
    [old] = pool_pids(admin)
    wait_run(out, "attached_process", process_pid=str(old))
    assert admin.post("/pool/detach_process.json", {"pid": old}).status == 200
    run = wait_run(out, "detached_process")
    assert run["PASSENGER_PROCESS_PID"] == str(old)
    assert run["PASSENGER_APP_GROUP_NAME"] == APP and run["PASSENGER_APP_ROOT"] == str(APPS)
    assert run["PASSENGER_INSTANCE_DIR"] == str(directory)
    # Its replacement is attached in turn.
    [new] = wait_for(lambda: (pids := pool_pids(admin)) and old not in pids and pids, 15, what="the replacement")
    wait_run(out, "attached_process", process_pid=str(new))
    events = [(r["PASSENGER_HOOK_NAME"], r["PASSENGER_PROCESS_PID"]) for r in runs(out)]
    assert sorted(events) == sorted([("attached_process", str(old)), ("detached_process", str(old)),
                                     ("attached_process", str(new))])


def test_detached_process_after_a_restart(serve: Serve, tmp_path: Path) -> None:
    script, out = recorder(tmp_path)
    _, admin, _ = start(serve, {"detached_process": str(script), "attached_process": str(script)})
    [old] = pool_pids(admin)
    assert admin.post("/pool/restart_app_group.json", {"name": APP, "restart_method": "rolling"}).status == 200
    wait_run(out, "detached_process", process_pid=str(old))
    [new] = wait_for(lambda: (pids := pool_pids(admin)) and old not in pids and pids, 15, what="the new process")
    wait_run(out, "attached_process", process_pid=str(new))


def test_spawn_failed(serve: Serve, tmp_path: Path) -> None:
    script, out = recorder(tmp_path)
    registry = world_dir("registry", 0o755)
    server = serve(["--app-root", str(APPS), "--app-start-command", "sh -c 'echo about to fail; exit 3'",
                    "--instance-registry-dir", str(registry), "--hook", f"spawn_failed={script}"], ready=0)
    [logged] = server.wait_log(r"Could not spawn process for application .*\[Error ID: ([^;\]\s]+)")
    run = wait_run(out, "spawn_failed", error_id=logged.group(1))
    assert run["PASSENGER_APP_GROUP_NAME"] == APP
    assert run["PASSENGER_APP_ROOT"] == str(APPS)
    assert run["PASSENGER_ERROR_CATEGORY"]
    assert run["PASSENGER_ERROR_MESSAGE"]
    assert run["PASSENGER_INSTANCE_DIR"] == str(find_instance(registry, server))
    # Every recorded failure names an error ID the log has.
    logged_ids = set(re.findall(r"\[Error ID: ([^;\]\s]+)", server.log()))
    assert {r["PASSENGER_ERROR_ID"] for r in runs(out)} <= logged_ids


def test_queue_full_error(serve: Serve, tmp_path: Path) -> None:
    script, out = recorder(tmp_path)
    server, admin, _ = start(serve, all_hooks(script), "--concurrency", "1", "--max-pool-size", "1",
                             "--max-instances", "1", "--max-request-queue-size", "1")
    holder = RawRequest(server.port, "/sleep?ms=1500")
    waiter = refused = None
    try:
        wait_for(lambda: admin.pool()["groups"][0]["processes"][0]["sessions"] == 1, 5, what="the process busy")
        waiter = RawRequest(server.port, "/pid")
        wait_for(lambda: admin.pool()["groups"][0]["get_wait_list_size"] == 1, 5, what="one request queued")
        assert not any(r["PASSENGER_HOOK_NAME"] == "queue_full_error" for r in runs(out))
        refused = RawRequest(server.port, "/pid")
        assert refused.response(5).status == 503
        run = wait_run(out, "queue_full_error")
        assert run["PASSENGER_APP_GROUP_NAME"] == APP
        assert run["PASSENGER_QUEUE_LENGTH"] == "1"
        assert holder.response(10).status == 200
        assert waiter.response(10).status == 200
    finally:
        for request in (holder, waiter, refused):
            if request is not None:
                request.close()
    assert [r["PASSENGER_HOOK_NAME"] for r in runs(out)].count("queue_full_error") == 1


def test_a_failing_hook_is_logged_and_the_server_keeps_serving(serve: Serve, tmp_path: Path) -> None:
    command = "echo hook says no; echo hook complains >&2; exit 7"
    # One process at most: with its concurrency unknown, a busy process makes the pool grow (group.wants_process),
    # and a second process ready in time would make the one to detach ambiguous.
    server, admin, _ = start(serve, {"attached_process": command}, "--max-instances", "1")
    [failed] = server.wait_log(r"Hook attached_process \((.*)\) failed: (.*exit code 7.*)\n")
    assert failed.group(1) == command
    log = server.log()
    after = log[failed.end():]
    assert "hook says no" in after and "hook complains" in after
    # The server goes on as if nothing happened, and runs the hook again on the next event.
    for _ in range(5):
        assert app_get(server, "/pid")[0] == 200
    [old] = pool_pids(admin)
    assert admin.post("/pool/detach_process.json", {"pid": old}).status == 200
    wait_for(lambda: (pids := pool_pids(admin)) and old not in pids, 15, what="the replacement")
    server.wait_log(r"Hook attached_process \(.*\) failed: .*exit code 7", count=2)
    assert app_get(server, "/pid")[0] == 200


def test_a_hook_that_succeeds_quietly_logs_nothing(serve: Serve, tmp_path: Path) -> None:
    script, out = recorder(tmp_path)
    server, _, _ = start(serve, {"attached_process": str(script)})
    wait_run(out, "attached_process")
    assert "Hook attached_process" not in server.log()


def hung_hook(tmp_path: Path) -> tuple[str, Path]:
    """A hook that writes its pid and then never ends (on its own)."""
    pids = tmp_path / "hung-hook-pids"
    return f"echo $$ >> {pids}; exec sleep 120", pids


def hung_pids(pids: Path) -> list[int]:
    try:
        return [int(line) for line in pids.read_text().split()]
    except FileNotFoundError:
        return []


def kill_all(pids: Path) -> None:
    kill_pids(hung_pids(pids))


def test_a_hook_that_never_ends_blocks_nothing(serve: Serve, tmp_path: Path) -> None:
    command, pids = hung_hook(tmp_path)
    try:
        server, admin, _ = start(serve, {"attached_process": command}, "--max-instances", "1")  # as above
        [hook] = wait_for(lambda: hung_pids(pids), 10, what="the hook to start")
        assert pid_alive(hook)
        started = time.monotonic()
        for _ in range(20):
            assert app_get(server, "/pid", timeout=5)[0] == 200
        assert time.monotonic() - started < 5
        assert admin.get("/ping.json").status == 200
        # The pool goes on too: a detached process is replaced (and its hook starts) while the first hook runs.
        [old] = pool_pids(admin)
        assert admin.post("/pool/detach_process.json", {"pid": old}).status == 200
        wait_for(lambda: (p := pool_pids(admin)) and old not in p, 15, what="the replacement")
        wait_for(lambda: len(hung_pids(pids)) == 2, 10, what="the second hook to start")
        assert all(pid_alive(pid) for pid in hung_pids(pids))
        assert app_get(server, "/pid")[0] == 200
    finally:
        kill_all(pids)


def test_hooks_still_running_end_with_the_server(serve: Serve, tmp_path: Path) -> None:
    """A clean stop leaves no hook process behind (nothing would ever kill it after the server is gone)."""
    command, pids = hung_hook(tmp_path)
    try:
        server, _, _ = start(serve, {"attached_process": command})
        [hook] = wait_for(lambda: hung_pids(pids), 10, what="the hook to start")
        started = time.monotonic()
        assert server.stop(signal.SIGTERM, timeout=15) == 0
        assert time.monotonic() - started < 10  # the stop does not wait for the hook's 60 s limit
        wait_for(lambda: not pid_alive(hook), 3, what=f"the hook {hook} to end with the server")
    finally:
        kill_all(pids)


def test_a_hook_that_reads_stdin_gets_end_of_file(serve: Serve, tmp_path: Path) -> None:
    """A hook's stdin carries nothing: one that reads it (``cat``, ``read``) must not wait for the 60 s kill."""
    done = tmp_path / "stdin-done"
    start(serve, {"attached_process": f"cat > /dev/null; echo done > {done}"})
    wait_for(done.exists, 3, what="the hook to read its stdin to the end and finish")


def test_hooks_run_by_a_shutdown_see_the_server_still_there(serve: Serve, tmp_path: Path) -> None:
    """A clean stop detaches every process; a detached_process hook it runs must run while the instance directory
    (which the hook is told about) still exists, not after the server has gone."""
    script, out = recorder(tmp_path)
    server, admin, directory = start(serve, {"detached_process": str(script)})
    [pid] = pool_pids(admin)
    assert server.stop(signal.SIGTERM, timeout=15) == 0
    assert not directory.exists()
    try:
        run = wait_run(out, "detached_process", timeout=3, process_pid=str(pid))
    except AssertionError:
        return  # not run for a shutdown at all: fine
    assert run["instance_dir_exists"] is True

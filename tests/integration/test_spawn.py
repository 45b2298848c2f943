"""The spawn handshake as Passenger's SpawningKit does it: work directory, Kuria apps, spawn errors."""

from __future__ import annotations

import json
import re
import stat
import urllib.request
from pathlib import Path

from tests.integration.conftest import APP_PYTHON, APPS, echo_app_args, world_dir


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def _listening(server):  # type: ignore[no-untyped-def]
    """A server started with ready=0 once it accepts connections."""
    server.wait_log(r"passenger \S+ serving")
    return server


def _work_dirs(tmp: Path) -> list[Path]:
    return sorted(tmp.glob("passenger.spawn.*"))


def test_work_directory_is_private_complete_and_removed_after_success(serve, tmp_path: Path) -> None:
    spawn_dir = world_dir("spawns", 0o755)
    kept = serve(echo_app_args("--spawn-dir", str(spawn_dir), "--debug-spawn-dir"))
    [work] = _work_dirs(spawn_dir)
    assert stat.S_IMODE(work.stat().st_mode) == 0o700
    args = json.loads((work / "args.json").read_text())
    assert args["app_root"] == str(APPS)
    assert args["generic_app"] is True
    assert isinstance(args["expected_start_port"], int)
    assert (work / "args" / "expected_start_port").read_text() == str(args["expected_start_port"])
    assert stat.S_ISFIFO((work / "response" / "finish").lstat().st_mode)
    assert (work / "response" / "error").is_dir()
    for name in ("envvars", "user_info", "ulimits"):
        assert (work / "envdump" / name).stat().st_size > 0, name
    assert (work / "envdump" / "annotations").is_dir()
    assert f"PASSENGER_SPAWN_WORK_DIR={work}" in (work / "envdump" / "envvars").read_text()
    # The app side recorded its first steps through the shell prologue.
    steps = work / "response" / "steps"
    assert (steps / "subprocess_before_first_exec" / "state").read_text().strip() == "STEP_PERFORMED"
    status, _, body = _get(kept.url + "/echo")
    assert status == 200
    assert json.loads(body)["env"]["PORT"] == str(args["expected_start_port"])
    kept.stop()

    removed_dir = world_dir("spawns2", 0o755)
    serve(echo_app_args("--spawn-dir", str(removed_dir), "--min-instances", "2"), ready=2)
    assert _work_dirs(removed_dir) == []


def test_kuria_app_uses_the_fifo_and_a_unix_socket(serve, tmp_path: Path) -> None:
    keep = world_dir("kuria")
    server = serve(["--app-root", str(APPS), "--app-start-command", f"{APP_PYTHON} kuria_app.py",
                    "--app-supports-kuria-protocol", "--envvar", f"KURIA_TEST_DIR={keep}"])
    status, _, body = _get(server.url + "/")
    assert status == 200, body
    seen = json.loads(body)
    assert seen["port_env"] is None  # Kuria apps get no PORT
    assert seen["args"]["generic_app"] is False
    assert "expected_start_port" not in seen["args"]
    assert re.search(r"Spawning process \d+ of \S+ \(Kuria protocol\)", server.log())


def test_kuria_from_passengerfile(serve, tmp_path: Path) -> None:
    app = world_dir("app", 0o755)
    (app / "kuria_app.py").write_text((APPS / "kuria_app.py").read_text())
    (app / "Passengerfile.json").write_text(json.dumps(
        {"app_start_command": f"{APP_PYTHON} kuria_app.py", "app_supports_kuria_protocol": True}))
    keep = world_dir("keep")
    server = serve(["--app-root", str(app), "--envvar", f"KURIA_TEST_DIR={keep}"])
    status, _, body = _get(server.url + "/")
    assert status == 200 and json.loads(body)["port_env"] is None


def test_kuria_failure_shows_the_apps_own_error(serve) -> None:
    server = serve(["--app-root", str(APPS), "--app-start-command", f"{APP_PYTHON} kuria_fail.py",
                    "--app-supports-kuria-protocol", "--environment", "development"], ready=0)
    _listening(server)
    status, headers, body = _get(server.url + "/")
    assert status == 500
    assert headers["content-type"].startswith("text/html")
    page = body.decode()
    assert "cannot reach the database at db.internal:5432" in page
    assert "The &lt;app&gt; needs its database &amp; it did not answer." in page  # .txt is escaped
    assert "<b>database</b>" in page  # .html is taken as it is
    assert "giving up: no database" in page  # the app's output
    assert "IO_ERROR" in page
    match = re.search(r"\[Error ID: ([0-9a-f]{8}); details saved to (\S+)\]", server.log())
    assert match, server.log()
    assert match.group(1) in page
    assert Path(match.group(2)).read_text().count("cannot reach the database") >= 1


def test_error_pages_generic_in_production_detailed_in_development_json_on_request(serve) -> None:
    failing = ["--app-root", str(APPS), "--app-start-command", "sh -c 'echo secret-output >&2; exit 3'"]
    production = serve(failing, ready=0)
    _listening(production)
    status, headers, body = _get(production.url + "/")
    assert status == 500
    assert headers["cache-control"] == "no-cache, no-store, must-revalidate"
    error_id = re.search(rb"[0-9a-f]{8}", body)
    assert error_id and error_id.group().decode() in production.log()
    assert b"secret-output" not in body  # the generic page shows only the error ID
    status, headers, body = _get(production.url + "/", {"Accept": "application/json"})
    assert status == 500 and headers["content-type"] == "application/json"
    doc = json.loads(body)
    assert doc["status"] == "error" and re.fullmatch(r"[0-9a-f]{8}", doc["error_id"])
    assert "output" not in doc

    development = serve([*failing, "--environment", "development", "--spawn-error-status", "503"], ready=0)
    _listening(development)
    status, _, body = _get(development.url + "/")
    assert status == 503
    assert b"secret-output" in body and b"exited prematurely" in body
    assert b"SPAWNING_KIT_HANDSHAKE_PERFORM" in body  # the journey


def test_custom_error_page(serve, tmp_path: Path) -> None:
    page = tmp_path / "sorry.html"
    page.write_text("<h1>We will be right back</h1>")
    server = serve(["--app-root", str(APPS), "--app-start-command", "exit 1", "--custom-error-page", str(page)], ready=0)
    _listening(server)
    status, _, body = _get(server.url + "/")
    assert status == 500 and body == b"<h1>We will be right back</h1>"


def test_invalid_properties_is_a_spawn_error_that_says_what_is_wrong(serve) -> None:
    command = ("sh -c 'echo {\\\"sockets\\\": [{\\\"address\\\": \\\"tcp://127.0.0.1:1\\\"}]} "
               "> $PASSENGER_SPAWN_WORK_DIR/response/properties.json; exec " + APP_PYTHON + " echo_app.py'")
    server = serve(["--app-root", str(APPS), "--app-start-command", command, "--environment", "development"], ready=0)
    _listening(server)
    status, _, body = _get(server.url + "/")
    assert status == 500
    assert b"properties.json" in body and b"&#x27;protocol&#x27; must be a non-empty string" in body.replace(b"'", b"&#x27;")


def test_requests_get_the_last_error_at_once_during_back_off(serve) -> None:
    server = serve(["--app-root", str(APPS), "--app-start-command", "exit 1"], ready=0)
    _listening(server)
    server.wait_log(r"Could not spawn process")
    ids = set()
    for _ in range(3):
        status, _, body = _get(server.url + "/", {"Accept": "application/json"})
        assert status == 500
        ids.add(json.loads(body)["error_id"])
    spawned = len(server.app_pids())
    assert spawned <= 3, f"{spawned} spawns for 3 requests: back-off should prevent a spawn storm"
    assert len(ids) < 3 or spawned == 3  # requests during back-off share the last error

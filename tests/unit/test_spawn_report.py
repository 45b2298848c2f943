"""Spawn failure reports: escaping, secret masking, the generic/detailed split, JSON, content negotiation, saving."""

from __future__ import annotations

import json
import os
import re
import stat
import time
from pathlib import Path
from typing import Any

import attrs
import pytest

from passenger.spawn.report import (
    CATEGORIES,
    SECRET,
    JourneyStep,
    SpawnReport,
    default_texts,
    effective_texts,
    log_line,
    mask_secrets,
    new_error_id,
    prefers_json,
    render_detailed_html,
    render_generic_html,
    render_json,
    render_text,
    save_report,
)

XSS = "<script>alert(1)</script>"
JOURNEY = (
    JourneyStep("SPAWNING_KIT_PREPARATION", "STEP_PERFORMED", 0.0042),
    JourneyStep("SUBPROCESS_APP_LOAD_OR_EXEC", "STEP_PERFORMED", 1.234),
    JourneyStep("SUBPROCESS_LISTEN", "STEP_ERRORED", 60.0),
    JourneyStep("SUBPROCESS_FINISH", "STEP_NOT_STARTED", None),
)


def make(**overrides: Any) -> SpawnReport:
    fields: dict[str, Any] = {
        "app": "shop",
        "app_root": "/srv/shop",
        "error_id": "0badc0de",
        "category": "TIMEOUT_ERROR",
        "summary": "A timeout occurred while spawning an application process",
        "problem_html": "",
        "solution_html": "",
        "journey": JOURNEY,
        "output": ("booting...", "listening on 0.0.0.0:9999"),
        "envvars": {"PATH": "/usr/bin", "PORT": "5000", "DB_PASSWORD": "hunter2", "REDIS_URL": "redis://u:hunter3@h:6379/0"},
        "user_info": "uid=1000(shop) gid=1000(shop)",
        "ulimits": "open files 1024",
        "annotations": {"note": "hello"},
        "pid": 4242,
        "created": 1_700_000_000.0,
    }
    fields.update(overrides)
    return SpawnReport(**fields)


def hostile() -> SpawnReport:
    return make(
        app=XSS,
        app_root=f"/srv/{XSS}",
        summary=f"died: {XSS}",
        advanced=XSS,
        journey=(JourneyStep(XSS, XSS, 0.1), *JOURNEY),
        output=(XSS, "\x1b[31mred\x1b[0m", '"><img src=x onerror=alert(2)>'),
        envvars={XSS: XSS, "HOME": f"/home/{XSS}"},
        user_info=XSS,
        ulimits=XSS,
        annotations={XSS: XSS},
    )


# --- escaping -------------------------------------------------------------------------------------------------------


def test_detailed_page_escapes_everything_from_the_app_and_environment() -> None:
    page = render_detailed_html(hostile()).decode()
    assert "<script" not in page
    assert "<img" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    # Every untrusted field made it onto the page, escaped: the count proves none was silently dropped.
    assert page.count("&lt;script&gt;") >= 10
    assert "&quot;&gt;&lt;img src=x onerror=alert(2)&gt;" in page
    assert "\x1b" not in page and "red" in page


def test_problem_and_solution_html_are_trusted_markup() -> None:
    page = render_detailed_html(make(problem_html="<p>Broke <b>badly</b></p>", solution_html="<p>Fix <i>it</i></p>"))
    assert b"<p>Broke <b>badly</b></p>" in page
    assert b"<p>Fix <i>it</i></p>" in page


def test_detailed_page_is_self_contained() -> None:
    page = render_detailed_html(make()).decode()
    assert "<title>Web application could not be started</title>" in page
    assert "<style>" in page
    assert not re.search(r"<(script|link|iframe|img)\b", page)
    assert not re.search(r"(src|href)=\"?(https?:)?//", page)


def test_undecodable_output_does_not_break_rendering() -> None:
    report = make(output=("bad byte: \udcff",), envvars={"X": "\udcfe"})
    assert b"bad byte: ?" in render_detailed_html(report)
    assert json.loads(render_json(report, detailed=True))["output"] == ["bad byte: \udcff"]
    assert "bad byte" in render_text(report)


def test_text_and_log_line_neutralise_control_characters() -> None:
    report = make(summary="boom\nFAKE LOG LINE\r\x1b[2J", output=("\x1b[31mred\x1b[0m\x07",))
    line = log_line(report, "/tmp/x.html")
    assert "\n" not in line and "\r" not in line and "\x1b" not in line
    assert "boom FAKE LOG LINE" in line
    text = render_text(report)
    assert "\x1b" not in text and "\x07" not in text and "\r" not in text
    assert "red" in text


# --- secrets --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "SECRET_KEY_BASE",
        "db_password",
        "MYSQL_PASSWD",
        "GITHUB_TOKEN",
        "Api_Key",
        "AWS_CREDENTIALS",
        "PRIVATE_PEM",
        "BASIC_AUTH",
        "SESSION_STORE",
        "COOKIE_SIGNING",
        "SENTRY_DSN",
        "DATABASE_URL",
    ],
)
def test_mask_secrets_by_name(name: str) -> None:
    assert mask_secrets({name: "s3cr3t", "PATH": "/usr/bin"}) == {name: SECRET, "PATH": "/usr/bin"}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("postgres://u:pw@h/db", f"postgres://u:{SECRET}@h/db"),
        ("redis://:pw@h:6379/0", f"redis://:{SECRET}@h:6379/0"),
        ("amqp://u:p@ss@h/vhost", f"amqp://u:{SECRET}@h/vhost"),
        ("a=http://x:1@h1 b=https://y:2@h2/", f"a=http://x:{SECRET}@h1 b=https://y:{SECRET}@h2/"),
        ("http://user@h/path", "http://user@h/path"),
        ("https://h/p?q=a:b@c", "https://h/p?q=a:b@c"),
        ("http://h:8080/", "http://h:8080/"),
        ("plain:value@thing", "plain:value@thing"),
    ],
)
def test_mask_secrets_in_url_userinfo(value: str, expected: str) -> None:
    assert mask_secrets({"UPSTREAM": value}) == {"UPSTREAM": expected}


def test_mask_secrets_does_not_touch_its_input() -> None:
    env = {"API_TOKEN": "t"}
    mask_secrets(env)
    assert env == {"API_TOKEN": "t"}


@pytest.mark.parametrize(
    "render",
    [
        lambda r: render_detailed_html(r).decode(),
        lambda r: render_json(r, detailed=True).decode(),
        render_text,
    ],
    ids=["html", "json", "text"],
)
def test_secrets_never_reach_any_rendering(render: Any) -> None:
    out = render(make())
    assert "hunter2" not in out and "hunter3" not in out
    assert "DB_PASSWORD" in out and "REDIS_URL" in out and "/usr/bin" in out


# --- generic page ---------------------------------------------------------------------------------------------------


def test_generic_page_shows_the_error_id_and_nothing_about_the_app() -> None:
    page = render_generic_html(hostile()).decode()
    assert "We're sorry, but something went wrong." in page
    assert "0badc0de" in page
    assert "--friendly-error-pages" in page and "--environment development" in page
    for leak in ("script", "alert", "/usr/bin", "PATH", "srv", "SUBPROCESS_LISTEN", "listening on", "died", "uid="):
        assert leak not in page, leak


# --- JSON -----------------------------------------------------------------------------------------------------------


def test_json_generic_has_only_status_id_and_summary() -> None:
    doc = json.loads(render_json(make(), detailed=False))
    assert doc == {
        "status": "error",
        "error_id": "0badc0de",
        "summary": "A timeout occurred while spawning an application process",
    }


def test_json_detailed_shape() -> None:
    raw = render_json(make(problem_html="<p>It <b>broke</b> &amp; died</p>", solution_html=""), detailed=True)
    assert b"<" not in raw and b">" not in raw  # escaped as \u003c, \u003e
    doc = json.loads(raw)
    assert doc["status"] == "error" and doc["error_id"] == "0badc0de" and doc["category"] == "TIMEOUT_ERROR"
    assert doc["problem"] == "It broke & died"
    assert "listens on 127.0.0.1:$PORT" in doc["solution"] and "<" not in doc["solution"]
    assert doc["journey"][2] == {"name": "SUBPROCESS_LISTEN", "state": "STEP_ERRORED", "duration_ms": 60000.0, "failed": True}
    assert doc["journey"][3]["duration_ms"] is None
    assert [s["failed"] for s in doc["journey"]] == [False, False, True, False]
    assert doc["output"] == ["booting...", "listening on 0.0.0.0:9999"]
    assert doc["envvars"]["DB_PASSWORD"] == SECRET
    assert doc["envvars"]["REDIS_URL"] == f"redis://u:{SECRET}@h:6379/0"


def test_json_keeps_hostile_values_as_data() -> None:
    doc = json.loads(render_json(hostile(), detailed=True))
    assert doc["output"][0] == XSS
    assert doc["envvars"][XSS] == XSS


# --- content negotiation --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "content_type", "expected"),
    [
        (b"application/json", None, True),
        (b"text/html,application/json;q=0.9", None, False),
        (b"application/json;q=0.9,text/html;q=0.8", None, True),
        (b"text/html;q=0.5, application/json", None, True),
        (b"*/*", None, False),
        (b"*/*", b"application/json", False),
        (b"application/*", None, True),
        (b"application/json, */*;q=0.1", None, True),
        (b"text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", None, False),
        (b"application/json;q=0, text/html;q=0", None, False),
        (b"application/json;q=bogus, text/plain", None, False),
        (b"APPLICATION/JSON", None, True),
        (None, b"application/json", True),
        (None, b"Application/JSON; charset=utf-8", True),
        (b"", b"application/json", True),
        (None, b"text/html", False),
        (None, b"application/jsonp", False),
        (None, None, False),
    ],
)
def test_prefers_json(accept: bytes | None, content_type: bytes | None, expected: bool) -> None:
    assert prefers_json(accept, content_type) is expected


# --- saving ---------------------------------------------------------------------------------------------------------


def test_save_report_writes_the_detailed_page_0600(tmp_path: Path) -> None:
    old = os.umask(0o277)  # would strip the owner's write bit; the file must still be exactly 0600
    try:
        path = save_report(make(), str(tmp_path))
    finally:
        os.umask(old)
    assert path == str(tmp_path / "passenger-error-0badc0de.html")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert Path(path).read_bytes() == render_detailed_html(make())


def test_save_report_refuses_to_follow_a_planted_symlink(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    link = tmp_path / "passenger-error-0badc0de.html"
    link.symlink_to(victim)
    with pytest.raises(OSError):
        save_report(make(), str(tmp_path))
    assert victim.read_text() == "precious"
    assert link.is_symlink()


def test_save_report_refuses_a_dangling_symlink(tmp_path: Path) -> None:
    target = tmp_path / "created-by-attacker"
    (tmp_path / "passenger-error-0badc0de.html").symlink_to(target)
    with pytest.raises(OSError):
        save_report(make(), str(tmp_path))
    assert not target.exists()


def test_save_report_never_overwrites(tmp_path: Path) -> None:
    existing = tmp_path / "passenger-error-0badc0de.html"
    existing.write_text("first report")
    with pytest.raises(FileExistsError):
        save_report(make(), str(tmp_path))
    assert existing.read_text() == "first report"


def test_save_report_removes_a_partly_written_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_write(fd: int, data: Any) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", failing_write)
    with pytest.raises(OSError, match="No space"):
        save_report(make(), str(tmp_path))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("bad", ["../../etc/x", "0BADC0DE", "0badc0d", "0badc0de0", ""])
def test_error_id_must_be_8_hex_digits(bad: str) -> None:
    with pytest.raises(ValueError):
        make(error_id=bad)


def test_category_is_validated() -> None:
    with pytest.raises(ValueError):
        make(category="OOPS")


# --- default texts --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("category", CATEGORIES)
@pytest.mark.parametrize("step", [None, "SPAWNING_KIT_PREPARATION", "SUBPROCESS_OS_SHELL", "SUBPROCESS_LISTEN"])
def test_default_texts_exist_for_every_category_and_step(category: str, step: str | None) -> None:
    problem, solution = default_texts(category, step)
    assert problem.startswith("<p>") and problem.endswith("</p>")
    assert solution.startswith("<p>") and len(solution) > 40


def test_default_texts_timeout_while_listening() -> None:
    problem, solution = default_texts("TIMEOUT_ERROR", "SUBPROCESS_LISTEN")
    assert "did not start listening on its port in time" in problem
    assert "127.0.0.1:$PORT" in solution and "--start-timeout" in solution


def test_default_texts_timeout_outside_the_app_names_the_step() -> None:
    problem, solution = default_texts("TIMEOUT_ERROR", "SUBPROCESS_OS_SHELL")
    assert "login shell" in problem
    assert "~/.bashrc" in solution


def test_default_texts_exit_before_ready() -> None:
    problem, solution = default_texts("INTERNAL_ERROR", "SUBPROCESS_APP_LOAD_OR_EXEC")
    assert "exited before it started listening" in problem
    assert "daemonize" in solution and "PORT=3000" in solution


def test_default_texts_internal_error_in_passenger_itself() -> None:
    problem, solution = default_texts("INTERNAL_ERROR", "SPAWNING_KIT_PREPARATION")
    assert "internal error" in problem and "preparing" in problem
    assert "bug" in solution


@pytest.mark.parametrize(
    ("category", "problem_word", "solution_word"),
    [
        ("FILE_SYSTEM_ERROR", "file system", "searchable"),
        ("OPERATING_SYSTEM_ERROR", "operating system", "ulimits"),
        ("IO_ERROR", "I/O error", "disk"),
    ],
)
def test_default_texts_per_category(category: str, problem_word: str, solution_word: str) -> None:
    problem, solution = default_texts(category, "SUBPROCESS_SPAWN_ENV_SETUPPER_AFTER_SHELL")
    assert problem_word in problem and "environment" in problem
    assert solution_word in solution


def test_default_texts_differ_between_categories() -> None:
    problems = {default_texts(c, "SUBPROCESS_LISTEN")[0] for c in CATEGORIES}
    assert len(problems) == len(CATEGORIES)


def test_default_texts_escape_an_unknown_step_name() -> None:
    problem, _ = default_texts("IO_ERROR", XSS)
    assert "<script>" not in problem and "&lt;script&gt;" in problem


def test_empty_texts_are_filled_from_category_and_failed_step() -> None:
    problem, solution = effective_texts(make(category="INTERNAL_ERROR", problem_html="", solution_html="<p>mine</p>"))
    assert "exited before it started listening" in problem
    assert solution == "<p>mine</p>"
    page = render_detailed_html(make()).decode()
    assert "did not start listening on its port in time" in page


# --- journey --------------------------------------------------------------------------------------------------------


def journey_rows(page: str) -> dict[str, str]:
    table = page[page.index('<table class="journey">') :]
    table = table[: table.index("</table>")]
    rows = re.findall(r"<tr[^>]*>.*?</tr>", table)
    return {re.findall(r"<td>(.*?)</td>", row)[0]: row for row in rows if "<td>" in row}


def test_journey_table_highlights_the_failed_step() -> None:
    rows = journey_rows(render_detailed_html(make()).decode())
    assert list(rows) == [s.name for s in JOURNEY]
    assert rows["SUBPROCESS_LISTEN"].startswith('<tr class="failed">')
    assert "STEP_ERRORED" in rows["SUBPROCESS_LISTEN"] and "60,000 ms" in rows["SUBPROCESS_LISTEN"]
    assert [name for name, row in rows.items() if 'class="failed"' in row] == ["SUBPROCESS_LISTEN"]
    assert "4.2 ms" in rows["SPAWNING_KIT_PREPARATION"]
    assert "1,234 ms" in rows["SUBPROCESS_APP_LOAD_OR_EXEC"]
    assert "<td>-</td>" in rows["SUBPROCESS_FINISH"]


def test_journey_without_an_errored_step_highlights_nothing() -> None:
    journey = (JourneyStep("SUBPROCESS_LISTEN", "STEP_IN_PROGRESS", None),)
    page = render_detailed_html(make(journey=journey)).decode()
    assert 'class="failed"' not in page
    assert "SUBPROCESS_LISTEN" in page


def test_detailed_page_shows_all_sections() -> None:
    page = render_detailed_html(make(advanced="errno=ETIMEDOUT")).decode()
    for expected in (
        "A timeout occurred while spawning an application process",
        "0badc0de",
        "/srv/shop",
        "4242",
        "listening on 0.0.0.0:9999",
        "errno=ETIMEDOUT",
        "uid=1000(shop)",
        "open files 1024",
        "<h3>note</h3>",
        "2023-11-14 22:13:20 UTC",
    ):
        assert expected in page, expected


def test_text_report_marks_the_failed_step() -> None:
    text = render_text(make())
    failed = [line for line in text.splitlines() if line.lstrip().startswith("->")]
    assert len(failed) == 1 and "SUBPROCESS_LISTEN" in failed[0] and "STEP_ERRORED" in failed[0]
    assert "Error ID: 0badc0de" in text
    assert f"DB_PASSWORD={SECRET}" in text
    assert "did not start listening on its port in time" in text and "<p>" not in text


# --- ids, log line, data --------------------------------------------------------------------------------------------


def test_new_error_id() -> None:
    ids = {new_error_id() for _ in range(50)}
    assert len(ids) == 50
    assert all(re.fullmatch(r"[0-9a-f]{8}", i) for i in ids)
    make(error_id=ids.pop())  # accepted by the report


def test_log_line() -> None:
    assert log_line(make(), "/tmp/passenger-error-0badc0de.html") == (
        "Could not spawn process for application /srv/shop (shop): "
        "A timeout occurred while spawning an application process "
        "[Error ID: 0badc0de; details saved to /tmp/passenger-error-0badc0de.html]"
    )
    assert log_line(make(), None).endswith("[Error ID: 0badc0de]")


def test_report_snapshots_its_inputs_and_stamps_creation_time() -> None:
    env = {"A": "1"}
    output = ["x"]
    report = make(envvars=env, output=output)
    env["A"] = "2"
    output.append("y")
    assert report.envvars == {"A": "1"} and report.output == ("x",)
    fields = {k: v for k, v in attrs.asdict(report, recurse=False).items() if k != "created"}
    before = time.time()
    created = SpawnReport(**fields).created
    assert before <= created <= time.time()

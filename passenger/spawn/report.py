"""Spawn failure reports: the data Passenger keeps in a SpawnException, and its ErrorRenderer.

A report is built once, when a spawn fails, and then rendered several ways:
the detailed HTML page (friendly error pages and the file saved for the
administrator), the generic "something went wrong" page (production), JSON
(API clients) and plain text (the log).  Nothing here touches the reactor; the
only I/O is :func:`save_report`.

Trust contract (same as Passenger's ``response/error/`` files):

* ``problem_html`` and ``solution_html`` are *trusted* HTML, inserted as is.
  They come from :func:`default_texts` or from the app's
  ``problem_description.html`` / ``solution_description.html``.  A caller that
  reads the ``*.txt`` variants must pass them through :func:`html.escape`
  first (Passenger does the same), otherwise app text becomes markup.
* Everything else (summary, advanced details, output, environment, user info,
  ulimits, annotations, step names, paths) is untrusted and is always escaped
  here, and the environment is always shown through :func:`mask_secrets`.
"""

from __future__ import annotations

import html
import json
import os
import re
import secrets
import time
from collections.abc import Iterable, Mapping
from html.parser import HTMLParser
from types import MappingProxyType
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from passenger.config import AppConfig

CATEGORIES = ("INTERNAL_ERROR", "FILE_SYSTEM_ERROR", "OPERATING_SYSTEM_ERROR", "IO_ERROR", "TIMEOUT_ERROR")

STEP_NOT_STARTED = "STEP_NOT_STARTED"
STEP_IN_PROGRESS = "STEP_IN_PROGRESS"
STEP_PERFORMED = "STEP_PERFORMED"
STEP_ERRORED = "STEP_ERRORED"
STEP_STATES = (STEP_NOT_STARTED, STEP_IN_PROGRESS, STEP_PERFORMED, STEP_ERRORED)

SECRET = "<SECRET>"

#: Name fragments that mark an environment variable as confidential (matched case-insensitively).
SECRET_NAME_PARTS = (
    "SECRET",
    "PASSWORD",
    "PASSWD",
    "TOKEN",
    "KEY",
    "CREDENTIAL",
    "PRIVATE",
    "AUTH",
    "SESSION",
    "COOKIE",
    "DSN",
    "DATABASE_URL",
)

_ERROR_ID = re.compile(r"[0-9a-f]{8}")
# scheme://user:password@ -- the password may hold raw '@' (greedy up to the last '@' of the authority).
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/?#@\s]*):(?P<password>[^/?#\s]*)@")
# ANSI CSI/OSC escape sequences, then any other C0 control or DEL except tab: terminal and log injection.
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_CONTROL_KEEP_NEWLINES = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def _valid_category(_instance: object, _attribute: object, value: str) -> None:
    if value not in CATEGORIES:
        raise ValueError(f"unknown error category {value!r}; expected one of {', '.join(CATEGORIES)}")


def _valid_error_id(_instance: object, _attribute: object, value: str) -> None:
    # The ID becomes part of a file name in save_report: anything but 8 hex digits could escape the directory.
    if not _ERROR_ID.fullmatch(value):
        raise ValueError(f"error_id must be 8 lowercase hex digits, not {value!r}")


def _frozen_mapping(value: Mapping[str, str]) -> Mapping[str, str]:
    """Snapshot the caller's mapping so a frozen report cannot change underneath its renderings."""
    return MappingProxyType(dict(value))


def _steps(value: Iterable[JourneyStep]) -> tuple[JourneyStep, ...]:
    return tuple(value)


def _lines(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


@attrs.frozen
class JourneyStep:
    """One step of the spawn journey, as read back from ``steps/<name>/``."""

    name: str
    state: str
    duration: float | None  # seconds; None when not started or unknown


@attrs.frozen
class SpawnReport:
    """Everything known about one failed spawn.

    ``created`` defaults to the time the report is built (a factory, not a
    value frozen at import time).  Mappings are copied into read-only
    snapshots, sequences into tuples.
    """

    app: str
    app_root: str
    error_id: str = attrs.field(validator=_valid_error_id)
    category: str = attrs.field(validator=_valid_category)
    summary: str
    problem_html: str
    solution_html: str
    advanced: str = ""
    journey: tuple[JourneyStep, ...] = attrs.field(default=(), converter=_steps)
    output: tuple[str, ...] = attrs.field(default=(), converter=_lines)
    envvars: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen_mapping)
    user_info: str = ""
    ulimits: str = ""
    annotations: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen_mapping)
    pid: int | None = None
    created: float = attrs.field(factory=time.time)


def new_error_id() -> str:
    """A fresh error ID: 4 random bytes in hex, as Passenger does, so log lines and pages can be matched up."""
    return secrets.token_hex(4)


def _secret_name(name: str) -> bool:
    upper = name.upper()
    return any(part in upper for part in SECRET_NAME_PARTS)


def mask_secrets(env: Mapping[str, str]) -> dict[str, str]:
    """The environment with confidential values replaced, fit to show on an error page.

    Masks by name (``SECRET_NAME_PARTS``) and, for every other value, the
    password part of any ``scheme://user:password@host`` URL.  Over-masking is
    accepted: a page that hides too much is a nuisance, one that leaks is a breach.
    """
    masked: dict[str, str] = {}
    for name, value in env.items():
        if _secret_name(name):
            masked[name] = SECRET
        else:
            masked[name] = _URL_PASSWORD.sub(lambda m: f"{m['head']}:{SECRET}@", value)
    return masked


# What each journey step is doing, in words an app developer understands.
_STEP_DOING = {
    "SPAWNING_KIT_PREPARATION": "preparing to start the application",
    "SPAWNING_KIT_FORK_SUBPROCESS": "starting the application's process",
    "SPAWNING_KIT_HANDSHAKE_PERFORM": "waiting for the application to become ready",
    "SPAWNING_KIT_FINISH": "finishing the application's start",
    "SUBPROCESS_BEFORE_FIRST_EXEC": "setting up the new process",
    "SUBPROCESS_SPAWN_ENV_SETUPPER_BEFORE_SHELL": "setting up the application's environment",
    "SUBPROCESS_OS_SHELL": "loading the login shell's environment",
    "SUBPROCESS_SPAWN_ENV_SETUPPER_AFTER_SHELL": "setting up the application's environment",
    "SUBPROCESS_EXEC_WRAPPER": "running the language wrapper",
    "SUBPROCESS_WRAPPER_PREPARATION": "preparing the language wrapper",
    "SUBPROCESS_APP_LOAD_OR_EXEC": "running the application's start command",
    "SUBPROCESS_LISTEN": "waiting for the application to listen on its port",
    "SUBPROCESS_FINISH": "finishing the application's start",
}
# Steps in which the app's own code runs: a failure there is (almost always) the app's.
_APP_STEPS = frozenset(
    {"SUBPROCESS_APP_LOAD_OR_EXEC", "SUBPROCESS_LISTEN", "SUBPROCESS_FINISH", "SPAWNING_KIT_HANDSHAKE_PERFORM"}
)

_REPRODUCE = (
    "To reproduce, run the start command yourself in the application root with <code>PORT</code> set, "
    "e.g. <code>PORT=3000 sh -c 'exec &lt;start command&gt;'</code>."
)


def default_texts(category: str, failed_step: str | None) -> tuple[str, str]:
    """Generic (problem, solution) HTML for when the app supplied no ``error/`` files.

    Chosen from the category and the step that failed, like Passenger's
    ``SpawnException`` defaults; an unknown category is treated as INTERNAL_ERROR.
    """
    in_app = failed_step is None or failed_step in _APP_STEPS
    doing = html.escape(
        _STEP_DOING.get(failed_step, f"performing step {failed_step}") if failed_step else "starting the application"
    )
    if category == "TIMEOUT_ERROR":
        if in_app:
            return (
                "<p>The application did not start listening on its port in time.</p>",
                "<p>Make sure it listens on <code>127.0.0.1:$PORT</code> (the <code>PORT</code> environment variable "
                "passenger sets) and stays in the foreground. Check its output below for errors. If it just needs longer "
                "to boot, raise <code>--start-timeout</code>.</p>",
            )
        return (
            f"<p>A timeout occurred while {doing}.</p>",
            "<p>Something in this step is hanging. Check that your shell startup files (<code>~/.bashrc</code>, "
            "<code>~/.profile</code>) do not wait for input, and that the system is not overloaded. "
            "If the machine is merely slow, raise <code>--start-timeout</code>.</p>",
        )
    if category == "FILE_SYSTEM_ERROR":
        return (
            f"<p>A file system operation failed while {doing}.</p>",
            "<p>Check that the application root and every directory above it exist and are readable and searchable by "
            "the user the application runs as, and that the spawn directory (<code>$TMPDIR</code>) is writable. "
            "The details below name the path.</p>",
        )
    if category == "OPERATING_SYSTEM_ERROR":
        return (
            f"<p>The operating system refused an operation while {doing}.</p>",
            "<p>Check that the configured user and group exist, that the start command exists and is executable, and "
            "that the system has enough free memory and process slots (see the ulimits below).</p>",
        )
    if category == "IO_ERROR":
        return (
            f"<p>An I/O error occurred while {doing}.</p>",
            "<p>Check that the disk is not full and that the system is healthy (see the system log). "
            "The details below name the failing operation.</p>",
        )
    if in_app:
        return (
            "<p>The application process exited before it started listening on its port.</p>",
            "<p>Read the application output below for the reason. The start command must keep running in the "
            f"foreground (it must not daemonize) and listen on <code>127.0.0.1:$PORT</code>. {_REPRODUCE}</p>",
        )
    return (
        f"<p>An internal error occurred while {doing}.</p>",
        "<p>This is probably a bug in passenger or a problem with the system it runs on. "
        "Check the log for details and include the error ID when reporting it.</p>",
    )


def failed_step(journey: Iterable[JourneyStep]) -> JourneyStep | None:
    """The first step in error, which is the one Passenger blames; None when no step recorded an error."""
    return next((step for step in journey if step.state == STEP_ERRORED), None)


def effective_texts(report: SpawnReport) -> tuple[str, str]:
    """The report's problem/solution HTML, each filled from :func:`default_texts` when the app left it empty."""
    if report.problem_html and report.solution_html:
        return report.problem_html, report.solution_html
    step = failed_step(report.journey)
    problem, solution = default_texts(report.category, step.name if step else None)
    return report.problem_html or problem, report.solution_html or solution


class _TextExtractor(HTMLParser):
    """Collects the text of an HTML fragment, dropping tags, scripts and styles."""

    _BLOCKS = frozenset({"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "pre", "table", "ul", "ol"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style"):
            self._skip += 1
        elif tag in self._BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self._skip = max(0, self._skip - 1)
        elif tag in self._BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def html_to_text(fragment: str) -> str:
    """Plain text of trusted HTML, for JSON and log renderings where markup is noise."""
    parser = _TextExtractor()
    parser.feed(fragment)
    parser.close()
    lines = (" ".join(line.split()) for line in "".join(parser.parts).splitlines())
    return "\n".join(line for line in lines if line)


def _printable(text: str, keep_newlines: bool = True) -> str:
    """Untrusted text without ANSI sequences or control characters, so it cannot rewrite a terminal or a log line."""
    text = _ANSI.sub("", text)
    if keep_newlines:
        return _CONTROL_KEEP_NEWLINES.sub("\ufffd", text.replace("\r\n", "\n"))
    return _CONTROL.sub(" ", text)


def _one_line(text: str) -> str:
    return " ".join(_printable(text, keep_newlines=False).split())


def _ms(duration: float | None) -> str:
    if duration is None:
        return "-"
    ms = duration * 1000.0
    return f"{ms:.1f} ms" if ms < 10 else f"{ms:,.0f} ms"


def _timestamp(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))


def _esc(text: str) -> str:
    return html.escape(_printable(text), quote=True)


def _output_text(report: SpawnReport) -> str:
    return "\n".join(line.rstrip("\r\n") for line in report.output)


_CSS = """
body{font:15px/1.45 -apple-system,"Segoe UI",Helvetica,Arial,sans-serif;color:#222;background:#f4f4f4;margin:0}
main{max-width:960px;margin:24px auto;background:#fff;padding:24px 32px;border-top:6px solid #c0392b}
h1{margin:0 0 8px;font-size:26px;color:#c0392b}
h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
h3{font-size:15px;margin:16px 0 4px}
.summary{font-size:17px;font-weight:600}
.meta{color:#555}
.meta code,td code{background:#f0f0f0;padding:0 4px}
pre{background:#272822;color:#f8f8f2;padding:12px;overflow:auto;white-space:pre-wrap;word-break:break-all;font-size:13px}
table{border-collapse:collapse;width:100%;font-size:14px}
th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #eee;vertical-align:top}
td.value{font-family:monospace;word-break:break-all}
tr.failed td{background:#fdecea;color:#a11;font-weight:700}
.none{color:#888;font-style:italic}
footer{margin-top:32px;color:#888;font-size:13px}
""".strip()

# Trusted app HTML is still confined: no scripts, no remote loads, no forms, inline CSS only.
_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'none'; base-uri 'none'"


def _page(title: str, body: str) -> bytes:
    page = (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
        f"<meta http-equiv=\"Content-Security-Policy\" content=\"{_CSP}\">\n"
        "<meta name=\"robots\" content=\"noindex, nofollow\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style></head>\n"
        f"<body><main>\n{body}\n<footer>passenger</footer></main></body></html>\n"
    )
    # Lone surrogates (undecodable app output) must not turn an error page into a crash.
    return page.encode("utf-8", "replace")


def _pre(text: str) -> str:
    return f"<pre>{_esc(text)}</pre>" if text.strip() else '<p class="none">(none)</p>'


def _journey_html(journey: tuple[JourneyStep, ...]) -> str:
    if not journey:
        return '<p class="none">(no journey recorded)</p>'
    failed = failed_step(journey)
    rows = []
    for step in journey:
        mark = ' class="failed"' if step is failed else ""
        rows.append(f"<tr{mark}><td>{_esc(step.name)}</td><td>{_esc(step.state)}</td><td>{_ms(step.duration)}</td></tr>")
    return (
        "<table class=\"journey\"><thead><tr><th>Step</th><th>State</th><th>Duration</th></tr></thead><tbody>\n"
        + "\n".join(rows)
        + "\n</tbody></table>"
    )


def _env_html(env: Mapping[str, str]) -> str:
    if not env:
        return '<p class="none">(none)</p>'
    rows = "\n".join(
        f"<tr><td><code>{_esc(name)}</code></td><td class=\"value\">{_esc(value)}</td></tr>"
        for name, value in sorted(mask_secrets(env).items())
    )
    return f"<table class=\"env\"><thead><tr><th>Name</th><th>Value</th></tr></thead><tbody>\n{rows}\n</tbody></table>"


def _annotations_html(annotations: Mapping[str, str]) -> str:
    if not annotations:
        return '<p class="none">(none)</p>'
    return "\n".join(f"<h3>{_esc(name)}</h3>{_pre(value)}" for name, value in sorted(annotations.items()))


def render_detailed_html(report: SpawnReport) -> bytes:
    """The friendly error page: everything an app developer needs to fix the spawn, secrets masked.

    Shown only with friendly error pages on, and saved to disk for the administrator.
    """
    problem, solution = effective_texts(report)
    pid = str(report.pid) if report.pid is not None else "(not started)"
    body = f"""<h1>Web application could not be started</h1>
<p class="summary">{_esc(report.summary)}</p>
<p class="meta">Error ID: <code>{_esc(report.error_id)}</code> &middot; Category: <code>{_esc(report.category)}</code>
&middot; {_esc(_timestamp(report.created))}</p>
<table class="meta"><tbody>
<tr><th>Application</th><td>{_esc(report.app)}</td></tr>
<tr><th>Application root</th><td><code>{_esc(report.app_root)}</code></td></tr>
<tr><th>PID</th><td>{_esc(pid)}</td></tr>
</tbody></table>
<h2>Problem</h2>
<div class="problem">{problem}</div>
<h2>Solution</h2>
<div class="solution">{solution}</div>
<h2>Spawn journey</h2>
{_journey_html(report.journey)}
<h2>Application output</h2>
{_pre(_output_text(report))}
<h2>Advanced details</h2>
{_pre(report.advanced)}
<h2>Environment variables</h2>
{_env_html(report.envvars)}
<h2>User info</h2>
{_pre(report.user_info)}
<h2>Ulimits</h2>
{_pre(report.ulimits)}
<h2>Annotations</h2>
{_annotations_html(report.annotations)}"""
    return _page("Web application could not be started", body)


def render_generic_html(report: SpawnReport) -> bytes:
    """The production page: only the error ID, so a visitor learns nothing about the app or the host."""
    body = f"""<h1>We're sorry, but something went wrong.</h1>
<p>The issue has been logged for investigation. Please try again later.</p>
<p class="meta">Error ID: <code>{_esc(report.error_id)}</code></p>
<p class="meta">If you are the administrator: the log has the details under this error ID. To see them on this page,
start passenger with <code>--environment development</code> or <code>--friendly-error-pages</code>.</p>"""
    return _page("We're sorry, but something went wrong", body)


def _json_bytes(document: object) -> bytes:
    # ASCII-only and '<', '>', '&' escaped: safe against content sniffing and lone surrogates alike.
    text = json.dumps(document, ensure_ascii=True, sort_keys=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").encode("ascii")


def render_json(report: SpawnReport, detailed: bool) -> bytes:
    """The report for API clients; the generic form carries only status, error ID and summary.

    Detailed form adds ``category``, ``problem``/``solution`` (plain text),
    ``advanced``, ``journey`` (``name``, ``state``, ``duration_ms`` or null,
    ``failed``), ``output`` (list of lines) and ``envvars`` (masked).
    """
    document: dict[str, object] = {"status": "error", "error_id": report.error_id, "summary": report.summary}
    if detailed:
        problem, solution = effective_texts(report)
        failed = failed_step(report.journey)
        document.update(
            category=report.category,
            problem=html_to_text(problem),
            solution=html_to_text(solution),
            advanced=report.advanced,
            journey=[
                {
                    "name": step.name,
                    "state": step.state,
                    "duration_ms": None if step.duration is None else round(step.duration * 1000.0, 3),
                    "failed": step is failed,
                }
                for step in report.journey
            ],
            output=[line.rstrip("\r\n") for line in report.output],
            envvars=mask_secrets(report.envvars),
        )
    return _json_bytes(document)


def _indent(text: str, prefix: str = "  ") -> str:
    text = _printable(text).rstrip("\n")
    if not text.strip():
        return f"{prefix}(none)"
    return "\n".join(prefix + line for line in text.splitlines())


def render_text(report: SpawnReport) -> str:
    """The detailed report as plain text, for the log file and terminals; control characters neutralised."""
    problem, solution = effective_texts(report)
    failed = failed_step(report.journey)
    width = max((len(step.name) for step in report.journey), default=4)
    journey = "\n".join(
        f"  {'->' if step is failed else '  '} {_one_line(step.name):<{width}}  {_one_line(step.state):<16}  "
        f"{_ms(step.duration)}"
        for step in report.journey
    )
    env = "\n".join(f"{name}={value}" for name, value in sorted(mask_secrets(report.envvars).items()))
    annotations = "\n".join(
        f"  {_one_line(name)}:\n{_indent(value, '    ')}" for name, value in sorted(report.annotations.items())
    )
    sections = [
        "Web application could not be started",
        f"Summary:  {_one_line(report.summary)}",
        f"Error ID: {report.error_id}",
        f"Category: {report.category}",
        f"App:      {_one_line(report.app)}",
        f"Root:     {_one_line(report.app_root)}",
        f"PID:      {report.pid if report.pid is not None else '(not started)'}",
        f"Time:     {_timestamp(report.created)}",
        "",
        "Problem:",
        _indent(html_to_text(problem)),
        "Solution:",
        _indent(html_to_text(solution)),
        "Advanced details:",
        _indent(report.advanced),
        "Spawn journey:",
        journey or "  (none)",
        "Application output:",
        _indent(_output_text(report)),
        "Environment variables:",
        _indent(env),
        "User info:",
        _indent(report.user_info),
        "Ulimits:",
        _indent(report.ulimits),
        "Annotations:",
        annotations or "  (none)",
    ]
    return "\n".join(sections) + "\n"


def save_report(report: SpawnReport, directory: str) -> str:
    """Write the detailed page to ``<directory>/passenger-error-<id>.html`` and return its path.

    The file is created 0600 with O_EXCL|O_NOFOLLOW: it holds the app's
    environment, and the directory (``$TMPDIR``) may be shared, so an
    existing file or a planted symlink is refused (``FileExistsError`` /
    ``OSError``), never overwritten or followed.  A partly written file is
    removed.
    """
    path = os.path.join(directory, f"passenger-error-{report.error_id}.html")
    data = render_detailed_html(report)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)  # exact mode whatever the umask
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    os.close(fd)
    return path


def _media_ranges(accept: str) -> list[tuple[str, str, float]]:
    """(type, subtype, q) for each well-formed media range; malformed ranges and q-values are ignored."""
    ranges = []
    for item in accept.split(","):
        media, *params = (part.strip() for part in item.split(";"))
        if media.count("/") != 1:
            continue
        main, sub = (part.strip().lower() for part in media.split("/"))
        if not main or not sub:
            continue
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value.strip())
                except ValueError:
                    q = -1.0
        if 0.0 <= q <= 1.0:
            ranges.append((main, sub, q))
    return ranges


def _quality(ranges: list[tuple[str, str, float]], main: str, sub: str) -> float:
    """q of the most specific range matching main/sub (RFC 9110 §12.5.1); 0 when none matches."""
    best_specificity, best_q = -1, 0.0
    for r_main, r_sub, q in ranges:
        if r_main == main and r_sub == sub:
            specificity = 2
        elif r_main == main and r_sub == "*":
            specificity = 1
        elif r_main == "*" and r_sub == "*":
            specificity = 0
        else:
            continue
        if specificity > best_specificity or (specificity == best_specificity and q > best_q):
            best_specificity, best_q = specificity, q
    return best_q


def prefers_json(accept: bytes | None, content_type: bytes | None) -> bool:
    """Whether to answer a failed spawn with JSON rather than HTML.

    With an Accept header: only when it ranks application/json strictly above
    text/html (so ``*/*`` and browsers get HTML).  Without one (or an empty
    one): when the request body itself is application/json, as Passenger does.
    """
    if accept is not None and accept.strip():
        ranges = _media_ranges(accept.decode("latin-1"))
        return _quality(ranges, "application", "json") > _quality(ranges, "text", "html")
    if content_type is None:
        return False
    media = content_type.decode("latin-1").split(";", 1)[0].strip().lower()
    return media == "application/json"


def error_answer(report: SpawnReport, app: AppConfig, accept: bytes | None,
                 content_type: bytes | None) -> tuple[int, bytes, str]:
    """What a request gets when its app cannot start (§1.8): status, body, content type.

    The app's custom page if it has one; else JSON or HTML as the client
    prefers, detailed only with friendly error pages (on in development).
    """
    detailed = app.friendly_error_pages if app.friendly_error_pages is not None else app.environment == "development"
    if app.custom_error_page is not None:
        body, kind = app.custom_error_page, "text/html; charset=utf-8"
    elif prefers_json(accept, content_type):
        body, kind = render_json(report, detailed), "application/json"
    else:
        body = render_detailed_html(report) if detailed else render_generic_html(report)
        kind = "text/html; charset=utf-8"
    return app.spawn_error_status, body, kind


def log_line(report: SpawnReport, saved_path: str | None) -> str:
    """The single log line for a failed spawn; untrusted parts are flattened so they cannot forge log lines.

    ``saved_path`` is None when :func:`save_report` failed; the line then only carries the ID.
    """
    where = f"; details saved to {_one_line(saved_path)}" if saved_path is not None else ""
    return (
        f"Could not spawn process for application {_one_line(report.app_root)} ({_one_line(report.app)}): "
        f"{_one_line(report.summary)} [Error ID: {report.error_id}{where}]"
    )

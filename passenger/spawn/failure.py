"""Turning a failed spawn into a saved report and a log line (passenger-gls.md §1.8)."""

from __future__ import annotations

import os

from twisted.logger import Logger

from passenger.config import AppConfig
from passenger.spawn.report import SpawnReport, default_texts, new_error_id, save_report

log = Logger()


def minimal_report(app: AppConfig, summary: str, pid: int | None = None, output: tuple[str, ...] = ()) -> SpawnReport:
    """A report for a failure that came with nothing more than a sentence."""
    problem, solution = default_texts("INTERNAL_ERROR", None)
    return SpawnReport(app=app.name, app_root=app.root, error_id=new_error_id(), category="INTERNAL_ERROR",
                       summary=summary, problem_html=problem, solution_html=solution, output=output, pid=pid)


def save_failure(report: SpawnReport, spawn_dir: str | None) -> str | None:
    """Save the detailed report where Passenger does ($TMPDIR); None if that fails."""
    directory = spawn_dir or os.environ.get("TMPDIR") or "/tmp"
    try:
        return save_report(report, directory)
    except OSError as e:
        log.warn("Could not save the report of error {error_id} in {directory}: {why}",
                 error_id=report.error_id, directory=directory, why=e.strerror)
        return None

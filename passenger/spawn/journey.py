"""The spawn journey: each step's state and timing, from the server's side and the app's (§1.2).

The server's steps are timed here.  The app's side writes its step states into
``response/steps/<step>/state`` (the shell prologue does the first two, a Kuria
app may do the rest); a step's time is read from the file's mtime, or from the
``begin_time``/``end_time`` files when the app wrote them, so the shell needs no
clock of its own.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from passenger.spawn.report import STEP_ERRORED, STEP_IN_PROGRESS, STEP_NOT_STARTED, STEP_PERFORMED, STEP_STATES
from passenger.spawn.workdir import SMALL_CAP, SUBPROCESS_STEPS

if TYPE_CHECKING:
    from passenger.spawn.workdir import WorkDir

NOT_STARTED = STEP_NOT_STARTED
IN_PROGRESS = STEP_IN_PROGRESS
PERFORMED = STEP_PERFORMED
ERRORED = STEP_ERRORED
STATES = STEP_STATES

PREPARATION = "SPAWNING_KIT_PREPARATION"
FORK = "SPAWNING_KIT_FORK_SUBPROCESS"
HANDSHAKE = "SPAWNING_KIT_HANDSHAKE_PERFORM"
FINISH = "SPAWNING_KIT_FINISH"
SERVER_STEPS = (PREPARATION, FORK, HANDSHAKE, FINISH)

BEFORE_EXEC = "SUBPROCESS_BEFORE_FIRST_EXEC"
APP_START = "SUBPROCESS_APP_LOAD_OR_EXEC"
LISTEN = "SUBPROCESS_LISTEN"


def shell_prologue() -> str:
    """Shell commands that record the app side's first steps, then exec the app.

    ``echo`` is a builtin, so this costs no extra process.
    """
    return (
        'S="$PASSENGER_SPAWN_WORK_DIR/response/steps"; '
        'echo STEP_PERFORMED > "$S/subprocess_before_first_exec/state"; '
        'echo STEP_IN_PROGRESS > "$S/subprocess_app_load_or_exec/state"; '
    )


class Step:
    __slots__ = ("begin", "end", "name", "state")

    def __init__(self, name: str) -> None:
        self.name = name
        self.state = NOT_STARTED
        self.begin: float | None = None
        self.end: float | None = None

    @property
    def duration(self) -> float | None:
        if self.begin is None:
            return None
        end = self.end if self.end is not None else (time.time() if self.state == IN_PROGRESS else None)
        return None if end is None else max(0.0, end - self.begin)


class Journey:
    """The steps of one spawn, in order."""

    def __init__(self) -> None:
        self.steps: dict[str, Step] = {name: Step(name) for name in SERVER_STEPS}
        for lower in SUBPROCESS_STEPS:
            self.steps.setdefault(lower.upper(), Step(lower.upper()))

    def begin(self, name: str, at: float | None = None) -> None:
        step = self.steps[name]
        step.state = IN_PROGRESS
        step.begin = time.time() if at is None else at

    def performed(self, name: str, at: float | None = None) -> None:
        step = self.steps[name]
        if step.begin is None:
            step.begin = time.time() if at is None else at
        step.state = PERFORMED
        step.end = time.time() if at is None else at

    def errored(self, name: str) -> None:
        step = self.steps[name]
        if step.begin is None:
            step.begin = time.time()
        step.state = ERRORED
        step.end = time.time()

    def in_progress(self) -> Step | None:
        """The step that was going on when something failed (the last one begun)."""
        found = None
        for step in self.steps.values():
            if step.state == IN_PROGRESS:
                found = step
        return found

    def read_app_side(self, workdir: WorkDir, forked_at: float | None) -> None:
        """Take in the steps the app's side wrote into the work directory."""
        previous_end = forked_at
        for lower in SUBPROCESS_STEPS:
            step = self.steps[lower.upper()]
            base = f"response/steps/{lower}/"
            raw = workdir.read(base + "state", SMALL_CAP)
            state = raw.decode("ascii", "replace").strip() if raw else NOT_STARTED
            if state not in STATES or state == NOT_STARTED:
                continue
            step.state = state
            begin = _float(workdir.read(base + "begin_time", SMALL_CAP))
            end = _float(workdir.read(base + "end_time", SMALL_CAP))
            written = workdir.mtime(base + "state")
            if state == PERFORMED:
                step.end = end if end is not None else written
                step.begin = begin if begin is not None else previous_end
            else:
                step.begin = begin if begin is not None else written
            if step.end is not None:
                previous_end = step.end

    def rows(self) -> list[tuple[str, str, float | None]]:
        """(name, state, seconds) for every step that is not left out."""
        return [(s.name, s.state, s.duration) for s in self.steps.values()
                if s.state != NOT_STARTED or s.name in SERVER_STEPS]


def _float(raw: bytes | None) -> float | None:
    if not raw:
        return None
    try:
        return float(raw.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        return None

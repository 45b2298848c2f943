"""Passenger's restart files: ``tmp/restart.txt`` and ``tmp/always_restart.txt``.

Touching ``restart.txt`` (a new mtime, or the file appearing) restarts the app
once; deleting it does not.  While ``always_restart.txt`` exists every request
restarts the app (at most once a second).  Changes are seen at once through
inotify when the platform has it, and within a second in any case by a stat of
both files (two syscalls a second per app; Passenger stats on requests, every
10 s by default).
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.filepath import FilePath

from passenger.pool.group import Group

#: Seconds between two stats of the restart files.
STAT_INTERVAL = 1.0
#: inotify reports a ``touch`` of a new file twice (created, then its times set,
#: two mtimes): look once, this long after the first event.
SETTLE = 0.05


def _mtime(path: str) -> int | None:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None


class RestartFiles:
    log = Logger()

    def __init__(self, group: Group, clock: Any, reactor: Any = None) -> None:
        self.group = group
        self.clock = clock
        self._reactor = reactor
        app = group.app
        self.directory = os.path.join(app.root, app.restart_dir or "tmp")
        self.restart_txt = os.path.join(self.directory, "restart.txt")
        self.always_txt = os.path.join(self.directory, "always_restart.txt")
        self._seen = _mtime(self.restart_txt)
        self._poll = LoopingCall(self.check)
        self._poll.clock = clock
        self._notifier: Any = None
        self._soon: Any = None

    def start(self) -> None:
        self.group.always_restart = os.path.exists(self.always_txt)
        self._poll.start(STAT_INTERVAL, now=False)
        self._watch()

    def stop(self) -> None:
        if self._poll.running:
            self._poll.stop()
        if self._notifier:
            self._notifier.loseConnection()
        self._notifier = None
        if self._soon is not None and self._soon.active():
            self._soon.cancel()
        self._soon = None

    def changed(self) -> None:
        """inotify saw something in the directory: look shortly, once for a burst of events."""
        if self._soon is None or not self._soon.active():
            self._soon = self.clock.callLater(SETTLE, self.check)

    def check(self) -> None:
        """Look at both files now."""
        self.group.always_restart = os.path.exists(self.always_txt)
        mtime = _mtime(self.restart_txt)
        if mtime is not None and mtime != self._seen:
            self._seen = mtime
            self.group.restart(reason=f"{self.restart_txt} was touched")
        elif mtime is None:
            self._seen = None  # deleted: no restart, but touching it again will
        if self._notifier is None:
            self._watch()

    def _watch(self) -> None:
        """Ask inotify to call ``check`` on any change in the directory (no-op where there is none)."""
        if self._reactor is None or not os.path.isdir(self.directory):
            return
        try:
            from twisted.internet import inotify

            notifier = inotify.INotify(self._reactor)
            notifier.startReading()
            mask = (inotify.IN_CREATE | inotify.IN_ATTRIB | inotify.IN_MODIFY | inotify.IN_CLOSE_WRITE
                    | inotify.IN_MOVED_TO | inotify.IN_DELETE | inotify.IN_MOVED_FROM | inotify.IN_DELETE_SELF)
            notifier.watch(FilePath(self.directory), mask=mask, callbacks=[lambda *_: self.changed()])
        except Exception as e:  # no inotify here (or no watches left): the stat poll still sees every change
            self.log.info("Watching {path} by polling only ({error})", path=self.directory, error=e)
            self._notifier = False
            return
        self._notifier = notifier

"""Hooks: run an operator's command on pool events (Passenger's ``hook_<event>`` ctls, §4.4).

The command runs by ``/bin/sh -c`` as a child process of the reactor, so a slow
hook never blocks serving; what it prints is logged, and so is a non-zero exit
or a hang (killed after HOOK_TIMEOUT).  Its stdin is closed at once.  When the
server stops, hooks still running (those the shutdown itself fired, say) get
STOP_GRACE seconds to finish before they are killed, and the instance directory
they were given is removed only after that.  The event's details are in the
environment, as Passenger passes them: PASSENGER_HOOK_NAME, PASSENGER_APP_ROOT,
PASSENGER_APP_GROUP_NAME, and for process events PASSENGER_PROCESS_PID, for
spawn failures PASSENGER_ERROR_ID, PASSENGER_ERROR_CATEGORY and
PASSENGER_ERROR_MESSAGE, and for a full queue PASSENGER_QUEUE_LENGTH.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.error import ProcessDone
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

if TYPE_CHECKING:
    from passenger.pool.group import Group

#: Seconds a hook may run before it is killed.
HOOK_TIMEOUT = 60.0
#: Output of a hook kept for the log.
OUTPUT_LIMIT = 4096
#: Seconds hooks still running when the server stops get to finish.
STOP_GRACE = 5.0


class _HookRun(ProcessProtocol):
    log = Logger()

    def __init__(self, event: str, command: str, reactor: Any) -> None:
        self.event = event
        self.command = command
        self.output = b""
        self._timer = reactor.callLater(HOOK_TIMEOUT, self._too_long)
        self.ended: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        if self.transport is not None:
            self.transport.closeStdin()  # a hook that reads stdin gets EOF

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if len(self.output) < OUTPUT_LIMIT:
            self.output += data[:OUTPUT_LIMIT - len(self.output)]

    def _too_long(self, seconds: float = HOOK_TIMEOUT) -> None:
        self.log.warn("Hook {event} ({command}) ran longer than {seconds:.0f}s; killing it",
                      event=self.event, command=self.command, seconds=seconds)
        self.kill()

    def kill(self) -> None:
        if self.transport is not None:
            try:
                self.transport.signalProcess("KILL")
            except Exception:  # already gone
                pass

    def processEnded(self, reason: Failure) -> None:
        if self._timer.active():
            self._timer.cancel()
        self.ended.callback(None)
        output = self.output.decode("utf-8", "replace").rstrip()
        if reason.check(ProcessDone):
            if output:
                self.log.info("Hook {event} said: {output}", event=self.event, output=output)
            return
        self.log.warn("Hook {event} ({command}) failed: {why}{output}", event=self.event, command=self.command,
                      why=reason.getErrorMessage(), output=f"\n{output}" if output else "")


class Hooks:
    """A pool listener that runs the configured command for each event."""

    log = Logger()

    def __init__(self, reactor: Any, commands: Mapping[str, str], instance_dir: str | None = None) -> None:
        self.reactor = reactor
        self.commands = dict(commands)
        self.instance_dir = instance_dir
        self.running: set[_HookRun] = set()

    def pool_event(self, event: str, group: Group, details: dict[str, Any]) -> None:
        command = self.commands.get(event)
        if command is None:
            return
        env = {**os.environ, **self.environment(event, group, details)}
        run = _HookRun(event, command, self.reactor)
        try:
            self.reactor.spawnProcess(run, "/bin/sh", ["/bin/sh", "-c", command], env=env,
                                      path=group.app.root if os.path.isdir(group.app.root) else "/",
                                      childFDs={0: "w", 1: "r", 2: "r"})
        except OSError as e:
            self.log.warn("Hook {event} ({command}) could not start: {error}", event=event, command=command, error=e)
            return
        self.running.add(run)
        run.ended.addCallback(lambda _: self.running.discard(run))

    def stop(self) -> Deferred[Any]:
        """Fires when no hook runs any more: they get STOP_GRACE seconds, then they are killed."""
        runs = list(self.running)
        if not runs:
            return DeferredList([])
        def kill_all() -> None:
            for run in runs:
                run._too_long(STOP_GRACE)

        timer = self.reactor.callLater(STOP_GRACE, kill_all)
        done = DeferredList([run.ended for run in runs])

        def over(result: object) -> object:
            if timer.active():
                timer.cancel()
            return result

        return done.addBoth(over)

    def environment(self, event: str, group: Group, details: dict[str, Any]) -> dict[str, str]:
        env = {
            "PASSENGER_HOOK_NAME": event,
            "PASSENGER_APP_ROOT": group.app.root,
            "PASSENGER_APP_GROUP_NAME": group.app.name,
        }
        if self.instance_dir is not None:
            env["PASSENGER_INSTANCE_DIR"] = self.instance_dir
        process = details.get("process")
        if process is not None and process.pid is not None:
            env["PASSENGER_PROCESS_PID"] = str(process.pid)
        report = details.get("report")
        if report is not None:
            env["PASSENGER_ERROR_ID"] = report.error_id
            env["PASSENGER_ERROR_CATEGORY"] = report.category
            env["PASSENGER_ERROR_MESSAGE"] = report.summary
        if event == "queue_full_error":
            env["PASSENGER_QUEUE_LENGTH"] = str(group.waiting)
        return env

"""Twisted's epoll reactor, without a legacy log context around every event.

``EPollReactor.doPoll`` runs each ready descriptor's ``doRead``/``doWrite``
inside ``log.callWithLogger``, which asks for a log prefix and pushes a copied
context dict for the old ``twisted.python.log`` API.  On the relay's path that
is two events per request and about a seventh of the server's Python time
(cProfile of ``bench/compare_bench.py``'s hello run).  Passenger's code logs
with ``twisted.logger`` under its own namespaces, so the context buys nothing;
an exception from ``doRead``/``doWrite`` is still caught, logged and turned
into a lost connection, as ``_doReadOrWrite`` does in every Twisted reactor.

It also runs the events of one poll as a pass (``passenger.http.fastpath``,
compiled, which reads the eager transports itself): the eager transports
(``passenger.http.eager``) hold what is written during it and send it when it
ends, so that each peer is woken once for a burst rather than once a request.

With ``busy_poll`` set (the ``busy_poll`` setting), a poll that follows a
pass with events first polls without sleeping, for at most that long.  On a
virtual machine, waking a sleeping server costs the peer that wakes it (an
app process, a client) and the server itself tens of microseconds at every
burst; polling through the gaps of a busy period avoids that, as HAProxy's
``busy-polling`` does, at the price of the CPU the polling burns.  An idle
server sleeps at once: the spin only follows activity, and never runs past
the next timer.

After passes that kept it busy for ``YIELD_AFTER`` without sleeping, it lets
any other process waiting for its CPU run (``sched_yield``).  The scheduler
wakes an app process on the CPU of the server that sent it a request; while
the server's passes follow one another, that process waited for the server to
sleep, for a millisecond at times (``perf sched timehist`` at half the
maximum rate), with its requests.  Yielding every 0.4 ms took the p99 there
from 1.50-1.67 ms (median 1.56) to 1.30-1.54 ms (median 1.36), at the same
CPU (10 alternating runs each); with nothing else runnable the call returns
at once.

With ``use_io_uring`` on (the ``io_uring`` setting, on by default), the sends
that end a pass go to the kernel in one system call (``passenger.http.uring``):
sent one call each, every send that woke a peer on this CPU handed it the CPU
as the call returned, and at half the maximum rate the server was preempted
more often than it slept.

``twistd passenger`` installs it when no reactor was chosen (``--reactor``
picks any other; ``--reactor passenger-epoll`` names this one).  Embedding
applications and ``twist`` keep the reactor they installed.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any

from twisted.internet.epollreactor import EPollReactor
from twisted.internet.main import installReactor
from twisted.logger import Logger

from passenger.http.fastpath import run_pass
from passenger.http.uring import Ring, open_ring

_log = Logger()

#: Seconds of passes without a sleep after which the server lets other processes on its CPU run.
YIELD_AFTER = 0.0004
#: A poll that took longer than this slept (its CPU was free for others meanwhile).
SLEPT = 0.00002


class PassengerEPollReactor(EPollReactor):
    """EPollReactor whose events are dispatched in passes (``passenger.http.fastpath.run_pass``) whose
    writes are sent together at the end (``passenger.http.eager``)."""

    def __init__(self) -> None:
        super().__init__()
        #: A pass is running: eager transports hold their writes until it ends.
        self.dispatching = False
        #: The transports holding writes of this pass (``fastpath.send_corked``).
        self.corked: list[Any] = []
        #: The transports to close once the pass's sends are made (``fastpath.close_pending``).
        self.closing: list[Any] = []
        #: Seconds to keep polling without sleeping after a pass with events (0: sleep at once).
        self.busy_poll = 0.0
        #: The last poll returned events, so the next may spin.
        self._active = False
        #: What the spin reads the time from (monotonic seconds).
        self.spin_clock: Callable[[], float] = time.monotonic
        #: What the time since the last sleep is read from (monotonic seconds), and how the CPU is offered.
        self.busy_clock: Callable[[], float] = time.monotonic
        self.give_way: Callable[[], None] = os.sched_yield
        #: When the last poll that slept returned.
        self._awake_since = 0.0
        #: Where a pass's sends are made together (``use_io_uring``); None: one call each.
        self.ring: Ring | None = None

    def doPoll(self, timeout: float | None) -> None:
        maxevents = len(self._selectables)
        try:
            if self._active and self.busy_poll and timeout != 0:
                events = self._spin(timeout, maxevents)
            else:
                events = self._sleep(-1 if timeout is None else timeout, maxevents)
        except InterruptedError:
            return
        self._active = bool(events)
        run_pass(self, events)
        if events and self.busy_clock() - self._awake_since >= YIELD_AFTER:
            self.give_way()  # processes woken onto this CPU by the pass's sends run now, not when it sleeps
            self._awake_since = self.busy_clock()

    def _sleep(self, timeout: float, maxevents: int) -> list[tuple[int, int]]:
        """A poll that may sleep; notes when it did."""
        clock = self.busy_clock
        before = clock()
        events = self._poller.poll(timeout, maxevents)
        after = clock()
        if after - before > SLEPT:
            self._awake_since = after
        return events

    def _spin(self, timeout: float | None, maxevents: int) -> list[tuple[int, int]]:
        """Poll without sleeping for up to ``busy_poll`` seconds (never past ``timeout``), then sleep for
        the rest of ``timeout``."""
        poll, clock = self._poller.poll, self.spin_clock
        start = clock()
        spin = self.busy_poll if timeout is None else min(self.busy_poll, timeout)
        while True:
            events = poll(0, maxevents)
            if events:
                return events
            waited = clock() - start
            if waited >= spin:
                break
        return self._sleep(-1 if timeout is None else max(timeout - waited, 0.0), maxevents)

    doIteration = doPoll

    def ring_failed(self, error: OSError) -> None:
        """A submit of the io_uring failed (``fastpath.submit`` settles its sends): send a call per socket
        from now on."""
        _log.error("io_uring failed ({error}); the server sends a call per socket from now on", error=error)
        self.use_io_uring(False)

    def use_io_uring(self, wanted: bool) -> str | None:
        """Make each pass's sends in one system call through an io_uring (``passenger.http.uring``), or
        stop; returns why the kernel refused one (the sends then go one call each)."""
        if not wanted:
            if self.ring is not None:
                self.ring.close()
                self.ring = None
        elif self.ring is None:
            try:
                self.ring = open_ring()
            except OSError as error:
                return str(error.strerror or error)
        return None


def install() -> None:
    """Install the reactor (as ``twisted.internet.epollreactor.install`` does)."""
    installReactor(PassengerEPollReactor())


def install_unless_chosen() -> bool:
    """Install it if no reactor is installed yet and epoll exists; True if it was."""
    if "twisted.internet.reactor" in sys.modules:
        return False
    try:
        import select

        select.epoll  # noqa: B018 (Linux only)
    except AttributeError:
        return False
    install()
    return True

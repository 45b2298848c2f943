"""PassengerEPollReactor's busy_poll: after a pass with events, poll without sleeping for a while.

A reactor of the test's own (never installed) with a scripted poller and a
clock that moves a fixed step each time it is read, so every timeout the
reactor asks the poller for is known exactly.
"""

from __future__ import annotations

import select
from collections.abc import Iterator

import pytest

from passenger.reactor import YIELD_AFTER, PassengerEPollReactor

STEP = 2.0**-13  # seconds the fake clock moves at each reading (about 122 us; exact in binary)


class ScriptedPoller:
    """Stands in for ``select.epoll``: answers ``poll`` from a script and records each timeout asked for.

    ``script`` maps a call's index to its events; every other call finds nothing."""

    def __init__(self, real: select.epoll) -> None:
        self.real = real
        self.script: dict[int, list[tuple[int, int]]] = {}
        self.timeouts: list[float] = []

    def poll(self, timeout: float = -1, maxevents: int = -1) -> list[tuple[int, int]]:
        self.timeouts.append(timeout)
        return self.script.get(len(self.timeouts) - 1, [])

    def close(self) -> None:
        self.real.close()


class SteppingClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += STEP
        return self.now


#: An event on a descriptor the reactor does not know: the pass runs, nothing is dispatched.
EVENT = [(99999, select.EPOLLIN)]


@pytest.fixture
def reactor() -> Iterator[tuple[PassengerEPollReactor, ScriptedPoller]]:
    made = PassengerEPollReactor()
    poller = ScriptedPoller(made._poller)
    made._poller = poller  # type: ignore[assignment]
    made.spin_clock = SteppingClock()
    yield made, poller
    made._poller = poller.real
    for selectable in made.removeAll():
        selectable.connectionLost(None)
    poller.close()


def after_a_busy_pass(reactor: PassengerEPollReactor, poller: ScriptedPoller) -> None:
    poller.script[0] = EVENT
    reactor.doPoll(1.0)
    poller.timeouts.clear()
    poller.script.clear()


def test_off_by_default_the_reactor_sleeps_at_once(reactor) -> None:  # type: ignore[no-untyped-def]
    made, poller = reactor
    after_a_busy_pass(made, poller)
    made.doPoll(1.0)
    assert poller.timeouts == [1.0]


def test_after_a_busy_pass_it_polls_without_sleeping_then_sleeps_for_the_rest(reactor) -> None:  # type: ignore[no-untyped-def]
    made, poller = reactor
    made.busy_poll = 5 * STEP
    after_a_busy_pass(made, poller)
    made.doPoll(1.0)
    assert poller.timeouts == [0] * 5 + [1.0 - 5 * STEP]  # the clock reached busy_poll after 5 polls


def test_an_event_during_the_spin_ends_it_without_sleeping(reactor) -> None:  # type: ignore[no-untyped-def]
    made, poller = reactor
    made.busy_poll = 0.01
    after_a_busy_pass(made, poller)
    poller.script[2] = EVENT
    made.doPoll(1.0)
    assert poller.timeouts == [0, 0, 0]
    made.doPoll(1.0)  # that poll had events: the next one spins again
    assert poller.timeouts[3] == 0


def test_an_idle_reactor_sleeps_at_once(reactor) -> None:  # type: ignore[no-untyped-def]
    made, poller = reactor
    made.busy_poll = 0.01
    made.doPoll(1.0)  # nothing happened before this poll
    assert poller.timeouts == [1.0]
    made.doPoll(None)  # nor in it
    assert poller.timeouts == [1.0, -1]


def test_the_spin_never_runs_past_the_next_timer(reactor) -> None:  # type: ignore[no-untyped-def]
    made, poller = reactor
    made.busy_poll = 0.01
    after_a_busy_pass(made, poller)
    made.doPoll(2 * STEP)
    assert poller.timeouts == [0, 0, 0]  # two spins reach the timer, then what is left of it: nothing
    poller.timeouts.clear()
    poller.script[0] = EVENT
    made.doPoll(0)  # a timer is due now: one poll, no spin
    assert poller.timeouts == [0]


def test_without_a_timer_it_sleeps_without_limit_after_the_spin(reactor) -> None:  # type: ignore[no-untyped-def]
    made, poller = reactor
    made.busy_poll = 2 * STEP
    after_a_busy_pass(made, poller)
    made.doPoll(None)
    assert poller.timeouts == [0, 0, -1]


# Giving way: after YIELD_AFTER of passes without a sleep, other processes on the CPU run (sched_yield).
class SleepingPoller:
    """Answers every poll with an event; a poll ``sleeps`` (moves the clock) when told to."""

    def __init__(self, real: select.epoll, clock: ManualClock) -> None:
        self.real = real
        self.clock = clock
        self.sleep_next = 0.0

    def poll(self, timeout: float = -1, maxevents: int = -1) -> list[tuple[int, int]]:
        self.clock.now += self.sleep_next
        self.sleep_next = 0.0
        return EVENT

    def close(self) -> None:
        self.real.close()


class ManualClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def giving_way() -> Iterator[tuple[PassengerEPollReactor, SleepingPoller, ManualClock, list[float]]]:
    made = PassengerEPollReactor()
    clock = ManualClock()
    poller = SleepingPoller(made._poller, clock)
    made._poller = poller  # type: ignore[assignment]
    made.busy_clock = clock
    yielded: list[float] = []
    made.give_way = lambda: yielded.append(clock.now)
    yield made, poller, clock, yielded
    made._poller = poller.real
    poller.close()


def busy_passes(made: PassengerEPollReactor, clock: ManualClock, count: int, each: float) -> None:
    """``count`` passes back to back, each taking ``each`` seconds (the work between two polls)."""
    for _ in range(count):
        made.doPoll(1.0)
        clock.now += each


def test_passes_without_a_sleep_give_way_every_yield_after(giving_way) -> None:  # type: ignore[no-untyped-def]
    made, poller, clock, yielded = giving_way
    poller.sleep_next = 0.001
    made.doPoll(1.0)  # it slept: busy from here
    start = clock.now
    busy_passes(made, clock, 10, 0.26 * YIELD_AFTER)
    assert [(t - start) / YIELD_AFTER for t in yielded] == [pytest.approx(1.04), pytest.approx(2.08)]


def test_a_poll_that_sleeps_starts_the_count_again(giving_way) -> None:  # type: ignore[no-untyped-def]
    made, poller, clock, yielded = giving_way
    poller.sleep_next = 0.001
    made.doPoll(1.0)
    busy_passes(made, clock, 3, 0.26 * YIELD_AFTER)
    poller.sleep_next = 0.001  # the CPU was free: whoever waited for it has run
    busy_passes(made, clock, 3, 0.26 * YIELD_AFTER)
    assert yielded == []


def test_a_spin_is_not_a_sleep(giving_way) -> None:  # type: ignore[no-untyped-def]
    made, poller, clock, yielded = giving_way
    made.busy_poll = 0.01
    made.spin_clock = SteppingClock()
    poller.sleep_next = 0.001
    made.doPoll(1.0)
    busy_passes(made, clock, 5, 0.26 * YIELD_AFTER)  # each poll after the first spins (and finds an event)
    assert len(yielded) == 1

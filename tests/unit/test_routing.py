"""route(): least busy wins, ties go to the oldest, full processes are skipped."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock

from passenger.pool.process import AppProcess
from passenger.pool.routing import busyness, is_full, route
from tests.unit.fakes import RecordingObserver

Spec = tuple[int | None, int]  # (concurrency, sessions)


def processes(*specs: Spec) -> list[AppProcess]:
    clock, observer = Clock(), RecordingObserver()
    result = []
    for number, (concurrency, sessions) in enumerate(specs, 1):
        process = AppProcess(app="app", number=number, port=20000 + number, concurrency=concurrency,
                             clock=clock, observer=observer, shutdown_timeout=1.0)
        process.sessions = sessions
        result.append(process)
    return result


def chosen(specs: Sequence[Spec]) -> int | None:
    """Index of the process route() picks, or None."""
    pool = processes(*specs)
    process = route(pool)
    return None if process is None else pool.index(process)


@pytest.mark.parametrize(
    ("specs", "expected"),
    [
        # Least busy wins.
        ([(4, 3), (4, 1), (4, 2)], 1),
        ([(2, 1), (4, 1)], 1),  # 1/4 < 1/2
        ([(None, 3), (None, 1), (None, 2)], 1),
        ([(0, 5), (0, 4)], 1),
        # Ties go to the oldest (first in the list).
        ([(4, 2), (4, 2), (4, 2)], 0),
        ([(4, 3), (2, 1), (4, 2)], 1),  # 1/2 == 2/4: the older one
        ([(None, 0), (None, 0)], 0),
        ([(4, 1), (4, 0), (4, 0)], 1),
        # Full processes are skipped even when they would be "oldest".
        ([(1, 1), (1, 0)], 1),
        ([(2, 2), (2, 5), (2, 1)], 2),
        # Unknown concurrency (None) is never full.
        ([(None, 1000)], 0),
        ([(1, 1), (None, 50)], 1),
        # Concurrency 0 is unlimited.
        ([(0, 10**6)], 0),
        ([(3, 3), (0, 7)], 1),
        # Nothing can take a request.
        ([], None),
        ([(1, 1)], None),
        ([(1, 1), (2, 2), (3, 4)], None),
    ],
)
def test_route(specs: list[Spec], expected: int | None) -> None:
    assert chosen(specs) == expected


def test_route_does_not_change_the_processes() -> None:
    pool = processes((2, 1), (2, 0))
    assert route(pool) is pool[1]
    assert [p.sessions for p in pool] == [1, 0]


def test_route_accepts_any_iterable_once() -> None:
    pool = processes((2, 1), (2, 0))
    assert route(iter(pool)) is pool[1]


@pytest.mark.parametrize(
    ("spec", "full"),
    [((1, 1), True), ((2, 3), True), ((2, 1), False), ((None, 10**6), False), ((0, 10**6), False)],
)
def test_is_full(spec: Spec, full: bool) -> None:
    assert is_full(processes(spec)[0]) is full


@pytest.mark.parametrize(("spec", "load"), [((4, 1), 0.25), ((None, 3), 3.0), ((0, 3), 3.0), ((2, 2), 1.0)])
def test_busyness(spec: Spec, load: float) -> None:
    assert busyness(processes(spec)[0]) == load


def _can_take(spec: Spec) -> bool:
    concurrency, sessions = spec
    return not concurrency or sessions < concurrency


def _load(spec: Spec) -> float:
    concurrency, sessions = spec
    return sessions / concurrency if concurrency else float(sessions)


_spec = st.tuples(st.one_of(st.none(), st.integers(0, 8)), st.integers(0, 12))


@settings(max_examples=400, derandomize=True, database=None)
@given(st.lists(_spec, max_size=12))
def test_route_properties(specs: list[Spec]) -> None:
    pool = processes(*specs)
    process = route(pool)
    candidates = [i for i, spec in enumerate(specs) if _can_take(spec)]
    if not candidates:
        assert process is None
        return
    assert process is not None
    index = pool.index(process)
    # It can take one more request...
    assert _can_take(specs[index])
    assert not is_full(process)
    # ...no process that can is less busy...
    assert all(_load(specs[index]) <= _load(specs[i]) for i in candidates)
    # ...and every older one that can is strictly busier (ties go to the oldest).
    assert all(_load(specs[i]) > _load(specs[index]) for i in candidates if i < index)


@settings(max_examples=200, derandomize=True, database=None)
@given(st.lists(st.integers(0, 12), min_size=1, max_size=12))
def test_unknown_concurrency_always_routes(sessions: list[int]) -> None:
    pool = processes(*[(None, s) for s in sessions])
    assert route(pool) is pool[sessions.index(min(sessions))]

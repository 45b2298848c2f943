"""Least-busy selection: a pure function over the ready processes.

Busyness is in-flight requests relative to the process's concurrency; a
process with a known concurrency that is full is never chosen.  Ties go to
the oldest process (Passenger's rule, which lets the newest ones idle out).
"""

from __future__ import annotations

from collections.abc import Iterable

from passenger.pool.process import AppProcess


def is_full(process: AppProcess) -> bool:
    limit = process.concurrency
    return bool(limit) and process.sessions >= limit  # type: ignore[operator]


def busyness(process: AppProcess) -> float:
    limit = process.concurrency
    if limit:
        return process.sessions / limit
    return float(process.sessions)


def route(ready: Iterable[AppProcess]) -> AppProcess | None:
    """The least busy process that can take one more request, or None.

    ``ready`` is in spawn order, oldest first, so the first minimum wins ties.
    """
    best: AppProcess | None = None
    best_load = 0.0
    for process in ready:
        limit = process.concurrency
        sessions = process.sessions
        if limit:
            if sessions >= limit:
                continue
            load = sessions / limit
        else:
            load = float(sessions)
        if best is None or load < best_load:
            best, best_load = process, load
            if load == 0.0:
                break
    return best

"""The live dashboard at ``/`` of the admin listener (being written: see issue 7)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from passenger.service import PassengerService


def page() -> bytes:
    return b"<!doctype html><title>passenger</title><p>The dashboard is not written yet.</p>"


def state(service: PassengerService, pool: dict[str, Any]) -> dict[str, Any]:
    return {"pool": pool}

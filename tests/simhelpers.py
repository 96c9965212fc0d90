"""Helpers for the simulator's tests: quiet worlds, auth headers and a contract classifier."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from exporter.simulator import SimulatorOptions
from exporter.simulator.world import (
    CSE_COMPLETE,
    CSE_ERROR,
    CSE_NO_OPERATION,
    CSE_START,
    ManualClock,
    World,
    WorldSettings,
)

# 2026-05-01T12:00:00Z: a fixed "now" for deterministic worlds.
T0 = 1_777_636_800.0
FINAL_KEYS = {CSE_COMPLETE: "complete", CSE_NO_OPERATION: "no_operation", CSE_ERROR: "error"}


def quiet_settings(**overrides: Any) -> dict[str, Any]:
    """World settings with nothing happening by itself: no preload, arrivals or outages."""
    settings: dict[str, Any] = {
        "seed": 7,
        "jobs": 0,
        "arrival_interval": 0.0,
        "outage_interval": 0.0,
    }
    settings.update(overrides)
    return settings


def quiet_options(**overrides: Any) -> SimulatorOptions:
    """Simulator options for a quiet world on a free loopback port."""
    return SimulatorOptions(**quiet_settings(**overrides))


def manual_world(**overrides: Any) -> tuple[World, ManualClock]:
    """A world on a manual clock at `T0`, quiet unless told otherwise, and its clock."""
    clock = ManualClock(T0)
    settings = WorldSettings(**quiet_settings(**overrides))
    return World(settings, clock=clock, rng=random.Random(settings.seed)), clock


def bearer(token: str) -> dict[str, str]:
    """The Authorization header for a token."""
    return {"Authorization": f"Bearer {token}"}


def import_status(admin_meta: Mapping[str, object]) -> str:
    """A completed job's import status, read from its CSE keys as the contract says."""
    start = _time(admin_meta.get(CSE_START))
    finals = [
        (moment, status)
        for key, status in FINAL_KEYS.items()
        if (moment := _time(admin_meta.get(key))) is not None
    ]
    if start is not None:
        finals = [(moment, status) for moment, status in finals if moment >= start]
    if finals:
        return max(finals)[1]
    return "waiting" if start is None else "running"


def _time(value: object) -> datetime | None:
    return None if value is None else datetime.fromisoformat(str(value))


def import_statuses(jobs: Iterable[Mapping[str, Any]]) -> Counter[str]:
    """How many completed jobs have each import status, from rows or `Job.admin_meta`."""
    return Counter(import_status(job["admin_meta"]) for job in jobs if job["state"] == "complete")

"""Deciding a completed job's import status from the CSE's admin metadata.

This module is pure: it reads no clock and does no I/O. Every time is a POSIX timestamp in
seconds (a float), so that callers compare and subtract without building datetime objects.

The CSE writes four keys on a job, each holding the UTC time it was written:

- ``cse_event_processing_start`` when an import begins (the same write removes ``_complete``
  and ``_error``, but not ``_no_operation``);
- ``cse_event_processing_complete``, ``_no_operation`` or ``_error`` when it ends.

Presence alone can mislead (a ``no_operation`` from an earlier attempt survives a later
``start``), so the rules compare times:

- no ``start`` and no final key: **waiting**, since the job completed;
- final keys at or after ``start``: the latest of them is the outcome;
- ``start`` with no final key at or after it: **running**, since ``start``;
- final keys and no ``start`` at all (older data): the latest final key is the outcome;
- any CSE key whose value is not a time with a zone: the metadata is invalid.

The CSE and the CTS run on different machines, so a CSE time can precede the completion time it
follows. Such differences are clock skew, not negative lags: they count as zero and the view is
marked ``skewed``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


class ImportStatus(StrEnum):
    """Where a completed job's import stands."""

    WAITING = "waiting"
    RUNNING = "running"
    COMPLETE = "complete"
    NO_OPERATION = "no_operation"
    ERROR = "error"

    @property
    def finished(self) -> bool:
        """True for the three outcomes the CSE records at the end of an import."""
        return self in FINISHED_STATUSES


FINISHED_STATUSES = frozenset(
    {ImportStatus.COMPLETE, ImportStatus.NO_OPERATION, ImportStatus.ERROR}
)

START_KEY = "cse_event_processing_start"

# When two final keys carry the same time, the earlier entry here wins: a failure is never hidden
# behind a success written in the same instant.
FINAL_KEYS: tuple[tuple[str, ImportStatus], ...] = (
    ("cse_event_processing_error", ImportStatus.ERROR),
    ("cse_event_processing_complete", ImportStatus.COMPLETE),
    ("cse_event_processing_no_operation", ImportStatus.NO_OPERATION),
)

CSE_KEYS = frozenset([START_KEY, *(key for key, _ in FINAL_KEYS)])


@dataclass(frozen=True, slots=True)
class ImportView:
    """A completed job's import status and the times that explain it.

    ``since`` is when the job entered ``status``: its completion for ``waiting``, the start for
    ``running``, the final key's time for an outcome. ``latency`` (completion to outcome) and
    ``duration`` (start to outcome) are set for outcomes only, and ``duration`` only when the
    import's start is known.
    """

    status: ImportStatus
    since: float
    started_at: float | None = None
    latency: float | None = None
    duration: float | None = None
    skewed: bool = False


class InvalidMetadata(ValueError):
    """A CSE key holds something other than a time with a zone."""

    def __init__(self, key: str, value: object) -> None:
        super().__init__(f"{key} is not an ISO-8601 time with a zone: {value!r:.60}")
        self.key = key


def parse_time(value: object) -> float | None:
    """Read an ISO-8601 time with a zone as a POSIX timestamp; None when it is not one.

    Accepts every spelling the CTS and CSE use: ``Z`` or ``+00:00``, with or without a fraction.
    """
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    return moment.timestamp()


def classify(completed_at: float, admin_meta: Mapping[str, object]) -> ImportView:
    """Decide the import status of a job that completed at ``completed_at``.

    Raises InvalidMetadata when one of the CSE's keys cannot be read; keys of other writers are
    ignored.
    """
    started_at = _read_key(admin_meta, START_KEY)
    outcome: tuple[float, ImportStatus] | None = None
    for key, status in FINAL_KEYS:
        written_at = _read_key(admin_meta, key)
        if written_at is None:
            continue
        if started_at is not None and written_at < started_at:
            continue  # left over from an attempt before the latest start
        if outcome is None or written_at > outcome[0]:
            outcome = (written_at, status)

    if outcome is not None:
        finished_at, status = outcome
        latency = finished_at - completed_at
        duration = None if started_at is None else finished_at - started_at
        return ImportView(
            status=status,
            since=finished_at,
            started_at=started_at,
            latency=max(latency, 0.0),
            duration=duration,
            skewed=latency < 0,
        )
    if started_at is not None:
        return ImportView(
            status=ImportStatus.RUNNING,
            since=started_at,
            started_at=started_at,
            skewed=started_at < completed_at,
        )
    return ImportView(status=ImportStatus.WAITING, since=completed_at)


def _read_key(admin_meta: Mapping[str, object], key: str) -> float | None:
    """The time a CSE key holds, None when absent; InvalidMetadata when unreadable."""
    if key not in admin_meta:
        return None
    value = admin_meta[key]
    written_at = parse_time(value)
    if written_at is None:
        raise InvalidMetadata(key, value)
    return written_at

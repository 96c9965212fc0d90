"""Readable builders of CTS jobs for tests: a job is a few keywords, not a wall of JSON."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from exporter.scan import ScanOutcome, read_job

NOW = datetime(2026, 11, 2, 12, 0, 0, tzinfo=UTC)


def ago(seconds: float) -> datetime:
    """A moment so many seconds before NOW."""
    return NOW - timedelta(seconds=seconds)


def cts_time(moment: datetime) -> str:
    """A time as the CTS writes it in bodies: millisecond precision and a Z."""
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def cse_time(moment: datetime) -> str:
    """A time as the CSE writes it in admin metadata: isoformat with +00:00."""
    return moment.isoformat()


def job(
    job_id: str,
    *,
    state: str = "complete",
    last: datetime | None = None,
    user: str = "alice",
    cluster: str = "kbase",
    image: str = "ghcr.io/kbase/checkm2:1.1",
    **cse_keys: datetime | str,
) -> dict[str, Any]:
    """A job row whose last transition (into ``state``) happened at ``last``.

    CSE keys are named by their suffix: ``job("a", start=ago(5), complete=ago(1))``.
    """
    last = last or ago(60)
    return {
        "id": job_id,
        "state": state,
        "user": user,
        "transition_times": [
            {"state": "created", "time": cts_time(last - timedelta(hours=1))},
            {"state": state, "time": cts_time(last)},
        ],
        "admin_meta": {
            f"cse_event_processing_{suffix}": cse_time(value)
            if isinstance(value, datetime)
            else value
            for suffix, value in cse_keys.items()
        },
        "job_input": {"cluster": cluster, "image": image, "num_containers": 1},
        "image": {"name": image.split(":")[0], "tag": "1.1", "digest": "sha256:00"},
        "input_file_count": 3,
    }


def listed(*rows: dict[str, Any]) -> ScanOutcome:
    """What a scan keeps of these rows, as if one page had listed them."""
    records = [read_job(row) for row in rows]
    return ScanOutcome(
        rows=[record for record in records if record is not None],
        pages=1,
        unreadable_rows=records.count(None),
    )

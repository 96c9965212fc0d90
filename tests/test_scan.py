"""Listing the look-back window page by page, and turning the rows into a snapshot."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

import pytest

from exporter.cts import JobPage
from exporter.imports import ImportStatus, parse_time
from exporter.scan import (
    OutcomeTracker,
    ScanOutcome,
    Snapshot,
    build_snapshot,
    image_name,
    list_window,
)
from tests.jobs import NOW, ago, job, listed

pytestmark = pytest.mark.anyio

LOOKBACK = timedelta(days=7)


class ListingCts:
    """The CTS's list semantics in memory: last transition in [after, before), newest first."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows
        self.requests: list[tuple[datetime, datetime | None, int]] = []

    async def list_jobs(
        self, *, admin: bool, after: datetime, before: datetime | None, limit: int
    ) -> JobPage:
        self.requests.append((after, before, limit))

        def last(row: dict[str, Any]) -> float:
            moment = parse_time(row["transition_times"][-1]["time"])
            assert moment is not None
            return moment

        chosen = [
            row
            for row in self.rows
            if last(row) >= after.timestamp() and (before is None or last(row) < before.timestamp())
        ]
        chosen.sort(key=last, reverse=True)
        return JobPage(rows=list(chosen[:limit]))


async def scan(cts: ListingCts, *, page_size: int = 3, max_jobs: int = 1000) -> ScanOutcome:
    outcome = ScanOutcome()
    await list_window(
        cts,  # type: ignore[arg-type]
        admin=True,
        now=NOW,
        lookback=LOOKBACK,
        page_size=page_size,
        max_jobs=max_jobs,
        outcome=outcome,
    )
    return outcome


async def test_paging_finds_every_job_once_when_jobs_share_a_millisecond_at_a_boundary() -> None:
    boundary = ago(600)
    rows = [job(f"new-{i}", last=ago(10 + i)) for i in range(3)]
    rows += [job(f"shared-{i}", last=boundary) for i in range(3)]  # straddles pages 1 and 2
    rows += [job(f"old-{i}", last=ago(3600 + i)) for i in range(6)]
    cts = ListingCts(rows)

    outcome = await scan(cts, page_size=4)

    assert sorted(record.id for record in outcome.rows) == sorted(row["id"] for row in rows)
    assert outcome.pages >= 3
    assert not outcome.truncated
    # The second page asks for jobs before the boundary plus one millisecond.
    assert cts.requests[1][1] == boundary + timedelta(milliseconds=1)


async def test_jobs_outside_the_window_are_not_listed() -> None:
    cts = ListingCts([job("inside", last=ago(60)), job("outside", last=ago(8 * 86400))])
    outcome = await scan(cts)
    assert [row.id for row in outcome.rows] == ["inside"]
    assert cts.requests[0][0] == NOW - LOOKBACK


async def test_an_empty_window_is_one_request_and_no_jobs() -> None:
    outcome = await scan(ListingCts([]))
    assert outcome.rows == []
    assert outcome.pages == 1


async def test_the_job_cap_stops_the_scan_and_flags_it() -> None:
    cts = ListingCts([job(f"j{i}", last=ago(i + 1)) for i in range(10)])
    outcome = await scan(cts, page_size=3, max_jobs=5)
    assert [row.id for row in outcome.rows] == ["j0", "j1", "j2", "j3", "j4"]
    assert outcome.truncated


async def test_more_jobs_in_one_millisecond_than_a_page_holds_ends_the_scan(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rows = [job(f"same-{i}", last=ago(30)) for i in range(5)] + [job("older", last=ago(90))]
    with caplog.at_level(logging.WARNING):
        outcome = await scan(ListingCts(rows), page_size=3)
    ids = {row.id for row in outcome.rows}
    assert "older" in ids
    assert outcome.truncated
    assert "share the transition time" in caplog.text


def snapshot_of(*rows: dict[str, Any]) -> Snapshot:
    return build_snapshot(listed(*rows), started=0.0, finished=1.0)


def test_snapshot_counts_states_and_import_statuses() -> None:
    snapshot = build_snapshot(
        listed(
            job("waiting", last=ago(100)),
            job("running", last=ago(100), start=ago(50)),
            job("done", last=ago(100), start=ago(90), complete=ago(80)),
            job("nothing", last=ago(100), no_operation=ago(95)),
            job("failed", last=ago(100), start=ago(90), error=ago(85)),
            job("queued", state="job_submitted", last=ago(5)),
            job("broken", last=ago(100), complete="last tuesday"),
        ),
        started=0.0,
        finished=1.0,
    )
    assert snapshot.state_counts["complete"] == 6
    assert snapshot.state_counts["job_submitted"] == 1
    assert sum(snapshot.state_counts.values()) == 7
    assert {status.value: n for status, n in snapshot.status_counts.items()} == {
        "waiting": 1,
        "running": 1,
        "complete": 1,
        "no_operation": 1,
        "error": 1,
    }
    assert snapshot.invalid_metadata == 1
    assert snapshot.oldest_waiting_completion == ago(100).timestamp()
    assert snapshot.oldest_running_start == ago(50).timestamp()


def test_per_job_order_puts_errors_then_running_then_waiting_newest_first() -> None:
    snapshot = build_snapshot(
        listed(
            job("done", last=ago(10), complete=ago(5)),
            job("waiting-old", last=ago(300)),
            job("waiting-new", last=ago(200)),
            job("running", last=ago(400), start=ago(350)),
            job("failed", last=ago(500), error=ago(450)),
        ),
        started=0.0,
        finished=1.0,
    )
    assert [j.id for j in snapshot.imports] == [
        "failed",
        "running",
        "waiting-new",
        "waiting-old",
        "done",
    ]


def test_jobs_with_unknown_states_or_unreadable_times_are_set_aside_and_counted() -> None:
    strange = job("strange", last=ago(10)) | {"state": "exploded"}
    bad_time = {
        "id": "bad-time",
        "state": "complete",
        "transition_times": [{"state": "complete", "time": "2026-11-02 noonish"}],
    }
    snapshot = build_snapshot(listed(strange, bad_time, job("fine")), started=0.0, finished=1.0)
    assert [j.id for j in snapshot.jobs] == ["fine"]
    assert snapshot.unreadable_jobs == 2


def test_the_first_scan_is_a_baseline_and_later_outcomes_count_once() -> None:
    tracker = OutcomeTracker()
    first = snapshot_of(job("old", complete=ago(500)), job("pending", start=ago(50)))
    assert tracker.new_outcomes(first) == []

    second = snapshot_of(
        job("old", complete=ago(500)), job("pending", start=ago(50), complete=ago(5))
    )
    assert [j.id for j in tracker.new_outcomes(second)] == ["pending"]
    assert tracker.new_outcomes(second) == []

    # Reprocessed after a failure: a new outcome, counted again.
    third = snapshot_of(job("old", complete=ago(500)), job("pending", start=ago(3), error=ago(1)))
    fresh = tracker.new_outcomes(third)
    assert [(j.id, j.view.status) for j in fresh] == [("pending", ImportStatus.ERROR)]


@pytest.mark.parametrize(
    ("reference", "name"),
    [
        ("ghcr.io/kbase/checkm2:1.1", "ghcr.io/kbase/checkm2"),
        ("ghcr.io/kbase/checkm2@sha256:abcd", "ghcr.io/kbase/checkm2"),
        ("registry:5000/kbase/gtdb:2@sha256:ef", "registry:5000/kbase/gtdb"),
        ("registry:5000/kbase/gtdb", "registry:5000/kbase/gtdb"),
        ("plain", "plain"),
    ],
)
def test_image_names_lose_their_tag_and_digest(reference: str, name: str) -> None:
    assert image_name(reference) == name

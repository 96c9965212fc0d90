"""The rules that decide a completed job's import status from the CSE's keys."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from exporter.imports import ImportStatus, InvalidMetadata, classify, parse_time

COMPLETED = datetime(2026, 10, 25, 21, 10, 5, 789000, tzinfo=UTC)


def at(seconds_after_completion: float, spelling: str = "+00:00") -> str:
    """A CSE time so many seconds after the job completed, as the CSE writes it."""
    moment = COMPLETED + timedelta(seconds=seconds_after_completion)
    text = moment.isoformat()
    return text.replace("+00:00", "Z") if spelling == "Z" else text


def meta(**keys: object) -> dict[str, object]:
    """Admin metadata with the CSE's keys named by their suffix: meta(start=..., error=...)."""
    return {f"cse_event_processing_{suffix}": value for suffix, value in keys.items()}


def status_of(admin_meta: dict[str, object]) -> ImportStatus:
    return classify(COMPLETED.timestamp(), admin_meta).status


def test_no_keys_means_waiting_since_completion() -> None:
    view = classify(COMPLETED.timestamp(), {})
    assert view.status is ImportStatus.WAITING
    assert view.since == COMPLETED.timestamp()
    assert view.latency is None


def test_start_alone_means_running_since_start() -> None:
    view = classify(COMPLETED.timestamp(), meta(start=at(2)))
    assert view.status is ImportStatus.RUNNING
    assert view.since == pytest.approx(COMPLETED.timestamp() + 2)
    assert view.started_at == view.since


@pytest.mark.parametrize(
    ("final", "status"),
    [
        ("complete", ImportStatus.COMPLETE),
        ("no_operation", ImportStatus.NO_OPERATION),
        ("error", ImportStatus.ERROR),
    ],
)
def test_final_key_after_start_is_the_outcome(final: str, status: ImportStatus) -> None:
    view = classify(COMPLETED.timestamp(), meta(start=at(2), **{final: at(290)}))
    assert view.status is status
    assert view.since == pytest.approx(COMPLETED.timestamp() + 290)
    assert view.latency == pytest.approx(290)
    assert view.duration == pytest.approx(288)
    assert not view.skewed


def test_final_key_at_the_same_time_as_start_counts() -> None:
    assert status_of(meta(start=at(5), complete=at(5))) is ImportStatus.COMPLETE


def test_error_after_restart_counts_as_running() -> None:
    # An operator reprocessed a failed import: the new start is after the old error.
    assert status_of(meta(error=at(60), start=at(3600))) is ImportStatus.RUNNING


def test_stale_no_operation_before_a_newer_start_does_not_count() -> None:
    assert status_of(meta(no_operation=at(10), start=at(500))) is ImportStatus.RUNNING


def test_stale_no_operation_is_ignored_when_a_newer_outcome_exists() -> None:
    view = classify(
        COMPLETED.timestamp(), meta(no_operation=at(10), start=at(500), complete=at(700))
    )
    assert view.status is ImportStatus.COMPLETE
    assert view.duration == pytest.approx(200)


def test_latest_of_several_final_keys_wins() -> None:
    assert status_of(meta(start=at(1), error=at(50), complete=at(90))) is ImportStatus.COMPLETE
    assert status_of(meta(start=at(1), complete=at(50), error=at(90))) is ImportStatus.ERROR


def test_an_error_and_a_success_written_in_the_same_instant_report_the_error() -> None:
    assert status_of(meta(start=at(1), complete=at(50), error=at(50))) is ImportStatus.ERROR


def test_final_key_without_start_is_that_outcome_without_a_duration() -> None:
    view = classify(COMPLETED.timestamp(), meta(complete=at(120)))
    assert view.status is ImportStatus.COMPLETE
    assert view.latency == pytest.approx(120)
    assert view.duration is None
    assert view.started_at is None


def test_times_with_z_and_with_offset_are_read_alike() -> None:
    with_z = classify(COMPLETED.timestamp(), meta(start=at(1, "Z"), complete=at(9, "Z")))
    with_offset = classify(COMPLETED.timestamp(), meta(start=at(1), complete=at(9)))
    assert with_z == with_offset


def test_times_without_a_fraction_are_read() -> None:
    view = classify(
        COMPLETED.timestamp(),
        meta(start="2026-10-25T21:11:00+00:00", complete="2026-10-25T21:12:00Z"),
    )
    assert view.duration == 60


@pytest.mark.parametrize(
    "value",
    ["2026-10-25T21:11:00", "yesterday", "", 1761426667, 1761426667.5, None, ["2026"]],
)
def test_a_value_that_is_not_a_time_with_a_zone_is_invalid(value: object) -> None:
    with pytest.raises(InvalidMetadata) as raised:
        classify(COMPLETED.timestamp(), meta(start=at(1), complete=value))
    assert raised.value.key == "cse_event_processing_complete"


def test_keys_of_other_writers_are_ignored() -> None:
    admin_meta = {"operator_note": "rerun", "priority": 3, **meta(start=at(1))}
    assert status_of(admin_meta) is ImportStatus.RUNNING


def test_an_outcome_before_completion_is_clock_skew_clamped_to_zero() -> None:
    view = classify(COMPLETED.timestamp(), meta(start=at(-30), complete=at(-10)))
    assert view.status is ImportStatus.COMPLETE
    assert view.latency == 0
    assert view.duration == pytest.approx(20)
    assert view.skewed


def test_a_start_before_completion_is_clock_skew() -> None:
    view = classify(COMPLETED.timestamp(), meta(start=at(-3)))
    assert view.status is ImportStatus.RUNNING
    assert view.skewed


def test_parse_time_reads_every_spelling_and_refuses_naive_times() -> None:
    expected = datetime(2026, 10, 25, 21, 10, 5, 789000, tzinfo=UTC).timestamp()
    assert parse_time("2026-10-25T21:10:05.789Z") == expected
    assert parse_time("2026-10-25T21:10:05.789000+00:00") == expected
    assert parse_time("2026-10-25T23:10:05.789+02:00") == expected
    assert parse_time("2026-10-25T21:10:05") is None
    assert parse_time("not a time") is None
    assert parse_time(12) is None

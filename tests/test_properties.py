"""Generated CTS payloads, adversarial ones included: parsing and classification raise only
their documented errors, and every label value stays in its closed set."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from exporter.cts import (
    ERROR_REASONS,
    JOB_STATES,
    PayloadError,
    _cts_message,
    _retry_after,
    read_page,
)
from exporter.imports import CSE_KEYS, ImportStatus, InvalidMetadata, classify, parse_time
from exporter.metrics import ExporterMetrics
from exporter.scan import OutcomeTracker, build_snapshot, read_job
from tests.jobs import listed

STATUSES = {status.value for status in ImportStatus}
CLOSED_LABELS = {"state": set(JOB_STATES), "status": STATUSES, "reason": set(ERROR_REASONS)}

# ---- strategies -----------------------------------------------------------------------------

zones = st.sampled_from(
    [UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-14)), timezone.max]
)
moments = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=zones
)
well_spelled = st.one_of(
    moments.map(lambda m: m.isoformat()),
    moments.map(lambda m: m.isoformat(timespec="milliseconds").replace("+00:00", "Z")),
    moments.map(lambda m: m.isoformat(timespec="seconds")),
)
badly_spelled = st.one_of(
    st.datetimes().map(lambda m: m.isoformat()),  # no zone
    st.text(max_size=40),
    st.sampled_from(["", "Z", "2026-13-01T00:00:00Z", "2026-10-25T25:00:00Z", "now", "\x00"]),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
times = st.one_of(well_spelled, badly_spelled, scalars)
states = st.one_of(st.sampled_from(JOB_STATES), st.text(max_size=12), scalars)
admin_metas = st.dictionaries(
    st.one_of(st.sampled_from(sorted(CSE_KEYS)), st.text(max_size=12)), times, max_size=6
)


@st.composite
def rows(draw: st.DrawFn) -> Any:
    """A job row as a CTS, a broken CTS or a hostile proxy might send it."""
    if draw(st.integers(0, 9)) == 0:
        return draw(json_values)
    row: dict[str, Any] = {}
    fields = {
        "id": st.one_of(st.uuids().map(str), st.text(max_size=10), scalars),
        "state": states,
        "user": st.one_of(st.text(max_size=10), scalars),
        "transition_times": st.one_of(
            st.lists(st.fixed_dictionaries({"state": states, "time": times}), max_size=5),
            json_values,
        ),
        "admin_meta": st.one_of(admin_metas, json_values),
        "job_input": st.one_of(st.fixed_dictionaries({"cluster": st.text(max_size=8)}), scalars),
        "image": st.one_of(st.fixed_dictionaries({"name": st.text(max_size=30)}), scalars),
        "surprise": json_values,
    }
    for name, strategy in fields.items():
        if draw(st.integers(0, 5)) > 0:
            row[name] = draw(strategy)
    return row


pages = st.one_of(
    st.fixed_dictionaries({"jobs": st.lists(rows(), max_size=6)}),
    json_values,
)
bodies = st.one_of(pages.map(lambda page: json.dumps(page).encode()), st.binary(max_size=200))


# ---- properties -----------------------------------------------------------------------------


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(bodies)
def test_a_list_body_is_a_page_or_a_payload_error(body: bytes) -> None:
    try:
        page = read_page(body)
    except PayloadError:
        return
    for row in page.rows:
        record = read_job(row)
        assert record is None or (isinstance(record.id, str) and record.state in JOB_STATES)


@settings(max_examples=80, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(rows(), max_size=15))
def test_a_scan_of_any_rows_classifies_each_readable_job_once_with_closed_labels(
    raw_rows: list[Any],
) -> None:
    page = read_page(json.dumps({"jobs": raw_rows}).encode())
    outcome = listed(*page.rows)
    assert all(record.state in JOB_STATES for record in outcome.rows)

    snapshot = build_snapshot(outcome, started=0.0, finished=1.0)
    assert set(snapshot.state_counts) == set(JOB_STATES)
    assert {status.value for status in snapshot.status_counts} == STATUSES
    assert len(snapshot.jobs) + snapshot.unreadable_jobs == len(raw_rows)
    assert sum(snapshot.state_counts.values()) == len(snapshot.jobs)
    assert (
        sum(snapshot.status_counts.values()) + snapshot.invalid_metadata
        == (snapshot.state_counts["complete"])
    )
    for job in snapshot.imports:
        assert job.view is not None
        assert job.view.status in ImportStatus
        assert job.view.latency is None or job.view.latency >= 0

    metrics = ExporterMetrics(max_job_series=5)
    tracker = OutcomeTracker()
    tracker.new_outcomes(snapshot)
    metrics.scan_succeeded(snapshot, tracker.new_outcomes(snapshot))
    metrics.scan_failed("payload", "generated", 0.1)
    assert_closed_label_values(generate_latest(metrics.registry).decode())


def assert_closed_label_values(exposition: str) -> None:
    """Every state, status and reason label holds one of the documented values."""
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            for label, allowed in CLOSED_LABELS.items():
                if label in sample.labels:
                    assert sample.labels[label] in allowed, (sample.name, sample.labels)
            assert not math.isnan(sample.value), sample.name


@settings(max_examples=300)
@given(
    st.floats(min_value=-1e11, max_value=1e11, allow_nan=False),
    st.one_of(admin_metas, st.dictionaries(st.sampled_from(sorted(CSE_KEYS)), times)),
)
def test_classification_gives_a_known_status_or_invalid_metadata(
    completed_at: float, admin_meta: dict[str, Any]
) -> None:
    try:
        view = classify(completed_at, admin_meta)
    except InvalidMetadata as error:
        assert error.key in CSE_KEYS
        assert parse_time(admin_meta[error.key]) is None
        return
    assert view.status in ImportStatus
    assert math.isfinite(view.since)
    assert view.latency is None or view.latency >= 0
    if view.status is ImportStatus.WAITING:
        assert view.since == completed_at


@given(st.one_of(well_spelled, badly_spelled, scalars))
def test_a_time_is_read_as_a_timestamp_only_when_it_carries_a_zone(text: Any) -> None:
    moment = parse_time(text)
    if moment is None:
        return
    assert isinstance(text, str)
    assert datetime.fromisoformat(text).tzinfo is not None
    assert math.isfinite(moment)


@given(st.one_of(st.none(), st.text(max_size=40), st.integers(0, 10**30).map(str)))
def test_retry_after_is_a_pause_of_zero_or_more_seconds_or_nothing(header: str | None) -> None:
    pause = _retry_after(header)
    assert pause is None or pause >= 0


@given(st.one_of(st.binary(max_size=300), json_values.map(lambda v: json.dumps(v).encode())))
def test_an_error_body_gives_a_short_explanation_or_none(body: bytes) -> None:
    explanation = _cts_message(body)
    assert explanation == "" or (explanation.startswith(": ") and len(explanation) <= 302)

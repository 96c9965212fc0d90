"""Rendering ``/metrics``: the exporter's own writer of the per-job families serves exactly what
prometheus-client would, with ages measured at each scrape and the series cap kept."""

from __future__ import annotations

import subprocess

import httpx
import pytest
from prometheus_client import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from exporter.metrics import ExporterMetrics
from exporter.scan import Snapshot, build_snapshot
from exporter.server import create_app
from tests.exposition import Samples, parse, series, value
from tests.jobs import NOW, ago, job, listed

pytestmark = pytest.mark.anyio

PER_JOB = (
    "cts_import_job_lag_seconds",
    "cts_import_job_status_timestamp_seconds",
    "cts_job_last_transition_timestamp_seconds",
)
HOSTILE_ID = 'quote"back\\slash\nnewline'


class Clock:
    """A scrape clock the test moves by hand."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def window() -> Snapshot:
    """Every import status and some non-complete jobs, with label values that need escaping."""
    return build_snapshot(
        listed(
            job(HOSTILE_ID, user="zoë{0}", cluster='c"1', image="reg/ü\\img:2", start=ago(30)),
            job("waiting-1", last=ago(120)),
            job("waiting-2", last=ago(50), user="line\nbreak"),
            job("running", start=ago(20)),
            job("done", start=ago(50), complete=ago(10)),
            job("nothing", no_operation=ago(40)),
            job("failed", start=ago(55), error=ago(5)),
            job("ends-in-backslash\\", user="\\", start=ago(40), complete=ago(1)),
            job("submitted", state="job_submitted", last=ago(3)),
            job("failed-job", state="error", last=ago(7)),
        ),
        started=NOW.timestamp() - 2,
        finished=NOW.timestamp(),
    )


def exporter_metrics(snapshot: Snapshot | None, cap: int = 2000) -> tuple[ExporterMetrics, Clock]:
    clock = Clock(NOW.timestamp() + 15)
    metrics = ExporterMetrics(cap, clock=clock)
    metrics.observe_request("/admin/jobs", 0.2)
    if snapshot is not None:
        metrics.scan_succeeded(snapshot, [])
    return metrics, clock


def families(text: str) -> dict[str, str]:
    """Each family of a classic exposition by name, with its type."""
    return {family.name: family.type for family in text_string_to_metric_families(text)}


def test_fast_text_holds_the_same_samples_as_prometheus_client() -> None:
    metrics, _ = exporter_metrics(window())

    fast = metrics.render().decode()
    reference = generate_latest(metrics.registry).decode()

    assert parse(fast) == parse(reference)
    assert families(fast) == families(reference)
    # The fixture does reach the writer: every per-job family and every awkward value is there.
    found = parse(fast)
    for name in PER_JOB:
        assert series(found, name)
    assert value(
        found,
        "cts_import_job_lag_seconds",
        job_id=HOSTILE_ID,
        user="zoë{0}",
        cluster='c"1',
        image="reg/ü\\img",
        status="running",
    ) == pytest.approx(75.0)
    assert value(
        found,
        "cts_job_last_transition_timestamp_seconds",
        job_id="ends-in-backslash\\",
        user="\\",
        cluster="kbase",
        image="ghcr.io/kbase/checkm2",
        state="complete",
    ) == pytest.approx(ago(60).timestamp())


def test_fast_text_is_byte_for_byte_what_prometheus_client_writes() -> None:
    # Stricter than the contract (same samples): it also pins label order and value spelling.
    metrics, _ = exporter_metrics(window())

    assert metrics.render() == generate_latest(metrics.registry)
    assert metrics.render(openmetrics=True) == generate_openmetrics(metrics.registry)


def test_openmetrics_holds_the_same_samples_and_ends_once() -> None:
    metrics, _ = exporter_metrics(window())

    fast = metrics.render(openmetrics=True).decode()
    reference = generate_openmetrics(metrics.registry).decode()

    def samples(text: str) -> Samples:
        return {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in openmetrics_families(text)
            for sample in family.samples
        }

    assert samples(fast) == samples(reference)
    assert fast.endswith("# EOF\n") and fast.count("# EOF") == 1
    types = {family.name: family.type for family in openmetrics_families(fast)}
    # Counters keep their OpenMetrics names: the family without _total, the sample with it.
    assert types["cts_exporter_scans"] == "counter"
    assert "cts_exporter_scans_total" not in types
    assert all(types[name] == "gauge" for name in PER_JOB)


def test_promtool_accepts_the_fast_text() -> None:
    metrics, _ = exporter_metrics(window())

    checked = subprocess.run(
        ["promtool", "check", "metrics"],
        input=metrics.render(),
        capture_output=True,
        check=False,
    )

    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_ages_of_unfinished_imports_move_with_the_scrape_and_nothing_else_does() -> None:
    metrics, clock = exporter_metrics(window())
    before = parse(metrics.render().decode())

    clock.now += 90
    after = parse(metrics.render().decode())

    lag = {
        labels: seconds - series(before, "cts_import_job_lag_seconds")[labels]
        for labels, seconds in series(after, "cts_import_job_lag_seconds").items()
    }
    moved = {dict(labels)["job_id"] for labels, change in lag.items() if change}
    assert moved == {HOSTILE_ID, "running", "waiting-1", "waiting-2"}
    assert all(change == pytest.approx(90) for change in lag.values() if change)
    assert value(after, "cts_import_lag_seconds") - value(
        before, "cts_import_lag_seconds"
    ) == pytest.approx(90)
    for name in PER_JOB[1:]:
        assert series(after, name) == series(before, name)
    assert parse(metrics.render().decode()) == parse(generate_latest(metrics.registry).decode())


def test_an_age_never_goes_below_zero_when_the_scrape_clock_is_behind() -> None:
    metrics, clock = exporter_metrics(window())
    clock.now = NOW.timestamp() - 3600

    found = parse(metrics.render().decode())

    assert value(
        found,
        "cts_import_job_lag_seconds",
        job_id="running",
        user="alice",
        cluster="kbase",
        image="ghcr.io/kbase/checkm2",
        status="running",
    ) == pytest.approx(0.0)


def test_per_job_series_follow_the_cap_problems_first() -> None:
    snapshot = window()
    metrics, _ = exporter_metrics(snapshot, cap=3)

    found = parse(metrics.render().decode())

    statuses = [dict(labels)["status"] for labels in series(found, "cts_import_job_lag_seconds")]
    assert sorted(statuses) == ["error", "running", "running"]
    assert {dict(labels)["job_id"] for labels in series(found, PER_JOB[1])} == {
        job.id for job in snapshot.imports[:3]
    }
    assert {dict(labels)["job_id"] for labels in series(found, PER_JOB[2])} == {
        job.id for job in snapshot.jobs[:3]
    }
    dropped = (len(snapshot.imports) - 3) + (len(snapshot.jobs) - 3)
    assert value(found, "cts_exporter_job_series_dropped") == dropped
    assert found == parse(generate_latest(metrics.registry).decode())


def test_a_new_cap_or_a_new_snapshot_is_rendered_at_the_next_scrape() -> None:
    metrics, _ = exporter_metrics(window(), cap=1)
    assert len(series(parse(metrics.render().decode()), PER_JOB[2])) == 1

    metrics.max_job_series = 2000
    found = parse(metrics.render().decode())
    assert len(series(found, PER_JOB[2])) == 10
    assert value(found, "cts_exporter_job_series_dropped") == 0

    metrics.scan_succeeded(
        build_snapshot(listed(job("only")), started=0.0, finished=NOW.timestamp()), []
    )
    found = parse(metrics.render().decode())
    assert {dict(labels)["job_id"] for labels in series(found, PER_JOB[2])} == {"only"}
    assert found == parse(generate_latest(metrics.registry).decode())


def test_before_the_first_scan_the_render_is_prometheus_clients() -> None:
    metrics, _ = exporter_metrics(None)

    assert metrics.render() == generate_latest(metrics.registry)
    assert metrics.render(openmetrics=True) == generate_openmetrics(metrics.registry)
    assert value(parse(metrics.render().decode()), "cts_exporter_job_series_dropped") == 0


async def test_metrics_endpoint_serves_each_format_by_its_accept_header() -> None:
    metrics, _ = exporter_metrics(window())
    transport = httpx.ASGITransport(app=create_app(metrics))
    async with httpx.AsyncClient(transport=transport, base_url="http://exporter") as client:
        classic = await client.get("/metrics")
        openmetrics = await client.get(
            "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
        )

    assert classic.status_code == openmetrics.status_code == 200
    assert classic.headers["content-type"].startswith("text/plain")
    assert parse(classic.text) == parse(generate_latest(metrics.registry).decode())
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
    assert openmetrics.content == generate_openmetrics(metrics.registry)

"""The exporter under a misbehaving CTS: it keeps serving the last good picture, names the
reason of each failed scan, recovers by itself and never counts an import twice.

Each test runs the exporter in-process against the stand-in CTS of ``tests/misbehaving.py``
over real HTTP on 127.0.0.1, with short timeouts and quick retries.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import httpx
import pytest

from exporter.cts import RetryPolicy, TokenSource
from exporter.runtime import Exporter
from exporter.server import create_app
from exporter.settings import ExporterSettings
from exporter.simulator import SimulatorOptions, start_simulator
from tests.exposition import Samples, samples, value
from tests.jobs import cts_time
from tests.misbehaving import (
    TOKEN,
    Body,
    CtsStandIn,
    Cut,
    Drip,
    Fault,
    Hangup,
    Stall,
    Status,
    ago,
    http_date,
    job,
    unaccepting_port,
)
from tests.promstack import free_port

pytestmark = pytest.mark.anyio

QUICK_RETRY = RetryPolicy(attempts=3, first_backoff=0.01, max_backoff=0.05)


def exporter_for(url: str, retry: RetryPolicy = QUICK_RETRY, **settings: Any) -> Exporter:
    """An in-process exporter with timeouts short enough for tests."""
    chosen: dict[str, Any] = {"request_timeout": 0.5, "scan_timeout": 3, "page_size": 1000}
    chosen.update(settings)
    configured = ExporterSettings(cts_url=url, cts_token=TOKEN, **chosen)
    return Exporter(configured, url, TokenSource(value=TOKEN), retry=retry)


@pytest.fixture
def cts() -> Iterator[CtsStandIn]:
    """A well-behaved stand-in CTS holding three jobs: one waiting, one running, one done."""
    with CtsStandIn() as stand_in:
        stand_in.jobs = [
            job("waits", completed=ago(300)),
            job("runs", completed=ago(600), start=ago(500)),
            job("done", completed=ago(900), start=ago(850), complete=ago(800)),
        ]
        yield stand_in


def picture(found: Samples) -> dict[str, float]:
    """The part of the metrics that describes the jobs, which a failed scan must not change."""
    return {
        f"{name}{sorted(labels)}": number
        for (name, labels), number in found.items()
        if name in ("cts_jobs", "cts_import_jobs", "cts_exporter_scanned_jobs")
    }


async def scrape(exporter: Exporter) -> httpx.Response:
    """GET /metrics from the exporter's own HTTP application."""
    transport = httpx.ASGITransport(app=create_app(exporter.metrics))
    async with httpx.AsyncClient(transport=transport, base_url="http://exporter") as client:
        return await client.get("/metrics")


async def assert_fault_is_survived(
    cts: CtsStandIn, path: str, fault: Fault, reason: str, **settings: Any
) -> Exporter:
    """Scan well, scan under ``fault``, then scan well again, checking the metrics each time.

    Meanwhile the running import finishes, so the recovery scan must count it exactly once.
    """
    exporter = exporter_for(cts.url, **settings)
    await exporter.scan()
    good = samples(exporter.metrics)
    assert value(good, "cts_exporter_last_scan_success") == 1

    cts.jobs[1] = job("runs", completed=ago(600), start=ago(500), complete=ago(1))
    cts.fail(path, fault)
    await exporter.scan()
    failed = samples(exporter.metrics)
    assert value(failed, "cts_exporter_last_scan_success") == 0
    assert value(failed, "cts_exporter_scan_errors_total", reason=reason) == 1
    assert sum(v for (n, _), v in failed.items() if n == "cts_exporter_scan_errors_total") == 1
    assert picture(failed) == picture(good)
    assert value(failed, "cts_imports_total", status="complete") == 0
    answer = await scrape(exporter)
    assert answer.status_code == 200
    assert "cts_exporter_last_scan_success 0.0" in answer.text

    cts.heal()
    await exporter.scan()
    await exporter.scan()
    healed = samples(exporter.metrics)
    assert value(healed, "cts_exporter_last_scan_success") == 1
    assert value(healed, "cts_exporter_scan_errors_total", reason=reason) == 1
    assert value(healed, "cts_import_jobs", status="complete") == 2
    assert value(healed, "cts_imports_total", status="complete") == 1
    await exporter.client.aclose()
    return exporter


# ---- the network ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "fault", "reason"),
    [
        pytest.param("/admin/jobs", Stall(), "timeout", id="stalled-response"),
        pytest.param("/admin/jobs", Drip(interval=0.05), "timeout", id="dripping-response"),
        pytest.param("/admin/jobs", Cut(after_bytes=20), "connect", id="cut-mid-body"),
        pytest.param("/whoami", Hangup(), "connect", id="closed-without-answer"),
    ],
)
async def test_a_broken_connection_fails_the_scan_and_keeps_the_last_picture(
    cts: CtsStandIn, path: str, fault: Fault, reason: str
) -> None:
    await assert_fault_is_survived(cts, path, fault, reason)


async def test_a_drip_slower_than_no_read_timeout_is_stopped_by_the_scan_deadline(
    cts: CtsStandIn,
) -> None:
    # Each byte arrives well within the request timeout, so only the scan deadline can end it.
    cts.fail("/admin/jobs", Drip(interval=0.02))
    exporter = exporter_for(cts.url, request_timeout=5, scan_timeout=1)
    await exporter.scan()
    found = samples(exporter.metrics)
    assert value(found, "cts_exporter_scan_errors_total", reason="timeout") == 1
    assert exporter.metrics.health.last_error == "scan did not finish within 1s"
    assert len(cts.requests("/admin/jobs")) == 1


async def test_a_refused_connection_is_a_connect_failure_until_the_cts_listens() -> None:
    port = free_port()
    exporter = exporter_for(f"http://127.0.0.1:{port}")
    await exporter.scan()
    found = samples(exporter.metrics)
    assert value(found, "cts_exporter_last_scan_success") == 0
    assert value(found, "cts_exporter_scan_errors_total", reason="connect") == 1
    assert value(found, "cts_jobs", state="complete") == 0
    assert "GET /: ConnectError" in (exporter.metrics.health.last_error or "")

    with CtsStandIn(port=port) as cts:
        cts.jobs = [job("late", completed=ago(60))]
        await exporter.scan()
    found = samples(exporter.metrics)
    assert value(found, "cts_exporter_last_scan_success") == 1
    assert value(found, "cts_import_jobs", status="waiting") == 1
    await exporter.client.aclose()


async def test_an_unknown_host_is_a_connect_failure() -> None:
    exporter = exporter_for("http://cts.invalid:9")
    await exporter.scan()
    found = samples(exporter.metrics)
    assert value(found, "cts_exporter_scan_errors_total", reason="connect") == 1
    assert value(found, "cts_exporter_last_scan_success") == 0
    await exporter.client.aclose()


async def test_a_connection_that_is_never_accepted_times_out() -> None:
    with unaccepting_port() as port:
        exporter = exporter_for(f"http://127.0.0.1:{port}", request_timeout=0.3)
        await exporter.scan()
    found = samples(exporter.metrics)
    assert value(found, "cts_exporter_scan_errors_total", reason="timeout") == 1
    assert "ConnectTimeout" in (exporter.metrics.health.last_error or "")
    await exporter.client.aclose()


# ---- HTTP errors ----------------------------------------------------------------------------


@pytest.mark.parametrize("status", [401, 403])
async def test_a_refused_token_fails_at_once_without_retrying(cts: CtsStandIn, status: int) -> None:
    exporter = await assert_fault_is_survived(cts, "/", Status(status), "auth")
    # Three scans that worked made two requests each plus their listing; the refused scan made
    # one request and gave up.
    assert len(cts.requests("/")) == 4
    assert len(cts.requests("/whoami")) == 3
    assert exporter.metrics.health.last_error is None


async def test_a_missing_endpoint_of_an_older_cts_is_an_http_failure(cts: CtsStandIn) -> None:
    await assert_fault_is_survived(cts, "/whoami", Status(404), "http")
    assert len(cts.requests("/whoami")) == 4


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_server_errors_are_retried_and_then_fail_the_scan(
    cts: CtsStandIn, status: int
) -> None:
    await assert_fault_is_survived(cts, "/admin/jobs", Status(status), "http")
    # One list request for each good scan, and every attempt of the failed one.
    assert len(cts.requests("/admin/jobs")) == 3 + QUICK_RETRY.attempts


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_a_server_error_that_passes_within_the_retries_costs_nothing(
    cts: CtsStandIn, status: int
) -> None:
    cts.fail("/admin/jobs", Status(status), times=QUICK_RETRY.attempts - 1)
    exporter = exporter_for(cts.url)
    await exporter.scan()
    found = samples(exporter.metrics)
    assert value(found, "cts_exporter_last_scan_success") == 1
    assert value(found, "cts_exporter_scan_errors_total", reason="http") == 0
    assert value(found, "cts_exporter_scanned_jobs") == 3
    await exporter.client.aclose()


async def test_too_many_requests_waits_the_seconds_the_cts_asks(cts: CtsStandIn) -> None:
    cts.fail("/admin/jobs", Status(429, headers={"Retry-After": "1"}), times=1)
    exporter = exporter_for(cts.url, retry=RetryPolicy(attempts=2, max_backoff=5))
    await exporter.scan()
    assert value(samples(exporter.metrics), "cts_exporter_last_scan_success") == 1
    first, second = cts.requests("/admin/jobs")
    assert second.at - first.at >= 1
    await exporter.client.aclose()


async def test_too_many_requests_waits_until_the_http_date_the_cts_names(
    cts: CtsStandIn,
) -> None:
    until = datetime.now(UTC) + timedelta(seconds=3)
    cts.fail("/admin/jobs", Status(429, headers={"Retry-After": http_date(until)}), times=1)
    exporter = exporter_for(cts.url, retry=RetryPolicy(attempts=2, max_backoff=5))
    await exporter.scan()
    assert value(samples(exporter.metrics), "cts_exporter_last_scan_success") == 1
    first, second = cts.requests("/admin/jobs")
    # The date has a one-second resolution, so the wait is at least two seconds.
    assert second.at - first.at >= 1.5
    await exporter.client.aclose()


async def test_a_retry_after_longer_than_the_longest_backoff_fails_the_scan_at_once(
    cts: CtsStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    await assert_fault_is_survived(
        cts, "/admin/jobs", Status(429, headers={"Retry-After": "3600"}), "http"
    )
    assert len(cts.requests("/admin/jobs")) == 4
    assert "HTTP 429: Error; the CTS asks to wait 3600s" in caplog.text


async def test_a_redirect_is_not_followed(cts: CtsStandIn) -> None:
    # Following it could carry the admin token to wherever the redirect points.
    redirect = Status(302, body=b"", headers={"Location": "http://127.0.0.1:9/steal"})
    await assert_fault_is_survived(cts, "/", redirect, "http")


# ---- bodies ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(Body(b"<html><body>Bad gateway</body></html>", "text/html"), id="html"),
        pytest.param(Body(b""), id="empty"),
        pytest.param(Body(b'{"jobs": [{"id": "a", "state": "comp'), id="truncated-json"),
        pytest.param(Body(b'{"jobs": "many"}'), id="jobs-not-a-list"),
        pytest.param(Body(b'{"jobs": null}'), id="jobs-null"),
        pytest.param(Body(b"[1, 2, 3]"), id="not-an-object"),
        pytest.param(Body(b"\xff\xfe\x00garbage"), id="not-utf8"),
    ],
)
async def test_a_list_body_that_is_not_a_page_of_jobs_is_a_payload_failure(
    cts: CtsStandIn, body: Body
) -> None:
    await assert_fault_is_survived(cts, "/admin/jobs", body, "payload")


async def test_a_whoami_body_without_a_user_is_a_payload_failure(cts: CtsStandIn) -> None:
    await assert_fault_is_survived(cts, "/whoami", Body(b'{"roles": ["full_admin"]}'), "payload")


async def test_a_body_larger_than_the_cap_is_refused_before_it_fills_memory(
    cts: CtsStandIn,
) -> None:
    huge = Body(b'{"jobs": [' + b'{"id": "x", "state": "complete"},' * 200_000 + b"]}")
    await assert_fault_is_survived(
        cts, "/admin/jobs", huge, "payload", max_response_bytes=64 * 1024
    )
    assert len(cts.requests("/admin/jobs")) == 4


async def test_a_huge_body_is_refused_with_a_message_naming_the_cap(cts: CtsStandIn) -> None:
    cts.fail("/admin/jobs", Body(b" " * 100_000))
    exporter = exporter_for(cts.url, max_response_bytes=4096)
    await exporter.scan()
    assert exporter.metrics.health.last_error == ("GET /admin/jobs: body larger than 4096 bytes")
    await exporter.client.aclose()


# ---- odd jobs -------------------------------------------------------------------------------


async def scan_once(cts: CtsStandIn, **settings: Any) -> Samples:
    """One scan of the stand-in; the metrics it leaves."""
    exporter = exporter_for(cts.url, **settings)
    await exporter.scan()
    await exporter.client.aclose()
    return samples(exporter.metrics)


async def test_jobs_of_wrong_shape_are_set_aside_and_the_others_still_count(
    cts: CtsStandIn,
) -> None:
    cts.jobs += [
        {**job("numeric-id", completed=ago(100)), "id": 17},
        {**job("no-state", completed=ago(100)), "state": None},
        {**job("meta-list", completed=ago(100)), "admin_meta": ["start"]},
        {**job("times-text", completed=ago(100)), "transition_times": "yesterday"},
        "not a job at all",
        None,
    ]
    found = await scan_once(cts)
    assert value(found, "cts_exporter_last_scan_success") == 1
    assert value(found, "cts_exporter_unreadable_jobs") == 6
    assert value(found, "cts_exporter_scanned_jobs") == 3
    assert value(found, "cts_import_jobs", status="waiting") == 1


async def test_unknown_states_and_missing_fields_leave_only_those_jobs_out(
    cts: CtsStandIn,
) -> None:
    no_times = job("no-times", completed=ago(100))
    del no_times["transition_times"]
    bare = {"id": "bare", "state": "complete"}
    cts.jobs += [job("future-state", completed=ago(100), state="archived"), no_times, bare]
    found = await scan_once(cts)
    assert value(found, "cts_exporter_last_scan_success") == 1
    assert value(found, "cts_exporter_unreadable_jobs") == 3
    assert value(found, "cts_exporter_scanned_jobs") == 3


async def test_extra_fields_are_ignored(cts: CtsStandIn) -> None:
    cts.jobs = [
        {**job("rich", completed=ago(100)), "cpu_hours": 3.5, "notif_sent": True, "new": {}}
    ]
    cts.jobs[0]["admin_meta"]["other_writer"] = 12
    found = await scan_once(cts)
    assert value(found, "cts_import_jobs", status="waiting") == 1
    assert value(found, "cts_import_invalid_metadata_jobs") == 0


async def test_every_spelling_of_a_time_is_read_and_bad_ones_are_counted(
    cts: CtsStandIn,
) -> None:
    # Whole seconds, so that every spelling, fraction or not, names the same instant.
    completed = ago(500).replace(microsecond=0)
    done = completed + timedelta(seconds=100)
    spellings = {
        "zulu-millis": cts_time(done),
        "offset-micros": done.isoformat(),
        "no-fraction": done.replace(microsecond=0).isoformat(),
        "other-zone": done.astimezone(timezone(timedelta(hours=2))).isoformat(),
    }
    cts.jobs = [
        job(name, completed=completed, start=completed, complete=text)
        for name, text in spellings.items()
    ]
    cts.jobs += [
        job("naive", completed=ago(500), complete="2026-10-25T21:10:05"),
        job("words", completed=ago(500), complete="soon"),
        job("number", completed=ago(500), complete=1761426605),  # type: ignore[arg-type]
    ]
    naive_transition = job("naive-transition", completed=ago(500))
    naive_transition["transition_times"][-1]["time"] = cts_time(ago(500)).removesuffix("Z")
    cts.jobs.append(naive_transition)

    found = await scan_once(cts)
    assert value(found, "cts_import_jobs", status="complete") == 4
    assert value(found, "cts_import_invalid_metadata_jobs") == 3
    assert value(found, "cts_exporter_unreadable_jobs") == 1
    for name in spellings:
        lag = value(
            found,
            "cts_import_job_lag_seconds",
            job_id=name,
            user="alice",
            cluster="kbase",
            image="ghcr.io/kbase/checkm2",
            status="complete",
        )
        assert lag == 100


@pytest.mark.parametrize("corrupt", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"])
async def test_a_corrupt_time_at_a_page_boundary_ends_the_listing_instead_of_the_scan(
    cts: CtsStandIn, corrupt: str
) -> None:
    odd = job("corrupt", completed=ago(100))
    odd["transition_times"][-1]["time"] = corrupt
    if corrupt.startswith("9999"):
        odd["transition_times"] = [odd["transition_times"][-1]]  # the only, so the oldest
        page = [odd, odd]
    else:
        page = [job("fine", completed=ago(50)), odd]
    cts.fail("/admin/jobs", Body(json.dumps({"jobs": page}).encode()), times=1)
    found = await scan_once(cts, page_size=2)
    assert value(found, "cts_exporter_last_scan_success") == 1
    assert value(found, "cts_exporter_scan_truncated") == 1


# ---- paging ---------------------------------------------------------------------------------


async def test_a_job_that_moves_while_pages_are_read_is_listed_once(cts: CtsStandIn) -> None:
    cts.jobs = [job(f"j{n}", completed=ago(100 * (n + 1))) for n in range(6)]
    exporter = exporter_for(cts.url, page_size=2)
    await exporter.scan()

    pages_before = len(cts.requests("/admin/jobs"))

    def change_a_listed_job_and_an_unlisted_one(request: Any) -> None:
        if len(cts.requests("/admin/jobs")) == pages_before + 2:
            # j0 was on the first page; it completes again later and is imported, so it moves
            # above the pages still to come. j5, not listed yet, gets its import outcome.
            # Neither may be counted twice or lost in the next scans.
            cts.jobs[0] = job("j0", completed=ago(1), complete=ago(0.5))
            cts.jobs[5] = job("j5", completed=ago(600), complete=ago(2))

    cts.on_list = change_a_listed_job_and_an_unlisted_one
    await exporter.scan()
    await exporter.scan()
    await exporter.scan()
    found = samples(exporter.metrics)
    assert value(found, "cts_exporter_scanned_jobs") == 6
    assert value(found, "cts_import_jobs", status="complete") == 2
    assert value(found, "cts_import_jobs", status="waiting") == 4
    assert value(found, "cts_imports_total", status="complete") == 2
    await exporter.client.aclose()


async def test_a_job_repeated_across_pages_counts_once(cts: CtsStandIn) -> None:
    same = job("twin", completed=ago(100))
    cts.jobs = [same, dict(same), job("other", completed=ago(200)), job("old", completed=ago(300))]
    found = await scan_once(cts, page_size=2)
    assert value(found, "cts_exporter_scanned_jobs") == 3
    assert value(found, "cts_import_jobs", status="waiting") == 3


async def test_a_cts_that_ignores_before_is_a_payload_failure_not_an_endless_scan(
    cts: CtsStandIn,
) -> None:
    full_page = [job(f"p{n}", completed=ago(100 + n)) for n in range(2)]
    cts.fail("/admin/jobs", Body(b'{"jobs": ' + json.dumps(full_page).encode() + b"}"))
    found = await scan_once(cts, page_size=2)
    assert value(found, "cts_exporter_scan_errors_total", reason="payload") == 1
    assert len(cts.requests("/admin/jobs")) == 3


async def test_an_empty_window_is_a_successful_scan_of_nothing(cts: CtsStandIn) -> None:
    cts.jobs = []
    found = await scan_once(cts)
    assert value(found, "cts_exporter_last_scan_success") == 1
    assert value(found, "cts_exporter_scanned_jobs") == 0
    assert value(found, "cts_import_lag_seconds") == 0
    assert all(value(found, "cts_import_jobs", status=s) == 0 for s in ("waiting", "error"))


# ---- clocks ---------------------------------------------------------------------------------


@pytest.mark.parametrize("skew", [-300.0, 300.0])
async def test_a_cts_clock_off_by_minutes_shows_as_skew_and_lags_stay_positive(
    cts: CtsStandIn, skew: float
) -> None:
    cts.skew = skew
    # As the CTS sees it, this job completed a second ago: with its clock ahead, that is in
    # the exporter's future.
    cts.jobs = [job("fresh", completed=ago(-skew + 1))]
    found = await scan_once(cts)
    assert value(found, "cts_exporter_clock_skew_seconds") == pytest.approx(-skew, abs=5)
    assert value(found, "cts_import_lag_seconds") >= 0
    lag = value(
        found,
        "cts_import_job_lag_seconds",
        job_id="fresh",
        user="alice",
        cluster="kbase",
        image="ghcr.io/kbase/checkm2",
        status="waiting",
    )
    assert lag >= 0


# ---- through the simulated CTS's own fault rules --------------------------------------------


@pytest.mark.parametrize(
    ("rule", "reason"),
    [
        pytest.param({"action": "status", "status": 503}, "http", id="503"),
        pytest.param({"action": "body", "body": "<html>oops</html>"}, "payload", id="html"),
        pytest.param({"action": "disconnect", "after_bytes": 8}, "connect", id="cut"),
    ],
)
async def test_the_simulated_ctss_fault_rules_fail_a_scan_that_recovers_when_cleared(
    rule: dict[str, Any], reason: str
) -> None:
    options = SimulatorOptions(jobs=0, arrival_interval=0, outage_interval=0, seed=1)
    async with start_simulator(options) as simulator:
        control = httpx.AsyncClient(
            base_url=simulator.url,
            headers={"Authorization": f"Bearer {simulator.admin_token}"},
        )
        created = await control.post("/_sim/jobs", json={"user": "alice"})
        assert created.status_code == 200
        settings = {"cts_token": simulator.admin_token, "request_timeout": 0.5, "scan_timeout": 2}
        configured = ExporterSettings(cts_url=simulator.url, **settings)
        token = TokenSource(value=simulator.admin_token)
        exporter = Exporter(configured, simulator.url, token, retry=QUICK_RETRY)
        await exporter.scan()
        good = samples(exporter.metrics)

        faults = await control.post("/_sim/faults", json={"rules": [{**rule, "path": "/admin"}]})
        assert faults.status_code in (200, 201, 204)
        await exporter.scan()
        failed = samples(exporter.metrics)

        await control.delete("/_sim/faults")
        await exporter.scan()
        healed = samples(exporter.metrics)
        await control.aclose()
        await exporter.client.aclose()

    assert value(good, "cts_import_jobs", status="waiting") == 1
    assert value(failed, "cts_exporter_last_scan_success") == 0
    assert value(failed, "cts_exporter_scan_errors_total", reason=reason) == 1
    assert picture(failed) == picture(good)
    assert value(healed, "cts_exporter_last_scan_success") == 1
    assert picture(healed) == picture(good)

"""The exporter as a real process while the CTS is down, slow, or the process is told to stop."""

from __future__ import annotations

import signal
from pathlib import Path

import anyio
import httpx
import pytest

from tests.exposition import value
from tests.misbehaving import TOKEN, CtsStandIn, Stall, ago, job
from tests.promstack import free_port, wait_until
from tests.test_exporter_process import exporter_process, write_token

pytestmark = pytest.mark.anyio


async def test_sigterm_during_a_scan_ends_the_process_cleanly(tmp_path: Path) -> None:
    with CtsStandIn() as cts:
        cts.jobs = [job("a", completed=ago(60))]
        cts.fail("/admin/jobs", Stall())
        with exporter_process(cts.url, write_token(tmp_path, TOKEN)) as exporter:
            wait_until(lambda: bool(cts.requests("/admin/jobs")), 20, "the scan to reach the list")
            exporter.process.send_signal(signal.SIGTERM)
            output, _ = exporter.process.communicate(timeout=10)
    assert exporter.process.returncode == 0
    assert "stopping" in output
    assert "Traceback" not in output


async def test_fifty_scrapes_during_a_stalled_scan_are_answered_and_no_second_scan_starts(
    tmp_path: Path,
) -> None:
    stall = Stall()
    with CtsStandIn() as cts:
        cts.jobs = [job("a", completed=ago(60))]
        with exporter_process(cts.url, write_token(tmp_path, TOKEN)) as exporter:
            await exporter.wait_for("a first scan", lambda s: s.get(SUCCESS) == 1)
            cts.fail("/admin/jobs", stall, times=1)
            stalled = len(cts.requests("/admin/jobs")) + 1
            wait_until(lambda: len(cts.requests("/admin/jobs")) == stalled, 20, "a scan to stall")

            answers: list[httpx.Response] = []
            async with httpx.AsyncClient(timeout=10) as client:

                async def scrape() -> None:
                    answers.append(await client.get(f"{exporter.url}/metrics"))

                async with anyio.create_task_group() as group:
                    for _ in range(50):
                        group.start_soon(scrape)

            # Every scrape was answered while the scan was still held at the CTS, and the
            # schedule (every 0.5s) did not start another scan beside it.
            assert not stall.release.is_set()
            assert [answer.status_code for answer in answers] == [200] * 50
            assert all("cts_jobs{state=" in answer.text for answer in answers)
            assert len(cts.requests("/admin/jobs")) == stalled
            assert cts.most_in_flight == 1

            stall.release.set()
            await exporter.wait_for(
                "scans to resume", lambda _: len(cts.requests("/admin/jobs")) > stalled
            )
            code, _ = exporter.stop()
    assert code == 0


SUCCESS = ("cts_exporter_last_scan_success", frozenset())


async def test_starting_while_the_cts_is_down_serves_health_and_scans_once_it_returns(
    tmp_path: Path,
) -> None:
    port = free_port()
    with exporter_process(f"http://127.0.0.1:{port}", write_token(tmp_path, TOKEN)) as exporter:
        down = await exporter.wait_for(
            "a failed scan",
            lambda s: (
                s.get(("cts_exporter_scan_errors_total", frozenset({("reason", "connect")}))) == 1
            ),
        )
        assert value(down, "cts_exporter_last_scan_success") == 0
        assert value(down, "cts_exporter_last_scan_success_timestamp_seconds") == 0
        assert value(down, "cts_import_jobs", status="waiting") == 0
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"{exporter.url}/healthz")).status_code == 200

        with CtsStandIn(port=port) as cts:
            cts.jobs = [job("late", completed=ago(60))]
            up = await exporter.wait_for("a good scan", lambda s: s.get(SUCCESS) == 1)
            code, output = exporter.stop()
    assert value(up, "cts_import_jobs", status="waiting") == 1
    assert code == 0
    assert "scan failed (connect)" in output

"""The exporter as a real process against a CTS over HTTP, checked through its /metrics."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import httpx
import pytest

from exporter.cts import JOB_STATES
from exporter.simulator import Simulator, SimulatorOptions, start_simulator
from tests.exposition import Samples, parse, series, value
from tests.promstack import free_port

pytestmark = pytest.mark.anyio

EXPORTER = str(Path(sys.executable).with_name("cts-import-exporter"))
PAGE_SIZE = 4


class ExporterProcess:
    """``cts-import-exporter`` running as a child process on a free loopback port."""

    def __init__(self, process: subprocess.Popen[str], url: str) -> None:
        self.process = process
        self.url = url

    async def metrics(self) -> str:
        async with httpx.AsyncClient() as client:
            answer = await client.get(f"{self.url}/metrics", timeout=5)
        assert answer.status_code == 200
        return answer.text

    async def wait_for(
        self, condition: str, check: Callable[[Samples], bool], within: float = 20
    ) -> Samples:
        """Poll /metrics until ``check(samples)`` holds."""
        deadline = time.monotonic() + within
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"exporter exited early: {self.process.stdout}")
            try:
                samples = parse(await self.metrics())
                if check(samples):
                    return samples
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {condition}")
            await anyio.sleep(0.1)

    def stop(self) -> tuple[int, str]:
        """SIGTERM, then the exit code and everything the process logged."""
        self.process.send_signal(signal.SIGTERM)
        output, _ = self.process.communicate(timeout=15)
        return self.process.returncode, output


@contextmanager
def exporter_process(cts_url: str, token_file: Path, *flags: str) -> Iterator[ExporterProcess]:
    port = free_port()
    process = subprocess.Popen(
        [
            EXPORTER,
            "--cts-url",
            cts_url,
            "--cts-token-file",
            str(token_file),
            "--listen-address",
            f"127.0.0.1:{port}",
            "--scan-interval",
            "0.5s",
            "--page-size",
            str(PAGE_SIZE),
            *flags,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("CTS_EXPORTER_")},
    )
    running = ExporterProcess(process, f"http://127.0.0.1:{port}")
    try:
        yield running
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


@asynccontextmanager
async def quiet_cts() -> AsyncIterator[Simulator]:
    """A simulated CTS with no jobs of its own: each test adds exactly the jobs it needs."""
    options = SimulatorOptions(jobs=0, arrival_interval=0, outage_interval=0, seed=1)
    async with start_simulator(options) as simulator:
        yield simulator


def write_token(tmp_path: Path, token: str, name: str = "token") -> Path:
    path = tmp_path / name
    path.write_text(token + "\n")
    return path


def cse(moment: datetime) -> float:
    return moment.timestamp()


async def test_every_metric_describes_the_window_after_paging_past_a_shared_millisecond(
    tmp_path: Path,
) -> None:
    async with quiet_cts() as cts:
        world = cts.world
        now = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=5)

        def ago(seconds: float) -> float:
            return (now - timedelta(seconds=seconds)).timestamp()

        waiting_old = world.add_job("alice", last_transition=ago(3000))
        waiting_new = world.add_job("bob", last_transition=ago(100))
        running = world.add_job("alice", last_transition=ago(2500), cluster="perlmutter-jaws")
        world.write_import(running.id, "start", ago(2400))
        done = world.add_job("carol", last_transition=ago(2000))
        world.write_import(done.id, "start", ago(1990))
        world.write_import(done.id, "complete", ago(1900))
        nothing = world.add_job("carol", last_transition=ago(1800))
        world.write_import(nothing.id, "no_operation", ago(1795))
        failed = world.add_job("dave", last_transition=ago(1500), image="ghcr.io/kbase/gtdb:2.3")
        world.write_import(failed.id, "start", ago(1490))
        world.write_import(failed.id, "error", ago(1400))
        invalid = world.add_job("erin", last_transition=ago(1300))
        world.update_admin_meta(invalid.id, {"cse_event_processing_start": "soon"}, ())
        # Three jobs in one millisecond, placed so that the second page boundary falls among
        # them (pages hold four jobs, newest first).
        shared = [world.add_job("bob", last_transition=ago(1000) + 0.0004) for _ in range(3)]
        others = [
            world.add_job("alice", state=state, last_transition=ago(500 + i))
            for i, state in enumerate(["job_submitted", "error", "canceled", "created"])
        ]
        old = world.add_job("alice", last_transition=ago(10 * 86400))  # outside the window
        in_window = 7 + len(shared) + len(others)

        token = write_token(tmp_path, cts.admin_token)
        with exporter_process(cts.url, token, "--lookback", "7d") as exporter:
            samples = await exporter.wait_for(
                "a successful scan",
                lambda s: value(s, "cts_exporter_last_scan_success") == 1,
            )
            scraped_at = time.time()

            # The window, by CTS state and by import status.
            states = {dict(k)["state"]: v for k, v in series(samples, "cts_jobs").items()}
            assert set(states) == set(JOB_STATES)
            assert states["complete"] == 7 + len(shared)
            for state in ("job_submitted", "error", "canceled", "created"):
                assert states[state] == 1
            assert sum(states.values()) == in_window
            statuses = {dict(k)["status"]: v for k, v in series(samples, "cts_import_jobs").items()}
            assert statuses == {
                "waiting": 2 + len(shared),
                "running": 1,
                "complete": 1,
                "no_operation": 1,
                "error": 1,
            }
            assert value(samples, "cts_import_invalid_metadata_jobs") == 1
            assert value(samples, "cts_import_clock_skew_jobs") == 0

            # The oldest pending import is the job waiting since 3000 s ago.
            lag = value(samples, "cts_import_lag_seconds")
            assert scraped_at - ago(3000) - 5 < lag < scraped_at - ago(3000) + 5
            oldest = series(samples, "cts_import_oldest_pending_timestamp_seconds")
            assert oldest == {
                frozenset({("status", "waiting")}): pytest.approx(ago(3000), abs=0.001),
                frozenset({("status", "running")}): pytest.approx(ago(2400), abs=0.001),
            }

            # One lag series per completed job, labelled for people to find their job.
            per_job = {
                dict(k)["job_id"]: dict(k) | {"value": v}
                for k, v in series(samples, "cts_import_job_lag_seconds").items()
            }
            assert set(per_job) == {
                waiting_old.id,
                waiting_new.id,
                running.id,
                done.id,
                nothing.id,
                failed.id,
                *(job.id for job in shared),
            }
            assert per_job[failed.id]["status"] == "error"
            assert per_job[failed.id]["user"] == "dave"
            assert per_job[failed.id]["image"] == "ghcr.io/kbase/gtdb"
            assert per_job[failed.id]["value"] == pytest.approx(100, abs=0.01)
            assert per_job[done.id]["value"] == pytest.approx(100, abs=0.01)
            assert per_job[running.id]["cluster"] == "perlmutter-jaws"
            assert per_job[running.id]["status"] == "running"
            since = {
                dict(k)["job_id"]: v
                for k, v in series(samples, "cts_import_job_status_timestamp_seconds").items()
            }
            assert since[running.id] == pytest.approx(ago(2400), abs=0.001)
            assert since[waiting_old.id] == pytest.approx(ago(3000), abs=0.001)
            transitions = series(samples, "cts_job_last_transition_timestamp_seconds")
            assert len(transitions) == in_window
            assert old.id not in {dict(k)["job_id"] for k in transitions}

            # The exporter's own health.
            assert value(samples, "cts_exporter_scanned_jobs") == in_window
            assert (
                value(samples, "cts_exporter_scan_pages") >= 5
            )  # 18 jobs, 4 a page, one boundary repeated
            assert value(samples, "cts_exporter_scan_truncated") == 0
            assert value(samples, "cts_exporter_job_series_dropped") == 0
            assert value(samples, "cts_exporter_unreadable_jobs") == 0
            assert value(samples, "cts_exporter_admin_mode") == 1
            assert (
                scraped_at - 30
                < value(samples, "cts_exporter_last_scan_success_timestamp_seconds")
                <= scraped_at
            )
            assert 0 < value(samples, "cts_exporter_last_scan_duration_seconds") < 30
            assert value(samples, "cts_exporter_scans_total") >= 1
            for reason in ("connect", "timeout", "auth", "http", "payload"):
                assert value(samples, "cts_exporter_scan_errors_total", reason=reason) == 0
            assert (
                value(
                    samples, "cts_exporter_request_duration_seconds_count", endpoint="/admin/jobs"
                )
                >= 5
            )
            assert abs(value(samples, "cts_exporter_clock_skew_seconds")) < 5
            assert value(samples, "cts_exporter_build_info", version="0.1.0") == 1
            (cts_info,) = series(samples, "cts_info")
            assert dict(cts_info)["version"]
            # The first scan is a baseline: nothing counted as newly finished.
            for status in ("complete", "no_operation", "error"):
                assert value(samples, "cts_imports_total", status=status) == 0
            assert value(samples, "cts_import_latency_seconds_count") == 0

            # The running import finishes: counted once, with its latency and duration.
            world.write_import(running.id, "complete", ago(2300))
            samples = await exporter.wait_for(
                "the finished import to be counted",
                lambda s: value(s, "cts_imports_total", status="complete") == 1,
            )
            await anyio.sleep(1.5)  # several more scans: the same outcome must not count again
            samples = parse(await exporter.metrics())
            assert value(samples, "cts_imports_total", status="complete") == 1
            assert value(samples, "cts_import_latency_seconds_count") == 1
            assert value(samples, "cts_import_latency_seconds_sum") == pytest.approx(200, abs=0.01)
            assert value(samples, "cts_import_duration_seconds_sum") == pytest.approx(100, abs=0.01)
            assert value(samples, "cts_import_latency_seconds_bucket", le="300.0") == 1
            assert value(samples, "cts_import_latency_seconds_bucket", le="120.0") == 0
            oldest = series(samples, "cts_import_oldest_pending_timestamp_seconds")
            assert frozenset({("status", "running")}) not in oldest

            # The exposition passes Prometheus's own checker.
            exposition = (await exporter.metrics()).encode()
            checked = await anyio.run_process(
                ["promtool", "check", "metrics"], input=exposition, check=False
            )
            assert checked.returncode == 0, checked.stdout + checked.stderr

            code, log = exporter.stop()
        assert code == 0
        assert "scan ok" in log
        assert cts.admin_token not in log


async def test_a_user_token_scans_only_that_users_jobs_and_says_so_once(tmp_path: Path) -> None:
    async with quiet_cts() as cts:
        mine = [cts.world.add_job("alice") for _ in range(3)]
        cts.world.add_job("bob")
        token = write_token(tmp_path, cts.user_tokens["alice"])
        with exporter_process(cts.url, token) as exporter:
            samples = await exporter.wait_for(
                "two successful scans", lambda s: value(s, "cts_exporter_scans_total") >= 2
            )
            assert value(samples, "cts_exporter_admin_mode") == 0
            assert value(samples, "cts_exporter_scanned_jobs") == len(mine)
            jobs = {dict(k)["job_id"] for k in series(samples, "cts_import_job_lag_seconds")}
            assert jobs == {job.id for job in mine}
            code, log = exporter.stop()
        assert code == 0
        assert log.count("only the jobs of user alice are visible") == 1


async def test_a_rejected_token_is_an_auth_failure_and_metrics_keep_answering(
    tmp_path: Path,
) -> None:
    async with quiet_cts() as cts:
        cts.world.add_job("alice")
        token = write_token(tmp_path, "not-a-valid-token")
        with exporter_process(cts.url, token) as exporter:
            samples = await exporter.wait_for(
                "an auth failure",
                lambda s: value(s, "cts_exporter_scan_errors_total", reason="auth") >= 1,
            )
            assert value(samples, "cts_exporter_last_scan_success") == 0
            assert value(samples, "cts_exporter_last_scan_success_timestamp_seconds") == 0
            # The counts are present, at zero, so that dashboards and rules have series.
            assert value(samples, "cts_import_jobs", status="waiting") == 0
            code, log = exporter.stop()
        assert code == 0
        assert "scan failed (auth)" in log
        assert "not-a-valid-token" not in log


@pytest.mark.parametrize(
    ("make_token_file", "message"),
    [
        (lambda tmp: tmp / "absent", "cannot read token file"),
        (lambda tmp: write_token(tmp, "", "empty"), "is empty"),
        (lambda tmp: tmp, "cannot read token file"),  # a directory cannot be read as a file
    ],
    ids=["missing", "empty", "unreadable"],
)
def test_a_bad_token_file_is_one_clear_line_and_exit_code_2(
    tmp_path: Path, make_token_file: object, message: str
) -> None:
    token_file = make_token_file(tmp_path)  # type: ignore[operator]
    result = subprocess.run(
        [EXPORTER, "--cts-url", "http://127.0.0.1:9", "--cts-token-file", str(token_file)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert message in lines[0]
    assert lines[0].startswith("cts-import-exporter: ")

"""The exporter's side of one benchmark window, run in a process of its own.

``bench/run.py`` starts this once per window size against a simulated CTS that runs in yet
another process, so that neither the simulator's CPU nor an earlier window's memory counts
against the exporter. It prints one JSON object of figures on stdout.

Every figure comes from the same process and the same CTS: the exporter's scan, the floor (the
same pages fetched with a bare client that only decodes them), the per-job status alternative
on a sample, and the ``/metrics`` render.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from exporter.cts import CtsClient, TokenSource
from exporter.runtime import Exporter
from exporter.settings import ExporterSettings

# The simulator spreads its jobs over seven days ending when it started; a day more keeps all
# of them in the window however long the benchmark runs.
LOOKBACK = timedelta(days=8)
ENDPOINTS = ("/", "/whoami", "/admin/jobs")


@dataclass
class Timing:
    """Wall and CPU seconds of one measured piece of work."""

    wall: float
    cpu: float


@dataclass
class Listing:
    """What one pass over the window fetched."""

    jobs: int
    requests: int


async def measure(work: Callable[[], Awaitable[Listing]]) -> tuple[Timing, Listing]:
    """Run ``work`` once, timing it on the wall clock and in this process's CPU."""
    wall, cpu = time.perf_counter(), time.process_time()
    listing = await work()
    return Timing(time.perf_counter() - wall, time.process_time() - cpu), listing


async def floor_pass(http: httpx.AsyncClient, page_size: int) -> Listing:
    """The least any client pays to see the window: fetch each page and decode it, no more.

    Paging needs the oldest row's time (rows come newest first, so it is the last row's) and a
    set of ids to drop the rows a page boundary repeats.
    """
    after = (datetime.now(UTC) - LOOKBACK).isoformat(timespec="milliseconds")
    params = {"after": after, "limit": str(page_size)}
    seen: set[str] = set()
    requests = 0
    while True:
        answer = await http.get("/admin/jobs", params=params)
        answer.raise_for_status()
        requests += 1
        rows = json.loads(answer.content)["jobs"]
        seen.update(row["id"] for row in rows)
        if len(rows) < page_size:
            return Listing(jobs=len(seen), requests=requests)
        oldest = datetime.fromisoformat(rows[-1]["transition_times"][-1]["time"])
        params["before"] = (oldest + timedelta(milliseconds=1)).isoformat(timespec="milliseconds")


def requests_made(exporter: Exporter) -> int:
    """CTS requests the exporter has made so far, from its own request histogram."""
    registry = exporter.metrics.registry
    return int(
        sum(
            registry.get_sample_value(
                "cts_exporter_request_duration_seconds_count", {"endpoint": endpoint}
            )
            or 0
            for endpoint in ENDPOINTS
        )
    )


async def exporter_pass(exporter: Exporter) -> Listing:
    """One scan exactly as the running exporter makes it; fails loudly if the scan failed."""
    before = requests_made(exporter)
    await exporter.scan()
    snapshot = exporter.metrics.snapshot
    if not exporter.metrics.health.last_success or snapshot is None:
        raise RuntimeError(f"the scan failed: {exporter.metrics.health.last_error}")
    return Listing(jobs=len(snapshot.jobs), requests=requests_made(exporter) - before)


def render_times(exporter: Exporter, cap: int, runs: int) -> tuple[float, float, int]:
    """Seconds of the first ``/metrics`` render with ``cap`` per-job series after a scan (it
    writes the per-job text that later scrapes reuse), the median of ``runs`` renders after it,
    and the body's bytes."""
    exporter.metrics.max_job_series = cap
    seconds: list[float] = []
    size = 0
    for _ in range(runs + 1):
        started = time.perf_counter()
        size = len(exporter.metrics.render())
        seconds.append(time.perf_counter() - started)
    return seconds[0], statistics.median(seconds[1:]), size


async def status_sample(
    url: str, user_tokens: dict[str, str], jobs: list[tuple[str, str]]
) -> Timing:
    """Read each sampled job through ``GET /jobs/{id}/status`` with its owner's token.

    One call after another, as a loop over the window would make them.
    """
    clients = {
        user: CtsClient(url, TokenSource(value=token)) for user, token in user_tokens.items()
    }
    try:
        wall, cpu = time.perf_counter(), time.process_time()
        for job_id, user in jobs:
            await clients[user].job_status(job_id)
        return Timing(time.perf_counter() - wall, time.process_time() - cpu)
    finally:
        for client in clients.values():
            await client.aclose()


def peak_memory_mb() -> float:
    """This process's peak resident memory so far, in MiB (``ru_maxrss`` is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def run(arguments: argparse.Namespace) -> dict[str, Any]:
    """Every figure for one window, as a JSON-ready dictionary."""
    baseline_memory = peak_memory_mb()
    admin_token = arguments.admin_token_file.read_text().strip()
    user_tokens: dict[str, str] = json.loads(arguments.user_tokens_file.read_text())
    settings = ExporterSettings(
        cts_url=arguments.url,
        cts_token=admin_token,
        lookback=LOOKBACK.total_seconds(),
        page_size=arguments.page_size,
    )
    exporter = Exporter(settings, arguments.url, TokenSource(value=admin_token))
    default_cap = settings.max_job_series
    http = httpx.AsyncClient(
        base_url=arguments.url, headers={"Authorization": f"Bearer {admin_token}"}, timeout=120
    )
    scans: list[Timing] = []
    floors: list[Timing] = []
    try:
        # One unmeasured pass each: the simulator's first answers and the exporter's first scan
        # (which only records outcomes, see OutcomeTracker) are not the steady state.
        await floor_pass(http, arguments.page_size)
        await exporter_pass(exporter)
        for _ in range(arguments.runs):
            floor_timing, floor_listing = await measure(
                lambda: floor_pass(http, arguments.page_size)
            )
            scan_timing, scan_listing = await measure(lambda: exporter_pass(exporter))
            floors.append(floor_timing)
            scans.append(scan_timing)
    finally:
        await http.aclose()

    snapshot = exporter.metrics.snapshot
    assert snapshot is not None
    jobs = len(snapshot.jobs)
    first_capped, render_capped, size_capped = render_times(
        exporter, default_cap, arguments.render_runs
    )
    # Read before the uncapped render, a stress no deployment runs, holds the whole text.
    scan_memory = peak_memory_mb()
    first_all, render_all, size_all = render_times(
        exporter, max(jobs, default_cap), arguments.render_runs
    )
    exporter.metrics.max_job_series = default_cap

    sample = [(job.id, job.user) for job in snapshot.jobs[: arguments.status_sample]]
    status = await status_sample(arguments.url, user_tokens, sample)
    await exporter.client.aclose()
    return {
        "jobs": jobs,
        "floor_jobs": floor_listing.jobs,
        "scan_requests": scan_listing.requests,
        "floor_requests": floor_listing.requests,
        "scan": asdict(_median(scans)),
        "floor": asdict(_median(floors)),
        "runs": arguments.runs,
        "status_sample": len(sample),
        "status": asdict(status),
        "render_capped_first": first_capped,
        "render_capped": render_capped,
        "render_capped_bytes": size_capped,
        "render_all_first": first_all,
        "render_all": render_all,
        "render_all_bytes": size_all,
        "default_cap": default_cap,
        "baseline_memory_mb": baseline_memory,
        "peak_memory_mb": scan_memory,
    }


def _median(timings: list[Timing]) -> Timing:
    return Timing(
        wall=statistics.median(t.wall for t in timings),
        cpu=statistics.median(t.cpu for t in timings),
    )


def main() -> int:
    """Measure one window and print its figures as JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--admin-token-file", type=Path, required=True)
    parser.add_argument("--user-tokens-file", type=Path, required=True)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--render-runs", type=int, default=5)
    parser.add_argument("--status-sample", type=int, default=1000)
    parser.add_argument("--page-size", type=int, default=1000)
    arguments = parser.parse_args()
    figures = asyncio.run(run(arguments))
    json.dump(figures, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())

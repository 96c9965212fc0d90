"""Benchmark what a scan and a scrape cost as the look-back window grows, against the floor.

For each window size this starts the simulated CTS preloaded with that many jobs in a process of
its own, then measures the exporter in a second process (``bench/worker.py``), and prints
Markdown tables: the machine, the scan against the floor, the per-job status alternative, the
``/metrics`` render and peak memory. ``docs/benchmarks.md`` explains the columns and the results.

    .venv/bin/python bench/run.py                      # 1,000, 10,000 and 100,000 jobs
    .venv/bin/python bench/run.py --sizes 200 --runs 1 # a quick check that it all works
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

WORKER = Path(__file__).with_name("worker.py")
EXPORTER = str(Path(sys.executable).with_name("cts-import-exporter"))
# Preloading 100,000 jobs takes the simulator about twenty seconds on a slow core.
STARTUP_SECONDS = 600.0


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextlib.contextmanager
def simulated_cts(jobs: int, seed: int, workdir: Path) -> Iterator[str]:
    """A simulated CTS with ``jobs`` jobs in its window, in its own process; yields its URL.

    New jobs and CSE outages are off so that every run sees the same window.
    """
    port = free_port()
    command = [
        EXPORTER, "simulate",
        "--listen-address", f"127.0.0.1:{port}",
        "--jobs", str(jobs),
        "--seed", str(seed),
        "--arrival-interval", "0",
        "--outage-interval", "0",
        "--admin-token-file", str(workdir / "admin-token"),
        "--user-tokens-file", str(workdir / "user-tokens.json"),
        "--log-level", "warning",
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(process, url)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_until_serving(process: subprocess.Popen[bytes], url: str) -> None:
    """Return once ``GET /`` answers; raise if the simulator exits or never answers."""
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the simulated CTS exited with status {process.returncode}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(url + "/", timeout=5).status_code == 200:
                return
        time.sleep(0.5)
    raise RuntimeError(f"the simulated CTS did not answer within {STARTUP_SECONDS:g}s")


def measure_window(jobs: int, arguments: argparse.Namespace) -> dict[str, Any]:
    """Every figure for one window size, from a fresh simulator and a fresh worker."""
    with tempfile.TemporaryDirectory(prefix="cts-bench-") as directory:
        workdir = Path(directory)
        with simulated_cts(jobs, arguments.seed, workdir) as url:
            command = [
                sys.executable, str(WORKER),
                "--url", url,
                "--admin-token-file", str(workdir / "admin-token"),
                "--user-tokens-file", str(workdir / "user-tokens.json"),
                "--runs", str(arguments.runs),
                "--status-sample", str(arguments.status_sample),
                "--page-size", str(arguments.page_size),
            ]  # fmt: skip
            finished = subprocess.run(command, stdout=subprocess.PIPE, check=True)
    figures: dict[str, Any] = json.loads(finished.stdout)
    return figures


def machine() -> str:
    """The CPU model, core count and Python version, for the results' heading."""
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    cores = len(os.sched_getaffinity(0))
    return (
        f"{model}, {cores} cores, {platform.python_implementation()} "
        f"{platform.python_version()}, {platform.system()} {platform.release()}"
    )


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f}"


def _us_per_job(seconds: float, jobs: int) -> str:
    return f"{seconds / max(jobs, 1) * 1e6:,.1f}"


def _ratio(numerator: float, denominator: float) -> str:
    return f"{numerator / denominator:.2f}" if denominator > 0 else "n/a"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def report(results: list[dict[str, Any]], arguments: argparse.Namespace) -> str:
    """The results as Markdown: the machine, then one table per question."""
    scan_rows = []
    status_rows = []
    scrape_rows = []
    for r in results:
        jobs, scan, floor = r["jobs"], r["scan"], r["floor"]
        scan_rows.append([
            f"{jobs:,}",
            f"{r['scan_requests']:,}",
            f"{r['floor_requests']:,}",
            _ms(scan["wall"]),
            _ms(floor["wall"]),
            _ratio(scan["wall"], floor["wall"]),
            _us_per_job(scan["cpu"], jobs),
            _us_per_job(floor["cpu"], jobs),
            _ratio(scan["cpu"], floor["cpu"]),
        ])  # fmt: skip
        sample, status = r["status_sample"], r["status"]
        per_call = status["wall"] / max(sample, 1)
        status_rows.append([
            f"{jobs:,}",
            f"{sample:,}",
            f"{per_call * 1000:.2f}",
            f"{jobs:,}",
            f"{per_call * jobs:,.1f}",
            _ratio(per_call * jobs, scan["wall"]),
        ])  # fmt: skip
        scrape_rows.append([
            f"{jobs:,}",
            _ms(r["render_capped_first"]),
            _ms(r["render_capped"]),
            f"{r['render_capped_bytes'] / 1024:,.0f}",
            _ms(r["render_all_first"]),
            _ms(r["render_all"]),
            f"{r['render_all_bytes'] / 1024:,.0f}",
            f"{r['baseline_memory_mb']:,.0f}",
            f"{r['peak_memory_mb']:,.0f}",
        ])  # fmt: skip
    runs = results[0]["runs"] if results else arguments.runs
    cap = results[0]["default_cap"] if results else 0
    return "\n\n".join([
        f"Machine: {machine()}. Page size {arguments.page_size}; medians of {runs} runs "
        "after one unmeasured run.",
        "Scan against the floor (wall time includes the simulated CTS answering; CPU is the "
        "exporter's process alone):",
        _table(
            ["jobs", "scan requests", "floor requests", "scan ms", "floor ms", "wall ratio",
             "scan CPU µs/job", "floor CPU µs/job", "CPU ratio"],
            scan_rows,
        ),
        "One `GET /jobs/{id}/status` per job instead (timed on a sample, one call after "
        "another, extrapolated to the window):",
        _table(
            ["jobs", "sampled calls", "ms per call", "requests per scan", "est. scan s",
             "times the scan"],
            status_rows,
        ),
        f"`/metrics` render and memory (the first render after a scan writes the per-job "
        f"text, later ones reuse it: median of 5; the default cap is {cap} series per per-job "
        "metric, 'no cap' sets it to the window's jobs):",
        _table(
            ["jobs", "first render ms, cap", "render ms, cap", "KiB, cap",
             "first render ms, no cap", "render ms, no cap", "KiB, no cap",
             "RSS after imports MiB", "peak RSS MiB"],
            scrape_rows,
        ),
    ])  # fmt: skip


def main() -> int:
    """Measure every window size and print the results."""
    parser = argparse.ArgumentParser(
        description="Measure scan and scrape cost against the floor as the window grows."
    )
    parser.add_argument(
        "--sizes",
        default="1000,10000,100000",
        help="comma-separated jobs in the window (default %(default)s)",
    )
    parser.add_argument(
        "--runs",
        type=int,
        default=3,
        help="measured scans per size; the median is reported (default 3)",
    )
    parser.add_argument(
        "--status-sample",
        type=int,
        default=1000,
        help="jobs read one by one through /jobs/{id}/status (default 1000)",
    )
    parser.add_argument("--page-size", type=int, default=1000, help="jobs per list request")
    parser.add_argument("--seed", type=int, default=1, help="the simulated world's seed")
    arguments = parser.parse_args()  # fmt: skip
    sizes = [int(size) for size in arguments.sizes.split(",") if size.strip()]
    if arguments.runs < 1 or not sizes:
        parser.error("give at least one size and one run")

    results = []
    for jobs in sizes:
        print(f"measuring a window of {jobs:,} jobs ...", file=sys.stderr, flush=True)
        results.append(measure_window(jobs, arguments))
    print(report(results, arguments))
    return 0


if __name__ == "__main__":
    sys.exit(main())

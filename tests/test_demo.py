"""The demo, started as a new user would start it, shows every import status."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.promstack import free_port

EXPORTER = str(Path(sys.executable).with_name("cts-import-exporter"))
STATUSES = {"waiting", "running", "complete", "no_operation", "error"}


def import_counts(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    return {
        sample.labels["status"]: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "cts_import_jobs"
        for sample in family.samples
    }


def test_the_demo_shows_jobs_in_every_import_status_within_ten_seconds() -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    demo = subprocess.Popen(
        [EXPORTER, "--demo", "--listen-address", f"127.0.0.1:{port}", "--scan-interval", "1s"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        counts: dict[str, float] = {}
        # Ten seconds is the promise; the bound is looser because CI machines are shared.
        while time.monotonic() - started < 60:
            try:
                counts = import_counts(url)
            except httpx.TransportError:
                counts = {}
            if set(counts) == STATUSES and all(counts[s] > 0 for s in STATUSES):
                break
            time.sleep(0.2)
        assert set(counts) == STATUSES
        assert all(counts[status] > 0 for status in STATUSES), counts
    finally:
        demo.send_signal(signal.SIGTERM)
        output, _ = demo.communicate(timeout=20)
    assert demo.returncode == 0, output
    assert "scan ok" in output

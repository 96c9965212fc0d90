"""The shipped rules and routing end to end: simulated CTS, exporter, Prometheus, Alertmanager.

Everything runs as real processes on loopback. Only timings are shortened: every alert's `for:`
becomes one second and Alertmanager groups for one second; the rule expressions, the routes and
the inhibitions are the shipped ones. Alertmanager's receivers become webhooks served by the
test, one path per receiver, so the test also sees which receiver a notification reached.
"""

import json
import secrets
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.promstack import (
    Alertmanager,
    Prometheus,
    free_port,
    start_alertmanager,
    start_prometheus,
)
from tests.promstack import wait_until as wait_for

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "alerts"
COMMAND = str(ROOT / ".venv" / "bin" / "cts-import-exporter")
SCRAPE_JOB = "cts-import-exporter"
PATIENCE_SECONDS = 90.0


@dataclass
class Webhook:
    """Notifications Alertmanager posted, as (receiver, payload) in arrival order."""

    url: str
    notifications: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def alerts(self, alertname: str, job_id: str) -> list[tuple[str, str]]:
        """(receiver, status) of every notified alert with this name and job id."""
        with self.lock:
            return [
                (receiver, alert["status"])
                for receiver, payload in self.notifications
                for alert in payload["alerts"]
                if alert["labels"].get("alertname") == alertname
                and alert["labels"].get("job_id") == job_id
            ]


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    received = Webhook(url="")

    class Receive(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with received.lock:
                received.notifications.append((self.path.strip("/"), payload))
            self.send_response(200)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receive)
    received.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield received
    server.shutdown()
    server.server_close()


class Process:
    """A command of this project running in the background, logging to a file."""

    def __init__(self, arguments: list[str], log: Path):
        self.log = log
        with log.open("wb") as output:
            self.process = subprocess.Popen(
                [COMMAND, *arguments], stdout=output, stderr=subprocess.STDOUT
            )

    def wait_until_answering(self, url: str) -> None:
        """Poll ``url`` until it answers 200, failing early if the process exits."""

        def answering() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"exited with {self.process.returncode}:\n{self.tail()}")
            try:
                return httpx.get(url, timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(answering, PATIENCE_SECONDS, f"{url} to answer")

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass
class Stack:
    cts_url: str
    admin_token: str
    exporter_url: str
    prometheus: Prometheus
    alertmanager: Alertmanager
    processes: list[Process]

    def control(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST to the simulated CTS's control API as its admin."""
        response = httpx.post(
            self.cts_url + path,
            json=body,
            headers={"Authorization": f"Bearer {self.admin_token}"},
            timeout=10,
        )
        response.raise_for_status()
        return response.json() if response.content else {}

    def logs(self) -> str:
        return "\n".join(process.tail() for process in self.processes)


def rules_with_short_for(directory: Path) -> list[Path]:
    """Copies of the shipped rule files in which every `for:` is one second."""
    copies = []
    for path in sorted(ALERTS.glob("*.rules.yml")):
        rules = yaml.safe_load(path.read_text())
        for group in rules["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    rule["for"] = "1s"
        copy = directory / path.name
        copy.write_text(yaml.safe_dump(rules))
        copies.append(copy)
    return copies


def routing_to(webhook: Webhook) -> str:
    """The shipped Alertmanager configuration, its receivers replaced by the test's webhook."""
    config = yaml.safe_load((ALERTS / "alertmanager.example.yml").read_text())
    config["receivers"] = [
        {
            "name": receiver["name"],
            "webhook_configs": [{"url": f"{webhook.url}/{receiver['name']}"}],
        }
        for receiver in config["receivers"]
    ]
    config["route"].update(group_wait="1s", group_interval="1s", repeat_interval="1h")
    return yaml.safe_dump(config)


def scraping(exporter_address: str, alertmanager: Alertmanager) -> str:
    return yaml.safe_dump(
        {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "alerting": {
                "alertmanagers": [
                    {"static_configs": [{"targets": [alertmanager.url.removeprefix("http://")]}]}
                ]
            },
            "scrape_configs": [
                {"job_name": SCRAPE_JOB, "static_configs": [{"targets": [exporter_address]}]}
            ],
        }
    )


@pytest.fixture
def stack(tmp_path: Path, webhook: Webhook) -> Iterator[Stack]:
    processes: list[Process] = []
    servers: list[Prometheus | Alertmanager] = []
    try:
        token_file = tmp_path / "admin.token"
        admin_token = secrets.token_urlsafe(24)
        token_file.write_text(admin_token)
        token_file.chmod(0o600)

        cts_address = f"127.0.0.1:{free_port()}"
        simulator = Process(
            [
                "simulate",
                "--listen-address",
                cts_address,
                "--seed",
                "7",
                "--jobs",
                "20",
                "--admin-token-file",
                str(token_file),
            ],
            tmp_path / "simulator.log",
        )
        processes.append(simulator)
        simulator.wait_until_answering(f"http://{cts_address}/")

        exporter_address = f"127.0.0.1:{free_port()}"
        exporter = Process(
            [
                "--cts-url",
                f"http://{cts_address}",
                "--cts-token-file",
                str(token_file),
                "--listen-address",
                exporter_address,
                "--scan-interval",
                "1s",
                "--lookback",
                "1d",
            ],
            tmp_path / "exporter.log",
        )
        processes.append(exporter)
        exporter.wait_until_answering(f"http://{exporter_address}/healthz")

        alertmanager = start_alertmanager(routing_to(webhook))
        servers.append(alertmanager)
        prometheus = start_prometheus(
            scraping(exporter_address, alertmanager),
            rules_with_short_for(tmp_path),
            extra_args=["--rules.alert.resend-delay=1s"],
        )
        servers.append(prometheus)

        yield Stack(
            f"http://{cts_address}",
            admin_token,
            f"http://{exporter_address}",
            prometheus,
            alertmanager,
            processes,
        )
    finally:
        for server in reversed(servers):
            server.stop()
        for process in reversed(processes):
            process.stop()


def test_failed_import_pages_with_its_job_id_and_resolves_after_reprocessing(
    stack: Stack, webhook: Webhook
) -> None:
    # The exporter has scanned and Prometheus holds its result, so no scan alert holds back
    # the import alert through the shipped inhibitions.
    wait_for(
        lambda: bool(
            stack.prometheus.query(
                f'cts_exporter_last_scan_success_timestamp_seconds{{job="{SCRAPE_JOB}"}} > 0'
            )
        ),
        PATIENCE_SECONDS,
        "Prometheus to see a successful scan",
    )

    job_id = stack.control("/_sim/jobs", {"user": "alice", "image": "ghcr.io/kbase/checkm2:1.0"})[
        "id"
    ]
    stack.control(f"/_sim/jobs/{job_id}/import", {"outcome": "start"})
    stack.control(f"/_sim/jobs/{job_id}/import", {"outcome": "error"})

    try:
        wait_for(
            lambda: ("cts-import-pager", "firing") in webhook.alerts("CtsImportFailed", job_id),
            PATIENCE_SECONDS,
            f"CtsImportFailed for {job_id} to reach the pager",
        )
    except TimeoutError as error:
        raise AssertionError(f"{error}\n{stack.prometheus.alerts()}\n{stack.logs()}") from None

    stack.control(f"/_sim/jobs/{job_id}/import", {"outcome": "start"})
    stack.control(f"/_sim/jobs/{job_id}/import", {"outcome": "complete"})

    wait_for(
        lambda: ("cts-import-pager", "resolved") in webhook.alerts("CtsImportFailed", job_id),
        PATIENCE_SECONDS,
        f"CtsImportFailed for {job_id} to be resolved",
    )
    firing = [
        alert
        for receiver, payload in webhook.notifications
        for alert in payload["alerts"]
        if alert["labels"].get("job_id") == job_id and alert["status"] == "firing"
    ]
    assert firing[0]["labels"]["user"] == "alice"
    assert firing[0]["labels"]["image"] == "ghcr.io/kbase/checkm2"
    assert job_id in firing[0]["annotations"]["summary"]
    assert job_id in firing[0]["annotations"]["description"]

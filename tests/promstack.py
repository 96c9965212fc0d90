"""Real Prometheus and Alertmanager servers for tests, on free loopback ports.

Each server runs from the Debian binaries in its own temporary directory, is ready when its
start function returns, and is stopped by process id. Use it as a context manager::

    with start_prometheus(config_yaml, [Path("alerts/imports.rules.yml")]) as prometheus:
        prometheus.query('up{job="cts-import-exporter"}')

or call ``stop()`` yourself, e.g. at the end of a pytest fixture.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import httpx
import yaml

PROMETHEUS_BINARY = "/usr/bin/prometheus"
ALERTMANAGER_BINARY = "/usr/bin/prometheus-alertmanager"
READY_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 10.0

S = TypeVar("S", bound="Server")


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_until(
    condition: Callable[[], bool], timeout: float, what: str, poll_seconds: float = 0.1
) -> None:
    """Poll ``condition`` until it holds; after ``timeout`` seconds raise ``TimeoutError``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(poll_seconds)


class Server:
    """One running server process, its loopback URL and its temporary directory."""

    def __init__(self, name: str, process: subprocess.Popen[bytes], url: str, directory: Path):
        self.name = name
        self.process = process
        self.url = url
        self.directory = directory

    @property
    def log(self) -> str:
        """What the server wrote to stdout and stderr so far."""
        return (self.directory / "server.log").read_text(errors="replace")

    def get(self, path: str, **params: str) -> Any:
        """GET ``path`` from the server's HTTP API and return the decoded JSON body."""
        response = httpx.get(self.url + path, params=params, timeout=10)
        response.raise_for_status()
        return response.json()

    def stop(self) -> None:
        """Stop the process by its pid (terminate, then kill) and remove its directory."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


class Prometheus(Server):
    """A running Prometheus."""

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Evaluate an instant query now; return the result list of the API answer."""
        result: list[dict[str, Any]] = self.get("/api/v1/query", query=expr)["data"]["result"]
        return result

    def alerts(self) -> list[dict[str, Any]]:
        """Pending and firing alerts as Prometheus sees them."""
        alerts: list[dict[str, Any]] = self.get("/api/v1/alerts")["data"]["alerts"]
        return alerts

    def targets(self) -> list[dict[str, Any]]:
        """Active scrape targets with their health and last error."""
        targets: list[dict[str, Any]] = self.get("/api/v1/targets")["data"]["activeTargets"]
        return targets


class Alertmanager(Server):
    """A running Alertmanager, without clustering."""

    def alerts(self) -> list[dict[str, Any]]:
        """Alerts Alertmanager holds, with their inhibited or silenced state."""
        alerts: list[dict[str, Any]] = self.get("/api/v2/alerts")
        return alerts


def start_prometheus(
    config_yaml: str, rule_files: Sequence[Path] = (), extra_args: Sequence[str] = ()
) -> Prometheus:
    """Start Prometheus with ``config_yaml`` and wait until it is ready.

    The rule files are copied into the server's directory and replace any ``rule_files`` in the
    configuration. ``extra_args`` go on the command line, e.g. ``--rules.alert.resend-delay=1s``.
    """
    directory = Path(tempfile.mkdtemp(prefix="prometheus-"))
    config = yaml.safe_load(config_yaml) or {}
    if rule_files:
        rules_directory = directory / "rules"
        rules_directory.mkdir()
        copies = [rules_directory / f"{index}-{path.name}" for index, path in enumerate(rule_files)]
        for path, copy in zip(rule_files, copies, strict=True):
            shutil.copyfile(path, copy)
        config["rule_files"] = [str(copy) for copy in copies]
    (directory / "prometheus.yml").write_text(yaml.safe_dump(config))

    def command(port: int) -> list[str]:
        return [
            PROMETHEUS_BINARY,
            f"--config.file={directory / 'prometheus.yml'}",
            f"--storage.tsdb.path={directory / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            *extra_args,
        ]

    return _start(Prometheus, "prometheus", command, directory)


def start_alertmanager(config_yaml: str, extra_args: Sequence[str] = ()) -> Alertmanager:
    """Start Alertmanager with ``config_yaml`` and wait until it is ready."""
    directory = Path(tempfile.mkdtemp(prefix="alertmanager-"))
    (directory / "alertmanager.yml").write_text(config_yaml)

    def command(port: int) -> list[str]:
        return [
            ALERTMANAGER_BINARY,
            f"--config.file={directory / 'alertmanager.yml'}",
            f"--storage.path={directory / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            # An empty address turns off clustering, which would otherwise listen on 0.0.0.0.
            "--cluster.listen-address=",
            *extra_args,
        ]

    return _start(Alertmanager, "alertmanager", command, directory)


def _start(kind: type[S], name: str, command: Callable[[int], list[str]], directory: Path) -> S:
    # free_port() can lose a race with another process; a few fresh ports make that harmless.
    for _ in range(3):
        port = free_port()
        with (directory / "server.log").open("ab") as log:
            process = subprocess.Popen(command(port), stdout=log, stderr=subprocess.STDOUT)
        server = kind(name, process, f"http://127.0.0.1:{port}", directory)
        try:
            wait_until(partial(_ready, server), READY_TIMEOUT_SECONDS, f"{name} to be ready")
            return server
        except (TimeoutError, RuntimeError):
            log_text = server.log
            if process.poll() is None:
                process.terminate()
                process.wait(timeout=STOP_TIMEOUT_SECONDS)
            if "address already in use" not in log_text:
                shutil.rmtree(directory, ignore_errors=True)
                raise RuntimeError(f"{name} did not start; its log:\n{log_text[-4000:]}") from None
    shutil.rmtree(directory, ignore_errors=True)
    raise RuntimeError(f"{name} found no free port")


def _ready(server: Server) -> bool:
    if server.process.poll() is not None:
        raise RuntimeError(f"{server.name} exited with status {server.process.returncode}")
    try:
        return httpx.get(server.url + "/-/ready", timeout=2).status_code == 200
    except httpx.TransportError:
        return False

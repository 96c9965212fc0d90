"""The container image: the Dockerfile lints clean, and the image it builds runs the exporter.

The image tests build from the real Dockerfile with buildah (chroot isolation, no Docker engine
needed) on a base image made locally by scripts/make-base-image, then run the exporter from the
image against the simulated CTS on this host's loopback (chroot isolation shares the host's
network). Slow: the first run makes the base image (about two minutes), every run builds the
image (under a minute on a warm machine).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.promstack import free_port, wait_until

ROOT = Path(__file__).resolve().parent.parent
IMAGE = "localhost/cts-import-exporter:test"
COMMAND = str(ROOT / ".venv" / "bin" / "cts-import-exporter")
TOKEN_IN_IMAGE = "/run/secrets/cts_token"
BUILD_TIMEOUT_SECONDS = 480
START_TIMEOUT_SECONDS = 60.0


def run(*args: str, timeout: float = 120) -> str:
    """Run a command to completion and return its output; fail the test with its log if it fails."""
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    assert result.returncode == 0, f"{' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "hadolint"), "--no-color", str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_dockerfile_base_images_are_ones_users_can_pull() -> None:
    bases = re.findall(r"^FROM\s+(\S+)", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert bases and set(bases) <= {"python:3.11-slim-bookworm", "debian:bookworm-slim"}


@pytest.fixture(scope="module")
def image() -> Iterator[dict[str, Any]]:
    """The image built from the Dockerfile, as ``buildah inspect`` describes it."""
    run(str(ROOT / "scripts" / "make-base-image"), timeout=BUILD_TIMEOUT_SECONDS)
    run(
        "buildah", "bud", "--isolation", "chroot", "--format", "docker", "--pull=never",
        "--quiet", "--tag", IMAGE, str(ROOT),
        timeout=BUILD_TIMEOUT_SECONDS,
    )  # fmt: skip
    description: dict[str, Any] = json.loads(run("buildah", "inspect", "--type", "image", IMAGE))
    yield description
    subprocess.run(["buildah", "rmi", IMAGE], capture_output=True, check=False)


@pytest.fixture
def container(image: dict[str, Any]) -> Iterator[str]:
    """A fresh working container of the image; its name."""
    name = f"cts-import-exporter-test-{uuid.uuid4().hex[:8]}"
    run("buildah", "from", "--pull-never", "--name", name, IMAGE)
    yield name
    subprocess.run(["buildah", "rm", name], capture_output=True, check=False)


@dataclass
class Simulator:
    """The simulated CTS on loopback and a copy of its admin token the image's user can read."""

    url: str
    token_file: Path


@pytest.fixture
def simulator(tmp_path: Path) -> Iterator[Simulator]:
    """The simulated CTS, started from this checkout's virtual environment on a free port."""
    port = free_port()
    admin_token = tmp_path / "admin-token"
    process = subprocess.Popen(
        [COMMAND, "simulate", "--listen-address", f"127.0.0.1:{port}",
         "--admin-token-file", str(admin_token), "--seed", "3"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: answers(f"{url}/"), START_TIMEOUT_SECONDS, "the simulated CTS")
        # As a Kubernetes Secret with fsGroup would: readable by the image's user, no one else.
        secret = tmp_path / "cts_token"
        shutil.copy(admin_token, secret)
        os.chown(secret, 10001, 10001)
        secret.chmod(0o400)
        yield Simulator(url, secret)
    finally:
        process.terminate()
        process.wait(timeout=10)


def answers(url: str) -> bool:
    """Whether ``url`` answers 200 now."""
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def environment(image: dict[str, Any]) -> dict[str, str]:
    """The image's environment variables."""
    pairs = (entry.split("=", 1) for entry in image["Docker"]["config"]["Env"])
    return {name: value for name, value in pairs}


@pytest.mark.container
def test_image_runs_cts_import_exporter_as_a_fixed_non_root_user(image: dict[str, Any]) -> None:
    config = image["Docker"]["config"]
    user, _, group = config["User"].partition(":")

    assert config["Entrypoint"] == ["cts-import-exporter"]
    assert user.isdigit() and int(user) != 0 and group.isdigit() and int(group) != 0
    assert "9853/tcp" in config["ExposedPorts"]
    assert environment(image)["CTS_EXPORTER_CTS_TOKEN_FILE"] == TOKEN_IN_IMAGE


@pytest.mark.container
def test_image_carries_oci_labels_and_a_health_check(image: dict[str, Any]) -> None:
    config = image["Docker"]["config"]
    labels = config["Labels"]

    assert labels["org.opencontainers.image.title"] == "cts-import-exporter"
    assert labels["org.opencontainers.image.version"] == "0.1.0"
    assert labels["org.opencontainers.image.licenses"] == "MIT"
    assert config["Healthcheck"]["Test"][:2] == ["CMD", "python"]
    assert "/healthz" in config["Healthcheck"]["Test"][-1]


@pytest.mark.container
def test_exporter_from_the_image_scans_the_simulated_cts_as_non_root_writing_nothing(
    image: dict[str, Any], container: str, simulator: Simulator
) -> None:
    port = free_port()
    listen = f"CTS_EXPORTER_LISTEN_ADDRESS=127.0.0.1:{port}"
    metrics_url = f"http://127.0.0.1:{port}/metrics"
    rootfs = Path(run("buildah", "mount", container).strip())

    # The entrypoint with its arguments; the token comes from the image's default secret path.
    exporter = start_in(
        container,
        [*image["Docker"]["config"]["Entrypoint"], "--cts-url", simulator.url,
         "--scan-interval", "1s"],
        environment=[listen],
        volumes=[f"{simulator.token_file}:{TOKEN_IN_IMAGE}:ro"],
    )  # fmt: skip
    try:
        wait_until(
            lambda: exporter.poll() is not None or scanned(metrics_url),
            START_TIMEOUT_SECONDS,
            "a successful scan by the exporter in the image",
        )
        assert exporter.poll() is None, "the exporter in the image exited"

        metrics = httpx.get(metrics_url, timeout=5).text
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
        assert sample(metrics, "cts_exporter_admin_mode") == 1
        assert sample(metrics, "cts_exporter_scanned_jobs") > 0
        assert exporter_uids(exporter.pid) == {10001}
        assert health_check(image, container, listen) == 0
    finally:
        os.killpg(exporter.pid, signal.SIGTERM)
        log = exporter.communicate(timeout=30)[0].decode(errors="replace")

    assert health_check(image, container, listen) != 0, "the health check passes with no exporter"
    assert files_owned_by(rootfs, 10001) == [], "the exporter wrote to its root filesystem"
    assert simulator.token_file.read_text().strip() not in log


@pytest.mark.container
def test_compose_simulator_and_exporter_commands_work_from_the_image(
    image: dict[str, Any], container: str, tmp_path: Path
) -> None:
    services = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
    cts_port, exporter_port = free_port(), free_port()
    # compose's shared volume: a directory only the image's user may enter.
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o700)
    os.chown(shared, 10001, 10001)
    volume = f"{shared}:/shared"
    # Service names do not resolve on the host, and fixed ports may be taken: those two change.
    cts_command = [
        f"--listen-address=127.0.0.1:{cts_port}" if arg.startswith("--listen-address=") else arg
        for arg in services["cts"]["command"]
    ]
    exporter_command = [
        f"--cts-url=http://127.0.0.1:{cts_port}" if arg.startswith("--cts-url=") else arg
        for arg in services["exporter"]["command"]
    ]
    exporter_environment = [
        f"{name}={value}" for name, value in services["exporter"]["environment"].items()
    ]

    cts = start_in(container, ["cts-import-exporter", *cts_command], volumes=[volume])
    exporter = None
    try:
        wait_until(
            lambda: cts.poll() is not None or answers(f"http://127.0.0.1:{cts_port}/"),
            START_TIMEOUT_SECONDS,
            "the simulated CTS in the image",
        )
        exporter = start_in(
            container,
            ["cts-import-exporter", *exporter_command],
            environment=[
                *exporter_environment,
                f"CTS_EXPORTER_LISTEN_ADDRESS=127.0.0.1:{exporter_port}",
            ],
            volumes=[f"{volume}:ro"],
        )
        wait_until(
            lambda: (
                exporter.poll() is not None or scanned(f"http://127.0.0.1:{exporter_port}/metrics")
            ),
            START_TIMEOUT_SECONDS,
            "a successful scan of the simulated CTS, both in the image",
        )
        assert (cts.poll(), exporter.poll()) == (None, None)
    finally:
        for process in (exporter, cts):
            if process is not None:
                os.killpg(process.pid, signal.SIGTERM)
                process.communicate(timeout=30)

    token_files = [path.name for path in shared.iterdir()]
    assert token_files == ["admin-token"]
    assert (shared / "admin-token").stat().st_uid == 10001


def start_in(
    container: str,
    command: list[str],
    environment: Sequence[str] = (),
    volumes: Sequence[str] = (),
) -> subprocess.Popen[bytes]:
    """Start ``command`` in the container, in a session of its own so it can be stopped whole."""
    options = [f"--env={entry}" for entry in environment]
    options += [f"--volume={entry}" for entry in volumes]
    return subprocess.Popen(
        ["buildah", "run", "--isolation", "chroot", *options, container, "--", *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def scanned(metrics_url: str) -> bool:
    """Whether the exporter serving ``metrics_url`` reports a successful last scan."""
    try:
        return sample(httpx.get(metrics_url, timeout=2).text, "cts_exporter_last_scan_success") == 1
    except (httpx.HTTPError, AssertionError):
        return False


def sample(metrics: str, name: str) -> float:
    """The value of an unlabelled sample in Prometheus text format."""
    match = re.search(rf"^{name} (\S+)$", metrics, re.MULTILINE)
    assert match, f"{name} is not in /metrics"
    return float(match.group(1))


def exporter_uids(session: int) -> set[int]:
    """Real, effective, saved and file-system user ids of the exporter's processes."""
    uids: set[int] = set()
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            in_session = os.getsid(int(status.parent.name)) == session
            text = status.read_text()
            command = (status.parent / "cmdline").read_bytes()
        except OSError:
            continue  # the process ended meanwhile
        uid_line = re.search(r"^Uid:\s+(.*)$", text, re.MULTILINE)
        if in_session and uid_line and b"--cts-url" in command and b"buildah" not in command:
            uids |= {int(uid) for uid in uid_line[1].split()}
    assert uids, "no exporter process found"
    return uids


def health_check(image: dict[str, Any], container: str, listen: str) -> int:
    """Run the image's HEALTHCHECK command in the container; its exit status."""
    test = image["Docker"]["config"]["Healthcheck"]["Test"]
    assert test[0] == "CMD"
    result = subprocess.run(
        ["buildah", "run", "--isolation", "chroot", "--env", listen, container, "--", *test[1:]],
        capture_output=True,
        timeout=60,
        check=False,
    )
    return result.returncode


def files_owned_by(rootfs: Path, uid: int) -> list[str]:
    """Paths in the container's root filesystem owned by ``uid``."""
    return sorted(
        str(path.relative_to(rootfs))
        for path in rootfs.rglob("*")
        if not path.is_symlink() and path.lstat().st_uid == uid
    )

"""The `simulate` command line: flags, token files and a clean stop on a signal."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from exporter.simulator.cli import main
from tests.promstack import free_port

COMMAND = [sys.executable, "-m", "exporter.simulator"]


def wait_until_answering(url: str, process: subprocess.Popen[str]) -> None:
    for _ in range(300):
        assert process.poll() is None, process.communicate()
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.05)
    raise AssertionError(f"{url} never answered")


@pytest.mark.parametrize(
    "flags",
    [
        ["--speed", "0"],
        ["--jobs", "-1"],
        ["--lookback", "7x"],
        ["--listen-address", "nowhere"],
        ["--import-error-share", "2"],
        ["--no-such-flag"],
    ],
    ids=lambda flags: flags[0],
)
def test_bad_flags_exit_2_with_a_message(
    flags: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(flags)

    assert stopped.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_help_names_the_subcommand_and_its_settings(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["--help"])

    text = capsys.readouterr().out
    assert stopped.value.code == 0
    assert "cts-import-exporter simulate" in text
    for flag in ("--listen-address", "--admin-token-file", "--import-stuck-share", "--speed"):
        assert flag in text


def test_serves_with_token_files_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    admin_file = tmp_path / "admin.token"
    users_file = tmp_path / "users.json"
    process = subprocess.Popen(
        [
            *COMMAND,
            "--listen-address",
            f"127.0.0.1:{port}",
            "--jobs",
            "50",
            "--seed",
            "2",
            "--admin-token-file",
            str(admin_file),
            "--user-tokens-file",
            str(users_file),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until_answering(f"http://127.0.0.1:{port}/", process)
        admin_token = admin_file.read_text().strip()
        user_tokens = json.loads(users_file.read_text())
        headers = {"Authorization": f"Bearer {admin_token}"}
        jobs = httpx.get(f"http://127.0.0.1:{port}/admin/jobs", headers=headers).json()["jobs"]
        whoami = httpx.get(
            f"http://127.0.0.1:{port}/whoami",
            headers={"Authorization": f"Bearer {user_tokens['alice']}"},
        ).json()
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)

    assert process.returncode == 0, err
    assert len(jobs) == 50
    assert whoami["user"] == "alice"
    assert admin_file.stat().st_mode & 0o777 == 0o600
    assert users_file.stat().st_mode & 0o777 == 0o600
    assert admin_token not in out + err
    assert str(admin_file) in err


def test_an_existing_admin_token_file_is_used_as_given(tmp_path: Path) -> None:
    port = free_port()
    admin_file = tmp_path / "admin.token"
    admin_file.write_text("given-admin-token\n")
    process = subprocess.Popen(
        [
            *COMMAND,
            "--listen-address",
            f"127.0.0.1:{port}",
            "--jobs",
            "0",
            "--admin-token-file",
            str(admin_file),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until_answering(f"http://127.0.0.1:{port}/", process)
        whoami = httpx.get(
            f"http://127.0.0.1:{port}/whoami", headers={"Authorization": "Bearer given-admin-token"}
        )
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=30)

    assert process.returncode == 0
    assert whoami.json()["roles"] == ["full_admin"]
    assert admin_file.read_text() == "given-admin-token\n"


def test_without_a_token_file_the_admin_token_is_printed_once() -> None:
    port = free_port()
    process = subprocess.Popen(
        [*COMMAND, "--listen-address", f"127.0.0.1:{port}", "--jobs", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until_answering(f"http://127.0.0.1:{port}/", process)
    finally:
        process.send_signal(signal.SIGINT)
        out, _ = process.communicate(timeout=30)

    lines = [line for line in out.splitlines() if line.startswith("admin token: ")]
    assert len(lines) == 1
    token = lines[0].removeprefix("admin token: ")
    assert process.returncode == 0
    assert len(token) >= 20

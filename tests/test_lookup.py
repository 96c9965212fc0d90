"""``status`` and ``wait`` as processes against the simulated CTS, one test per answer."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from exporter.lookup import Exit
from tests.promstack import free_port, wait_until

COMMAND = str(Path(sys.executable).with_name("cts-import-exporter"))
OWNER, OTHER_USER = "alice", "bob"
ALL_EXITS = sorted(int(code) for code in Exit)


@dataclass
class SimulatedCts:
    """The simulated CTS running as a process, its tokens on disk, and its control API."""

    url: str
    admin_token_file: Path
    user_token_files: dict[str, Path]
    directory: Path

    @property
    def admin_token(self) -> str:
        return self.admin_token_file.read_text().strip()

    def control(self, method: str, path: str, body: Any = None) -> Any:
        answer = httpx.request(
            method,
            self.url + path,
            json=body,
            headers={"Authorization": f"Bearer {self.admin_token}"},
            timeout=10,
        )
        answer.raise_for_status()
        return answer.json() if answer.content else None

    def new_job(self, user: str = OWNER, state: str = "complete") -> str:
        """A job the simulated CSE leaves alone; complete, by default, as of now."""
        job = self.control("POST", "/_sim/jobs", {"user": user, "state": state})
        return str(job["id"])

    def write_import(self, job_id: str, outcome: str) -> None:
        """Write one CSE key now, as the CSE would."""
        self.control("POST", f"/_sim/jobs/{job_id}/import", {"outcome": outcome})

    def set_admin_meta(self, job_id: str, fields: dict[str, Any]) -> None:
        self.control("PUT", f"/admin/jobs/{job_id}/meta", {"set_fields": fields})

    def token_file(self, user: str) -> Path:
        return self.user_token_files[user]

    def token_file_holding(self, name: str, text: str) -> Path:
        path = self.directory / name
        path.write_text(text)
        return path


@pytest.fixture(scope="module")
def cts() -> Iterator[SimulatedCts]:
    with tempfile.TemporaryDirectory(prefix="lookup-") as name:
        directory = Path(name)
        admin_file, users_file = directory / "admin-token", directory / "user-tokens.json"
        port = free_port()
        process = subprocess.Popen(
            [
                COMMAND,
                "simulate",
                "--listen-address",
                f"127.0.0.1:{port}",
                "--jobs",
                "0",
                "--arrival-interval",
                "0",
                "--admin-token-file",
                str(admin_file),
                "--user-tokens-file",
                str(users_file),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=_clean_environment(),
        )
        try:
            url = f"http://127.0.0.1:{port}"
            wait_until(lambda: _answers(url), 60, "the simulated CTS")
            user_files = {}
            for user, token in json.loads(users_file.read_text()).items():
                user_files[user] = directory / f"{user}-token"
                user_files[user].write_text(token + "\n")
            yield SimulatedCts(url, admin_file, user_files, directory)
        finally:
            process.terminate()
            process.wait(timeout=30)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url + "/", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def _clean_environment(**variables: str) -> dict[str, str]:
    """This process's environment without any CTS_EXPORTER_ setting, plus ``variables``."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CTS_EXPORTER_")}
    return environment | variables


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``cts-import-exporter ARGS`` to the end, its output captured."""
    return subprocess.run(
        [COMMAND, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env or _clean_environment(),
        check=False,
    )


def status(
    cts: SimulatedCts, job_id: str, token_file: Path, *flags: str
) -> subprocess.CompletedProcess[str]:
    return run("status", job_id, "--cts-url", cts.url, "--cts-token-file", str(token_file), *flags)


def wait_command(cts: SimulatedCts, job_id: str, token_file: Path, *flags: str) -> list[str]:
    return [
        COMMAND,
        "wait",
        job_id,
        "--cts-url",
        cts.url,
        "--cts-token-file",
        str(token_file),
        *flags,
    ]


def as_json(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    report: dict[str, Any] = json.loads(lines[0])
    return report


def seconds_between(start: str, end: str) -> float:
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


# ---- status: every import status -----------------------------------------------------------------


def test_job_waiting_for_the_cse_is_not_finished_and_lags_since_completion(
    cts: SimulatedCts,
) -> None:
    job = cts.new_job()
    result = status(cts, job, cts.token_file(OWNER))
    assert result.returncode == Exit.NOT_FINISHED == 10
    assert f"job {job}: waiting for the CSE to start the import" in result.stdout
    assert "so far (completion to now)" in result.stdout
    assert "started" not in result.stdout
    assert result.stderr == ""


def test_running_import_is_not_finished_and_shows_its_start(cts: SimulatedCts) -> None:
    job = cts.new_job()
    cts.write_import(job, "start")
    result = status(cts, job, cts.token_file(OWNER), "--json")
    assert result.returncode == Exit.NOT_FINISHED
    report = as_json(result)
    assert report["result"] == "not_finished"
    assert report["import"]["status"] == "running"
    assert report["import"]["finished"] is False
    assert report["import"]["finished_at"] is None
    assert report["import"]["since"] == report["import"]["started_at"]
    assert report["import"]["duration_seconds"] == pytest.approx(
        seconds_between(report["import"]["started_at"], report["checked_at"]), abs=0.01
    )


@pytest.mark.parametrize(
    ("outcome", "code", "headline"),
    [
        ("complete", Exit.IMPORTED, "imported"),
        ("no_operation", Exit.NOTHING_TO_IMPORT, "nothing to import"),
        ("error", Exit.IMPORT_FAILED, "import failed"),
    ],
)
def test_finished_import_exits_with_its_outcome_and_reports_lag_and_duration(
    cts: SimulatedCts, outcome: str, code: Exit, headline: str
) -> None:
    job = cts.new_job()
    cts.write_import(job, "start")
    cts.write_import(job, outcome)
    text = status(cts, job, cts.token_file(OWNER))
    assert text.returncode == code
    assert text.stdout.startswith(f"job {job}: {headline}")
    for line in (
        f"import    {outcome} at ",
        "started   ",
        "lag ",
        "(completion to outcome)",
        "duration ",
        "(start to outcome)",
    ):
        assert line in text.stdout

    report = as_json(status(cts, job, cts.token_file(OWNER), "--json"))
    assert report["exit_code"] == code
    assert report["result"] == code.name.lower()
    assert report["state"] == "complete"
    assert report["read_as"] == "owner"
    imported = report["import"]
    assert imported["status"] == outcome
    assert imported["finished"] is True
    assert imported["lag_seconds"] == pytest.approx(
        seconds_between(report["completed_at"], imported["finished_at"]), abs=0.002
    )
    assert imported["duration_seconds"] == pytest.approx(
        seconds_between(imported["started_at"], imported["finished_at"]), abs=0.002
    )


def test_a_new_start_after_an_error_means_the_import_runs_again(cts: SimulatedCts) -> None:
    job = cts.new_job()
    cts.write_import(job, "start")
    cts.write_import(job, "error")
    cts.write_import(job, "start")
    result = status(cts, job, cts.token_file(OWNER), "--json")
    assert result.returncode == Exit.NOT_FINISHED
    assert as_json(result)["import"]["status"] == "running"


@pytest.mark.parametrize(("state", "headline"), [("error", "failed"), ("canceled", "canceled")])
def test_job_that_failed_or_was_canceled_has_nothing_to_import(
    cts: SimulatedCts, state: str, headline: str
) -> None:
    job = cts.new_job(state=state)
    result = status(cts, job, cts.token_file(OWNER))
    assert result.returncode == Exit.JOB_FAILED == 5
    assert headline in result.stdout.splitlines()[0]
    assert "none: only completed jobs are imported" in result.stdout


def test_job_still_running_on_a_cluster_is_not_finished(cts: SimulatedCts) -> None:
    job = cts.new_job(state="job_submitted")
    result = status(cts, job, cts.token_file(OWNER), "--json")
    assert result.returncode == Exit.NOT_FINISHED
    report = as_json(result)
    assert report["state"] == "job_submitted"
    assert report["completed_at"] is None
    assert report["import"] is None


def test_import_metadata_that_is_not_a_time_is_unreadable(cts: SimulatedCts) -> None:
    job = cts.new_job()
    cts.set_admin_meta(job, {"cse_event_processing_start": "yesterday"})
    result = status(cts, job, cts.token_file(OWNER))
    assert result.returncode == Exit.UNREADABLE == 12
    assert "invalid import metadata" in result.stderr
    assert "cse_event_processing_start" in result.stderr


# ---- status: whose job, which token --------------------------------------------------------------


def test_user_token_on_another_users_job_is_not_your_job(cts: SimulatedCts) -> None:
    job = cts.new_job(user=OWNER)
    result = status(cts, job, cts.token_file(OTHER_USER))
    assert result.returncode == Exit.NOT_YOUR_JOB == 8
    assert result.stdout == ""
    assert "not your job" in result.stderr
    assert f"'{OTHER_USER}' is not a CTS admin" in result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_user_token_reads_its_own_job_without_admin_rights(cts: SimulatedCts) -> None:
    job = cts.new_job(user=OTHER_USER)
    cts.write_import(job, "complete")
    result = status(cts, job, cts.token_file(OTHER_USER), "--json")
    assert result.returncode == Exit.IMPORTED
    report = as_json(result)
    assert report["user"] == OTHER_USER
    assert report["read_as"] == "owner"


def test_admin_token_on_another_users_job_falls_back_to_the_admin_endpoint(
    cts: SimulatedCts,
) -> None:
    job = cts.new_job(user=OWNER)
    cts.write_import(job, "start")
    cts.write_import(job, "complete")
    result = status(cts, job, cts.admin_token_file)
    assert result.returncode == Exit.IMPORTED
    assert f"owner     {OWNER} (read with an admin token)" in result.stdout
    report = as_json(status(cts, job, cts.admin_token_file, "--json"))
    assert report["read_as"] == "admin"
    assert report["user"] == OWNER


def test_unknown_job_id_is_not_found(cts: SimulatedCts) -> None:
    for token_file in (cts.token_file(OWNER), cts.admin_token_file):
        result = status(cts, "f0c24820-d792-4efa-a38b-2458ed8ec88f", token_file)
        assert result.returncode == Exit.NOT_FOUND == 7
        assert "not found" in result.stderr
        assert result.stdout == ""


@pytest.mark.parametrize("job_id", ["../admin/jobs", "a" * 51, "job id", "a?b=c"])
def test_malformed_job_id_is_not_found_without_asking_the_cts(
    cts: SimulatedCts, job_id: str
) -> None:
    result = status(cts, job_id, cts.token_file(OWNER), "--json")
    assert result.returncode == Exit.NOT_FOUND
    assert "not a CTS job id" in result.stderr
    assert as_json(result) == {
        "job_id": job_id,
        "result": "not_found",
        "exit_code": 7,
        "error": "not a CTS job id: 1 to 50 letters, digits, _ or -",
    }


def test_bad_token_is_rejected_and_never_printed(cts: SimulatedCts) -> None:
    job = cts.new_job()
    bad = cts.token_file_holding("bad-token", "not-a-real-token-zq8\n")
    result = status(cts, job, bad)
    assert result.returncode == Exit.BAD_TOKEN == 9
    assert "rejected the token" in result.stderr
    assert "not-a-real-token-zq8" not in result.stdout + result.stderr


def test_unreachable_cts_is_unavailable(cts: SimulatedCts) -> None:
    closed = free_port()
    result = run(
        "status",
        "some-job",
        "--cts-url",
        f"http://127.0.0.1:{closed}",
        "--cts-token-file",
        str(cts.token_file(OWNER)),
        "--json",
    )
    assert result.returncode == Exit.CTS_UNAVAILABLE == 11
    assert "CTS unavailable" in result.stderr
    assert as_json(result)["result"] == "cts_unavailable"


def test_cts_answering_errors_is_unavailable(cts: SimulatedCts) -> None:
    job = cts.new_job()
    cts.control(
        "POST",
        "/_sim/faults",
        {"rules": [{"action": "status", "status": 502, "path": f"/jobs/{job}"}]},
    )
    try:
        result = status(cts, job, cts.token_file(OWNER))
    finally:
        cts.control("DELETE", "/_sim/faults")
    assert result.returncode == Exit.CTS_UNAVAILABLE
    assert "HTTP 502" in result.stderr


# ---- settings and flags ----------------------------------------------------------------------


def test_url_and_token_come_from_the_environment(cts: SimulatedCts) -> None:
    job = cts.new_job()
    cts.write_import(job, "complete")
    from_token = run(
        "status",
        job,
        env=_clean_environment(
            CTS_EXPORTER_CTS_URL=cts.url,
            CTS_EXPORTER_CTS_TOKEN=cts.token_file(OWNER).read_text().strip(),
        ),
    )
    from_file = run(
        "status",
        job,
        env=_clean_environment(
            CTS_EXPORTER_CTS_URL=cts.url,
            CTS_EXPORTER_CTS_TOKEN_FILE=str(cts.token_file(OWNER)),
        ),
    )
    assert from_token.returncode == from_file.returncode == Exit.IMPORTED


@pytest.mark.parametrize(
    ("flags", "complaint"),
    [
        (["--json=yes"], "--json"),
        (["--interval", "5s"], "unknown flag --interval"),
        (["--timeout", "2h"], "unknown flag --timeout"),
        (["--colour"], "unknown flag --colour"),
        (["--cts-url", "ftp://cts"], "is not an http:// or https:// URL"),
    ],
)
def test_bad_flag_is_one_line_and_usage_exit(
    cts: SimulatedCts, flags: list[str], complaint: str
) -> None:
    result = status(cts, "some-job", cts.token_file(OWNER), *flags)
    assert result.returncode == Exit.USAGE == 2
    assert complaint in result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert result.stdout == ""


@pytest.mark.parametrize("value", ["soon", "0s", "-5m"])
def test_bad_wait_duration_is_one_line_and_usage_exit(cts: SimulatedCts, value: str) -> None:
    for flag in ("--timeout", "--interval"):
        result = run(*wait_command(cts, "some-job", cts.token_file(OWNER), f"{flag}={value}")[1:])
        assert result.returncode == Exit.USAGE
        assert f"argument {flag}" in result.stderr
        assert len(result.stderr.splitlines()) == 1


def test_token_as_a_flag_is_refused_without_echoing_it(cts: SimulatedCts) -> None:
    for flags in (["--cts-token", "s3cret-zq8"], ["--cts-token=s3cret-zq8"]):
        result = run("status", "some-job", "--cts-url", cts.url, *flags)
        assert result.returncode == Exit.USAGE
        assert "a token is never a flag" in result.stderr
        assert "s3cret-zq8" not in result.stdout + result.stderr


def test_stray_argument_is_refused_without_echoing_it(cts: SimulatedCts) -> None:
    result = status(cts, "some-job", cts.token_file(OWNER), "s3cret-zq8")
    assert result.returncode == Exit.USAGE
    assert "s3cret-zq8" not in result.stderr


@pytest.mark.parametrize(
    ("contents", "complaint"),
    [(None, "cannot read token file"), ("\n", "is empty"), (b"\xff\xfe", "not UTF-8")],
)
def test_unusable_token_file_is_one_line_and_usage_exit(
    cts: SimulatedCts, contents: str | bytes | None, complaint: str
) -> None:
    path = cts.directory / f"token-{complaint.split()[-1]}"
    if isinstance(contents, bytes):
        path.write_bytes(contents)
    elif contents is not None:
        path.write_text(contents)
    result = status(cts, "some-job", path)
    assert result.returncode == Exit.USAGE
    assert complaint in result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_missing_url_or_token_is_one_line_and_usage_exit(cts: SimulatedCts) -> None:
    no_token = run("status", "some-job", "--cts-url", cts.url)
    no_url = run("status", "some-job", "--cts-token-file", str(cts.token_file(OWNER)))
    assert no_token.returncode == no_url.returncode == Exit.USAGE
    assert "the CTS token is missing" in no_token.stderr
    assert "the CTS URL is missing" in no_url.stderr


@pytest.mark.parametrize("command", ["status", "wait"])
def test_help_lists_every_exit_code(command: str) -> None:
    result = run(command, "--help")
    assert result.returncode == 0
    listed = result.stdout.split("exit codes:", 1)[1]
    for code in Exit:
        assert f"{int(code):>2}  {code.name.lower()}" in listed


def test_exit_codes_are_distinct_and_stable() -> None:
    assert ALL_EXITS == [0, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]


# ---- wait ------------------------------------------------------------------------------------


def test_wait_returns_when_the_import_completes_mid_wait(cts: SimulatedCts) -> None:
    job = cts.new_job()
    waiting = subprocess.Popen(
        wait_command(cts, job, cts.token_file(OWNER), "--interval", "0.2s", "--json"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_clean_environment(),
    )
    try:
        time.sleep(1.5)
        cts.write_import(job, "start")
        time.sleep(1.0)
        assert waiting.poll() is None, "wait ended before the import finished"
        cts.write_import(job, "complete")
        stdout, stderr = waiting.communicate(timeout=60)
    finally:
        waiting.kill()
    assert waiting.returncode == Exit.IMPORTED
    assert stderr == "", "a piped wait shows no progress"
    report = json.loads(stdout)
    assert report["import"]["status"] == "complete"
    assert report["import"]["duration_seconds"] >= 0.9


def test_wait_ends_at_once_when_the_job_has_an_outcome(cts: SimulatedCts) -> None:
    job = cts.new_job()
    cts.write_import(job, "no_operation")
    result = run(*wait_command(cts, job, cts.token_file(OWNER), "--timeout", "10m")[1:])
    assert result.returncode == Exit.NOTHING_TO_IMPORT
    assert result.stdout.startswith(f"job {job}: nothing to import")


def test_wait_ends_at_once_when_the_job_is_canceled(cts: SimulatedCts) -> None:
    job = cts.new_job(state="canceled")
    result = run(*wait_command(cts, job, cts.token_file(OWNER), "--timeout", "10m")[1:])
    assert result.returncode == Exit.JOB_FAILED


def test_wait_times_out_with_the_last_report(cts: SimulatedCts) -> None:
    job = cts.new_job()
    cts.write_import(job, "start")
    result = run(
        *wait_command(cts, job, cts.token_file(OWNER), "--timeout", "1s", "--interval", "0.2s")[1:]
    )
    assert result.returncode == Exit.TIMED_OUT == 6
    assert "timed out after 1.0s: import running" in result.stderr
    assert result.stdout.startswith(f"job {job}: import running")


def test_wait_retries_a_cts_that_fails_for_a_while(cts: SimulatedCts) -> None:
    job = cts.new_job()
    cts.write_import(job, "complete")
    cts.control(
        "POST",
        "/_sim/faults",
        {"rules": [{"action": "status", "status": 503, "path": f"/jobs/{job}", "count": 3}]},
    )
    try:
        result = run(
            *wait_command(
                cts, job, cts.token_file(OWNER), "--interval", "0.2s", "--timeout", "10m"
            )[1:]
        )
        rules = cts.control("GET", "/_sim/faults")["rules"]
    finally:
        cts.control("DELETE", "/_sim/faults")
    assert result.returncode == Exit.IMPORTED
    assert rules == [], "every failing answer was spent on a retried check"


def test_wait_on_an_unreachable_cts_gives_up_as_unavailable(cts: SimulatedCts) -> None:
    closed = free_port()
    result = run(
        "wait",
        "some-job",
        "--cts-url",
        f"http://127.0.0.1:{closed}",
        "--cts-token-file",
        str(cts.token_file(OWNER)),
        "--timeout",
        "1s",
        "--interval",
        "0.2s",
    )
    assert result.returncode == Exit.CTS_UNAVAILABLE
    assert "gave up after 1.0s" in result.stderr


@pytest.mark.parametrize(
    ("token", "code"),
    [("bad", Exit.BAD_TOKEN), ("other user", Exit.NOT_YOUR_JOB)],
)
def test_wait_ends_at_once_on_a_token_that_cannot_read_the_job(
    cts: SimulatedCts, token: str, code: Exit
) -> None:
    job = cts.new_job(user=OWNER)
    token_file = (
        cts.token_file_holding("wrong-token", "wrong\n")
        if token == "bad"
        else cts.token_file(OTHER_USER)
    )
    started = time.monotonic()
    result = run(*wait_command(cts, job, token_file, "--timeout", "1h")[1:])
    assert result.returncode == code
    assert time.monotonic() - started < 600, "an auth failure is not retried until the timeout"


def test_wait_shows_one_updating_line_on_a_terminal(cts: SimulatedCts) -> None:
    job = cts.new_job()
    terminal, child_side = pty.openpty()
    waiting = subprocess.Popen(
        wait_command(cts, job, cts.token_file(OWNER), "--interval", "0.2s"),
        stdout=subprocess.PIPE,
        stderr=child_side,
        text=True,
        env=_clean_environment(),
    )
    os.close(child_side)
    shown = b""
    try:
        deadline = time.monotonic() + 60
        while shown.count(b"waited") < 3 and time.monotonic() < deadline:
            if select.select([terminal], [], [], 0.5)[0]:
                shown += os.read(terminal, 4096)
        cts.write_import(job, "complete")
        stdout, _ = waiting.communicate(timeout=60)
        while select.select([terminal], [], [], 0.2)[0]:
            try:
                shown += os.read(terminal, 4096)
            except OSError:
                break
    finally:
        waiting.kill()
        os.close(terminal)
    assert waiting.returncode == Exit.IMPORTED
    lines = shown.split(b"\r\x1b[K")
    progress = [line for line in lines if line]
    assert len(progress) >= 3, "the line is updated at every check"
    assert all(
        b" waited: waiting for the CSE to start the import (job " in line for line in progress
    ), progress
    assert all(len(line) < 80 for line in lines), "the line never wraps on an 80-column terminal"
    assert b"\n" not in shown, "progress stays on one line"
    assert shown.endswith(b"\r\x1b[K"), "the line is cleared before the report"
    assert stdout.startswith(f"job {job}: imported")


def test_wait_ends_when_the_token_file_goes_away(cts: SimulatedCts) -> None:
    job = cts.new_job()
    token_file = cts.token_file_holding("vanishing-token", cts.token_file(OWNER).read_text())
    waiting = subprocess.Popen(
        wait_command(cts, job, token_file, "--interval", "0.2s", "--timeout", "10m"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_clean_environment(),
    )
    try:
        time.sleep(1.5)
        token_file.unlink()
        _, stderr = waiting.communicate(timeout=60)
    finally:
        waiting.kill()
    assert waiting.returncode == Exit.USAGE
    assert "cannot read token file" in stderr


def test_cse_clock_behind_the_cts_counts_as_no_lag_and_says_so(cts: SimulatedCts) -> None:
    job = cts.new_job()
    completed = as_json(status(cts, job, cts.token_file(OWNER), "--json"))["completed_at"]
    early = (datetime.fromisoformat(completed) - timedelta(seconds=5)).isoformat()
    cts.set_admin_meta(job, {"cse_event_processing_complete": early})
    result = status(cts, job, cts.token_file(OWNER), "--json")
    assert result.returncode == Exit.IMPORTED
    report = as_json(result)
    assert report["import"]["clock_skew"] is True
    assert report["import"]["lag_seconds"] == 0
    assert "note      the CSE's clock is behind" in status(cts, job, cts.token_file(OWNER)).stdout

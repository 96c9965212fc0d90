"""``cts-import-exporter status`` and ``wait``: one job's import, for whoever submitted the job.

The CSE records its progress on the CTS job, so the job itself answers "did my output get
imported?". ``status`` reads the job once; ``wait`` reads it every ``--interval`` until the
import has an outcome, the job ends without output, or ``--timeout`` passes. Both print the
same report and end with an exit code that scripts can branch on (``Exit``).

A job is read with the owner's endpoint first. When that is refused and the token is an
administrator's, the admin endpoint is used instead: the CTS lets owners, not admins, read a
job's status.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import sys
import textwrap
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import IntEnum
from typing import Any, NoReturn, TextIO

from exporter.cli import PROG, settings_from, token_source
from exporter.cts import (
    CtsClient,
    CtsError,
    Identity,
    RetryPolicy,
    TokenError,
    client_for,
)
from exporter.imports import ImportStatus, ImportView
from exporter.scan import read_job
from exporter.settings import ENV_PREFIX, parse_duration

# The CTS's own rule for job ids; anything else cannot name a job and must not reach a URL path.
JOB_ID = re.compile(r"[\w-]{1,50}", re.ASCII)

DEFAULT_TIMEOUT = "2h"
DEFAULT_INTERVAL = "30s"


class Exit(IntEnum):
    """The exit codes of ``status`` and ``wait``: one meaning each, never renumbered."""

    IMPORTED = 0
    USAGE = 2
    NOTHING_TO_IMPORT = 3
    IMPORT_FAILED = 4
    JOB_FAILED = 5
    TIMED_OUT = 6
    NOT_FOUND = 7
    NOT_YOUR_JOB = 8
    BAD_TOKEN = 9
    NOT_FINISHED = 10
    CTS_UNAVAILABLE = 11
    UNREADABLE = 12

    @property
    def result(self) -> str:
        """The code's name as the ``result`` field of ``--json`` output."""
        return self.name.lower()


EXIT_MEANINGS: dict[Exit, str] = {
    Exit.IMPORTED: "the job's output was imported (import complete)",
    Exit.USAGE: "bad flags; no CTS URL or token; unusable token file",
    Exit.NOTHING_TO_IMPORT: "no importer for the job's image (no_operation)",
    Exit.IMPORT_FAILED: "the import failed (error); an operator must redo it",
    Exit.JOB_FAILED: "the job ended in error or was canceled: no output",
    Exit.TIMED_OUT: "wait: --timeout passed before the import finished",
    Exit.NOT_FOUND: "no job has this id, or the id is malformed",
    Exit.NOT_YOUR_JOB: "another user's job, and the token is not an admin's",
    Exit.BAD_TOKEN: "the CTS rejected the token (401, or 403 for an admin)",
    Exit.NOT_FINISHED: "status: the job or its import is still under way",
    Exit.CTS_UNAVAILABLE: "the CTS is unreachable or answered with an error",
    Exit.UNREADABLE: "the job's state, times or CSE metadata are unreadable",
}

_OUTCOME_EXITS = {
    ImportStatus.COMPLETE: Exit.IMPORTED,
    ImportStatus.NO_OPERATION: Exit.NOTHING_TO_IMPORT,
    ImportStatus.ERROR: Exit.IMPORT_FAILED,
}

_ENDED_WITHOUT_OUTPUT = frozenset({"error", "canceled"})


class LookupFailed(Exception):
    """A job could not be read; ``code`` is the exit code, ``transient`` whether to try again."""

    def __init__(self, code: Exit, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.transient = transient


@dataclass(frozen=True)
class JobReport:
    """One reading of a job and its import, with the time it was read."""

    job_id: str
    user: str
    state: str
    state_since: float
    completed_at: float | None
    view: ImportView | None
    checked_at: float
    read_as_admin: bool

    @property
    def exit(self) -> Exit:
        """The exit code this reading calls for; NOT_FINISHED while anything is under way."""
        if self.view is not None and self.view.status in _OUTCOME_EXITS:
            return _OUTCOME_EXITS[self.view.status]
        if self.state in _ENDED_WITHOUT_OUTPUT:
            return Exit.JOB_FAILED
        return Exit.NOT_FINISHED

    @property
    def lag(self) -> float | None:
        """Completion to outcome, or to the reading while the import is unfinished."""
        if self.view is None or self.completed_at is None:
            return None
        if self.view.latency is not None:
            return self.view.latency
        return max(self.checked_at - self.completed_at, 0.0)

    @property
    def duration(self) -> float | None:
        """Start to outcome, or to the reading while the import runs; None before a start."""
        if self.view is None or self.view.started_at is None:
            return None
        if self.view.status is ImportStatus.RUNNING:
            return max(self.checked_at - self.view.started_at, 0.0)
        duration = self.view.duration
        return None if duration is None else max(duration, 0.0)


class JobLookup:
    """Reads one job, remembering after the first refusal that it needs the admin endpoint."""

    def __init__(self, client: CtsClient, job_id: str) -> None:
        self.job_id = job_id
        self._client = client
        self._as_admin = False

    async def read(self) -> JobReport:
        """The job now; raises LookupFailed when it cannot be read."""
        try:
            row = await self._fetch()
        except CtsError as error:
            raise _failure(error, self.job_id) from None
        return report_from(row, checked_at=time.time(), read_as_admin=self._as_admin)

    async def _fetch(self) -> dict[str, Any]:
        if self._as_admin:
            return await self._client.admin_job(self.job_id)
        try:
            return await self._client.job_status(self.job_id)
        except CtsError as error:
            if error.status != 403:
                raise
        identity = await self._client.whoami()
        if not identity.is_admin:
            raise LookupFailed(Exit.NOT_YOUR_JOB, _not_yours(self.job_id, identity))
        self._as_admin = True
        return await self._client.admin_job(self.job_id)


def report_from(row: dict[str, Any], *, checked_at: float, read_as_admin: bool) -> JobReport:
    """A report of a job as the CTS returned it; raises LookupFailed(UNREADABLE) when it cannot
    be read."""
    record = read_job(row)
    if record is None:
        raise LookupFailed(
            Exit.UNREADABLE,
            f"job {row.get('id')} has an unknown state or unreadable transition times",
        )
    if record.metadata_error is not None:
        raise LookupFailed(
            Exit.UNREADABLE, f"job {record.id} has invalid import metadata: {record.metadata_error}"
        )
    return JobReport(
        job_id=record.id,
        user=record.user,
        state=record.state,
        state_since=record.last_transition,
        completed_at=record.completed_at,
        view=record.view,
        checked_at=checked_at,
        read_as_admin=read_as_admin,
    )


def _failure(error: CtsError, job_id: str) -> LookupFailed:
    """The exit code and message for a failed CTS call while reading a job."""
    if error.reason == "auth" and error.status is None:
        return LookupFailed(Exit.USAGE, str(error))  # the token file went away mid-wait
    if error.status in (401, 403):
        return LookupFailed(Exit.BAD_TOKEN, f"the CTS rejected the token ({error})")
    if error.status in (400, 404):
        # The only parameter of these calls is the job id, so a 400 means the CTS refused it.
        return LookupFailed(Exit.NOT_FOUND, f"job {job_id} not found ({error})")
    transient = error.reason in ("connect", "timeout") or (
        error.status is not None and (error.status == 429 or error.status >= 500)
    )
    return LookupFailed(Exit.CTS_UNAVAILABLE, f"CTS unavailable ({error})", transient=transient)


def _not_yours(job_id: str, identity: Identity) -> str:
    return (
        f"not your job: job {job_id} belongs to another user, and the token's user "
        f"{identity.user!r} is not a CTS admin"
    )


# ---- waiting ------------------------------------------------------------------------------------


class Progress:
    """A single line on a terminal that shows what ``wait`` is waiting for; silent elsewhere."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._enabled = stream.isatty()
        self._shown = False

    def show(self, text: str) -> None:
        """Replace the line with ``text``, cut to the terminal's width: put what changes first."""
        if not self._enabled:
            return
        self._stream.write("\r\x1b[K" + text[: self._width()])
        self._stream.flush()
        self._shown = True

    def _width(self) -> int:
        """Columns the line may fill: one less than the terminal's, so it never wraps."""
        try:
            columns = os.get_terminal_size(self._stream.fileno()).columns
        except OSError:
            columns = 0
        return columns - 1 if columns > 1 else 79

    def clear(self) -> None:
        """Remove the line, so that the final report starts on a clean line."""
        if self._shown:
            self._stream.write("\r\x1b[K")
            self._stream.flush()
            self._shown = False


async def wait_for_import(
    lookup: JobLookup, *, give_up_after: float, interval: float, progress: Progress
) -> tuple[JobReport | None, Exit, str | None]:
    """Read the job every ``interval`` until it reaches a final exit code or ``give_up_after``
    seconds pass.

    Returns the last reading (None if there was none), the exit code and a message for failures.
    Transient failures are retried until the deadline; any other failure ends the wait at once.
    """
    started = time.monotonic()
    last: JobReport | None = None
    failure: LookupFailed | None = None
    try:
        async with asyncio.timeout(give_up_after):
            while True:
                waited = _span(time.monotonic() - started)
                try:
                    last = await lookup.read()
                except LookupFailed as error:
                    if not error.transient:
                        return last, error.code, str(error)
                    failure = error
                    progress.show(f"{waited} waited: {error}; retrying (job {lookup.job_id})")
                else:
                    failure = None
                    if last.exit is not Exit.NOT_FINISHED:
                        return last, last.exit, None
                    progress.show(f"{waited} waited: {headline(last)} (job {last.job_id})")
                await asyncio.sleep(interval)
    except TimeoutError:
        pass
    waited = _span(give_up_after)
    if last is None:
        # Never one answer: the CTS being unreachable is the truth, not a slow import.
        reason = str(failure) if failure else "no answer from the CTS"
        return None, Exit.CTS_UNAVAILABLE, f"{reason}; gave up after {waited}"
    message = f"timed out after {waited}: {headline(last)}"
    if failure is not None:
        message += f"; the last check failed: {failure}"
    return last, Exit.TIMED_OUT, message


# ---- output ------------------------------------------------------------------------------------


def headline(report: JobReport) -> str:
    """Where the job and its import stand, in a few words."""
    view = report.view
    if view is None:
        if report.state == "error":
            return "the job failed: nothing to import"
        if report.state == "canceled":
            return "the job was canceled: nothing to import"
        return f"the job has not completed yet ({report.state})"
    return {
        ImportStatus.COMPLETE: "imported",
        ImportStatus.NO_OPERATION: "nothing to import (no importer for this image)",
        ImportStatus.ERROR: "import failed",
        ImportStatus.RUNNING: "import running",
        ImportStatus.WAITING: "waiting for the CSE to start the import",
    }[view.status]


def render_text(report: JobReport) -> str:
    """The report for a person: a headline and one aligned line per fact."""
    rows = [
        ("owner", report.user + (" (read with an admin token)" if report.read_as_admin else ""))
    ]
    rows.append(("state", f"{report.state} since {_clock(report.state_since)}"))
    view = report.view
    if view is None:
        if report.state in _ENDED_WITHOUT_OUTPUT:
            rows.append(("import", "none: only completed jobs are imported"))
        else:
            rows.append(("import", "not yet: the CSE imports a job once it completes"))
    else:
        rows.append(("import", _import_line(view)))
        if view.started_at is not None and view.status is not ImportStatus.RUNNING:
            rows.append(("started", _clock(view.started_at)))
        finished = view.status.finished
        lag, duration = report.lag, report.duration
        if lag is not None:
            rows.append(("lag", f"{_span(lag)} " + _so_far(finished, "completion", "outcome")))
        if duration is not None:
            rows.append(("duration", f"{_span(duration)} " + _so_far(finished, "start", "outcome")))
        if view.skewed:
            rows.append(("note", "the CSE's clock is behind the CTS's; negative times count as 0"))
    lines = [f"job {report.job_id}: {headline(report)}"]
    lines += [f"  {name:<9} {value}" for name, value in rows]
    return "\n".join(lines)


def render_json(report: JobReport | None, code: Exit, job_id: str, error: str | None = None) -> str:
    """The report as one JSON object, with the exit code and its name; times in ISO-8601 UTC."""
    body: dict[str, object] = {"job_id": job_id, "result": code.result, "exit_code": int(code)}
    if error is not None:
        body["error"] = error
    if report is not None:
        view = report.view
        body |= {
            "user": report.user,
            "state": report.state,
            "state_since": _iso(report.state_since),
            "completed_at": _iso(report.completed_at),
            "checked_at": _iso(report.checked_at),
            "read_as": "admin" if report.read_as_admin else "owner",
            "import": None
            if view is None
            else {
                "status": view.status.value,
                "since": _iso(view.since),
                "started_at": _iso(view.started_at),
                "finished_at": _iso(view.since) if view.status.finished else None,
                "finished": view.status.finished,
                "lag_seconds": _seconds(report.lag),
                "duration_seconds": _seconds(report.duration),
                "clock_skew": view.skewed,
            },
        }
    return json.dumps(body)


def _import_line(view: ImportView) -> str:
    match view.status:
        case ImportStatus.WAITING:
            return f"waiting since the job completed at {_clock(view.since)}"
        case ImportStatus.RUNNING:
            return f"running since {_clock(view.since)}"
        case _:
            return f"{view.status.value} at {_clock(view.since)}"


def _so_far(finished: bool, start: str, end: str) -> str:
    return f"({start} to {end})" if finished else f"so far ({start} to now)"


def _clock(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _iso(moment: float | None) -> str | None:
    return None if moment is None else datetime.fromtimestamp(moment, UTC).isoformat()


def _seconds(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _span(seconds: float) -> str:
    """A duration for people: ``0.4s``, ``42s``, ``3m 5s``, ``2h 10m``, ``3d 4h``."""
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m {secs}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h {minutes}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours}h"


# ---- the command line ----------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line that never echoes a value given."""

    def error(self, message: str) -> NoReturn:
        """Print the problem on one line and exit with the usage code."""
        self.exit(Exit.USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def build_parser(command: str) -> argparse.ArgumentParser:
    """The flags of ``status`` or ``wait``, with the exit codes in the help."""
    waits = command == "wait"
    summary = (
        "Wait until the CSE has imported a CTS job's output, then report on it."
        if waits
        else "Report whether a CTS job ran and whether the CSE imported its output."
    )
    codes = "\n".join(f"  {int(code):>2}  {code.result:<18} {EXIT_MEANINGS[code]}" for code in Exit)
    parser = _Parser(
        prog=f"{PROG} {command}",
        description=summary,
        epilog=textwrap.fill(
            f"The token is read from --cts-token-file, or from {ENV_PREFIX}CTS_TOKEN_FILE or "
            f"{ENV_PREFIX}CTS_TOKEN in the environment, never from a flag; the URL may come "
            f"from {ENV_PREFIX}CTS_URL.",
            width=78,
        )
        + f"\n\nexit codes:\n{codes}\n  Any other code (1) is a fault of this program.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,  # '--cts-token' must never be taken for '--cts-token-file'
    )
    parser.add_argument("job_id", metavar="JOB_ID", help="the CTS job's id")
    parser.add_argument("--cts-url", help=f"base URL of the CTS [env {ENV_PREFIX}CTS_URL]")
    parser.add_argument(
        "--cts-token-file",
        metavar="FILE",
        help=f"file holding the CTS token [env {ENV_PREFIX}CTS_TOKEN_FILE]",
    )
    if waits:
        parser.add_argument(
            "--timeout",
            type=_duration,
            default=DEFAULT_TIMEOUT,
            help=f"give up after this long, e.g. 90s, 15m, 2h (default: {DEFAULT_TIMEOUT})",
        )
        parser.add_argument(
            "--interval",
            type=_duration,
            default=DEFAULT_INTERVAL,
            help=f"time between checks (default: {DEFAULT_INTERVAL})",
        )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def parse(parser: argparse.ArgumentParser, args: list[str]) -> argparse.Namespace:
    """The flags, refusing unknown ones by name only: a stray value could be a token."""
    namespace, extras = parser.parse_known_args(args)
    flags = [extra.split("=", 1)[0] for extra in extras if extra.startswith("-")]
    if "--cts-token" in flags:
        parser.error(
            f"a token is never a flag: use --cts-token-file, or {ENV_PREFIX}CTS_TOKEN in the "
            "environment"
        )
    if flags:
        parser.error(f"unknown flag {flags[0]}")
    if extras:
        parser.error(f"{len(extras)} unexpected argument(s), not shown in case one is a token")
    return namespace


def main(args: list[str]) -> int:
    """Run ``status`` or ``wait`` (``args[0]``) with the rest of ``args``; returns the exit code."""
    command = args[0]
    parser = build_parser(command)
    options = parse(parser, args[1:])
    given = {
        name: getattr(options, name)
        for name in ("cts_url", "cts_token_file")
        if getattr(options, name) is not None
    }
    settings = settings_from(given)
    if settings is None:
        return Exit.USAGE
    try:
        token = token_source(settings)
    except TokenError as error:
        print(f"{PROG} {command}: {error}", file=sys.stderr)
        return Exit.USAGE
    assert settings.cts_url is not None

    # The client's warnings would repeat what the final message says; keep stderr for that.
    logging.getLogger("exporter").addHandler(logging.NullHandler())
    logging.getLogger("exporter").propagate = False
    client = client_for(
        settings,
        settings.cts_url,
        token,
        # wait retries on its own schedule, bounded by its deadline
        retry=RetryPolicy(attempts=1) if command == "wait" else None,
    )
    return asyncio.run(_run(command, options, client))


async def _run(command: str, options: argparse.Namespace, client: CtsClient) -> int:
    job_id: str = options.job_id
    try:
        if JOB_ID.fullmatch(job_id) is None:
            raise LookupFailed(Exit.NOT_FOUND, "not a CTS job id: 1 to 50 letters, digits, _ or -")
        lookup = JobLookup(client, job_id)
        if command == "wait":
            progress = Progress(sys.stderr)
            report, code, message = await wait_for_import(
                lookup, give_up_after=options.timeout, interval=options.interval, progress=progress
            )
            progress.clear()
        else:
            report = await lookup.read()
            code, message = report.exit, None
    except LookupFailed as failure:
        report, code, message = None, failure.code, str(failure)
    finally:
        await client.aclose()

    if message is not None:
        print(f"{PROG} {command}: {message}", file=sys.stderr)
    if options.json:
        print(render_json(report, code, job_id, message))
    elif report is not None:
        print(render_text(report))
    return code

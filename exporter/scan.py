"""One scan of the CTS: list every job in the look-back window and classify its import.

A scan produces a Snapshot, an immutable picture that the metrics collector renders on every
scrape until the next successful scan replaces it. Everything that does not depend on the
scrape time (counts, the order of per-job series, the oldest pending imports) is worked out
here, once per scan, so that a scrape stays cheap however many jobs the window holds.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from exporter.cts import JOB_STATES, CtsClient, CtsError
from exporter.imports import ImportStatus, ImportView, InvalidMetadata, classify, parse_time

log = logging.getLogger(__name__)

KNOWN_STATES = frozenset(JOB_STATES)

# Per-job series are capped; this order keeps the jobs an operator must act on.
_PROBLEM_RANK = {
    ImportStatus.ERROR: 0,
    ImportStatus.RUNNING: 1,
    ImportStatus.WAITING: 2,
    ImportStatus.COMPLETE: 3,
    ImportStatus.NO_OPERATION: 3,
}


@dataclass(frozen=True, slots=True)
class JobRecord:
    """What the exporter keeps of one job."""

    id: str
    user: str
    cluster: str
    image: str
    state: str
    last_transition: float
    completed_at: float | None = None
    view: ImportView | None = None
    metadata_error: str | None = None
    """Why a completed job has no import view: its CSE metadata could not be read."""


@dataclass(frozen=True)
class Snapshot:
    """The result of one successful scan, ready to render."""

    finished_at: float
    duration: float
    pages: int
    truncated: bool
    jobs: list[JobRecord]
    imports: list[JobRecord]
    """Completed jobs with a readable import status, problems first, newest first within."""
    state_counts: dict[str, int]
    status_counts: dict[ImportStatus, int]
    invalid_metadata: int
    unreadable_jobs: int
    skewed: int
    oldest_waiting_completion: float | None
    oldest_running_start: float | None
    oldest_pending_completion: float | None


@dataclass
class ScanOutcome:
    """Jobs listed by a scan; filled as the scan goes, so a failure still reports progress.

    Each job is read as its page arrives and only its JobRecord is kept, a tenth of the memory
    of the CTS row; rows that are not readable jobs are only counted.
    """

    rows: list[JobRecord] = field(default_factory=list)
    pages: int = 0
    truncated: bool = False
    unreadable_rows: int = 0


def image_name(name: str) -> str:
    """An image reference without its tag or digest: ``kbase/x:1@sha256:ab`` → ``kbase/x``."""
    name = name.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > slash else name


async def list_window(
    client: CtsClient,
    *,
    admin: bool,
    now: datetime,
    lookback: timedelta,
    page_size: int,
    max_jobs: int,
    outcome: ScanOutcome,
) -> None:
    """List every job whose last transition lies in the window ending ``now``, into ``outcome``.

    The CTS has no cursor: each next page asks for jobs before the oldest time seen plus one
    millisecond (times are stored to the millisecond, so jobs sharing the oldest time may have
    been cut off) and drops the ids already seen.
    """
    after = now - lookback
    before: datetime | None = None
    seen: set[str] = set()
    endpoint = "/admin/jobs" if admin else "/jobs"
    while True:
        page = await client.list_jobs(admin=admin, after=after, before=before, limit=page_size)
        outcome.pages += 1
        taken = _take_page(page.rows, seen, outcome, max_jobs)
        if taken is None or page.size < page_size:
            return
        oldest, fresh = taken
        if oldest is None:
            return
        before = _next_before(oldest, fresh, before, page_size, endpoint, outcome)
        if before is None:
            return


def _take_page(
    rows: list[object], seen: set[str], outcome: ScanOutcome, max_jobs: int
) -> tuple[float | None, int] | None:
    """Add a page's new jobs to ``outcome``: the page's oldest last-transition time and how
    many of its rows were new, or None when the job cap was reached."""
    oldest: float | None = None
    fresh = 0
    for row in rows:
        record = read_job(row)
        moment = record.last_transition if record else _last_transition(row)
        if moment is not None and (oldest is None or moment < oldest):
            oldest = moment
        job_id = record.id if record else _job_id(row)
        if job_id is not None:
            if job_id in seen:
                continue
            seen.add(job_id)
        fresh += 1
        if len(outcome.rows) + outcome.unreadable_rows == max_jobs:
            outcome.truncated = True
            return None
        if record is None:
            outcome.unreadable_rows += 1
        else:
            outcome.rows.append(record)
    return oldest, fresh


def _next_before(
    oldest: float,
    fresh: int,
    before: datetime | None,
    page_size: int,
    endpoint: str,
    outcome: ScanOutcome,
) -> datetime | None:
    """The ``before`` of the next page after a full one; None when the listing must stop."""
    try:
        boundary = datetime.fromtimestamp(oldest, UTC)
        past_boundary = boundary + timedelta(milliseconds=1)
    except (OverflowError, ValueError, OSError):
        # Only a corrupt time is this far off; it cannot be a page boundary.
        log.warning("a job's last transition time is out of range; the listing stops there")
        outcome.truncated = True
        return None
    next_before = past_boundary
    if fresh == 0:
        # A whole page shares one millisecond: more jobs share it than a page holds. Step past
        # that millisecond so the scan ends; the rest of its jobs are not listed.
        log.warning(
            "more than %d jobs share the transition time %s; some of them are not listed",
            page_size,
            boundary.isoformat(),
        )
        outcome.truncated = True
        next_before = boundary
    if before is not None and next_before >= before:
        # Only a CTS that ignores ``before`` sends this; asking again would never end.
        raise CtsError("payload", f"GET {endpoint}: the CTS ignores 'before'; cannot page")
    return next_before


def build_snapshot(outcome: ScanOutcome, *, started: float, finished: float) -> Snapshot:
    """Classify the listed jobs and work out everything a scrape will need."""
    jobs = outcome.rows
    state_counts = dict.fromkeys(JOB_STATES, 0)
    status_counts = dict.fromkeys(ImportStatus, 0)
    invalid = skewed = 0
    for record in jobs:
        state_counts[record.state] += 1
        view = record.view
        if record.completed_at is None:
            continue
        if view is None:
            invalid += 1
            continue
        status_counts[view.status] += 1
        skewed += view.skewed

    imports = [job for job in jobs if job.view is not None]
    imports.sort(key=_series_order)
    return Snapshot(
        finished_at=finished,
        duration=finished - started,
        pages=outcome.pages,
        truncated=outcome.truncated,
        jobs=jobs,
        imports=imports,
        state_counts=state_counts,
        status_counts=status_counts,
        invalid_metadata=invalid,
        unreadable_jobs=outcome.unreadable_rows,
        skewed=skewed,
        oldest_waiting_completion=_oldest(imports, ImportStatus.WAITING),
        oldest_running_start=_oldest(imports, ImportStatus.RUNNING),
        oldest_pending_completion=min(
            (
                job.completed_at
                for job in imports
                if job.completed_at is not None
                and job.view is not None
                and not job.view.status.finished
            ),
            default=None,
        ),
    )


def read_job(row: object) -> JobRecord | None:
    """A job, as a list or status endpoint returns it, read into what the exporter keeps.

    A completed job also gets its import status, or ``metadata_error`` when its CSE keys cannot
    be read. None when the row is not a readable job: not an object, an id that is not a string,
    a state outside the known twelve, no readable last transition time, fields of the wrong type.
    """
    if not isinstance(row, dict):
        return None
    job_id, state, user = row.get("id"), row.get("state"), row.get("user", "")
    if not (isinstance(job_id, str) and isinstance(state, str) and isinstance(user, str)):
        return None
    transitions = row.get("transition_times")
    admin_meta = row.get("admin_meta", {})
    if state not in KNOWN_STATES or not transitions or not isinstance(admin_meta, dict):
        return None
    last_transition = _last_transition(row)
    cluster = _field(row, "job_input", "cluster")
    image = _field(row, "image", "name")
    if last_transition is None or cluster is None or image is None:
        return None

    completed_at = view = metadata_error = None
    if state == "complete":
        completed_at = next(
            (
                parse_time(step.get("time"))
                for step in reversed(transitions)
                if isinstance(step, dict) and step.get("state") == "complete"
            ),
            None,
        )
        if completed_at is None:
            return None
        try:
            view = classify(completed_at, admin_meta)
        except InvalidMetadata as error:
            metadata_error = str(error)
    # A window holds many jobs of few users, clusters, images and states: one copy of each
    # string instead of one a job saves about a quarter of a scan's memory.
    return JobRecord(
        id=job_id,
        user=sys.intern(user),
        cluster=sys.intern(cluster),
        image=sys.intern(image_name(image)),
        state=sys.intern(state),
        last_transition=last_transition,
        completed_at=completed_at,
        view=view,
        metadata_error=metadata_error,
    )


def _last_transition(row: object) -> float | None:
    """The time of a row's last state transition, when it has a readable one."""
    if not isinstance(row, dict):
        return None
    transitions = row.get("transition_times")
    if not isinstance(transitions, list) or not transitions:
        return None
    last = transitions[-1]
    return parse_time(last.get("time")) if isinstance(last, dict) else None


def _job_id(row: object) -> str | None:
    job_id = row.get("id") if isinstance(row, dict) else None
    return job_id if isinstance(job_id, str) else None


def _field(row: dict[str, object], part: str, name: str) -> str | None:
    """A string inside one of a row's optional objects; "" when absent, None when malformed."""
    inner = row.get(part)
    if inner is None:
        return ""
    if not isinstance(inner, dict):
        return None
    found = inner.get(name, "")
    return found if isinstance(found, str) else None


def _series_order(job: JobRecord) -> tuple[int, float]:
    assert job.view is not None and job.completed_at is not None
    return (_PROBLEM_RANK[job.view.status], -job.completed_at)


def _oldest(imports: list[JobRecord], status: ImportStatus) -> float | None:
    """The earliest ``since`` among imports in ``status``."""
    return min(
        (job.view.since for job in imports if job.view is not None and job.view.status == status),
        default=None,
    )


class OutcomeTracker:
    """Notices imports that finished since the previous scan, each outcome once.

    The first scan after start only records what is already finished: counting it would report
    every old import as new after each restart.
    """

    def __init__(self) -> None:
        self._known: dict[str, ImportView] | None = None

    def new_outcomes(self, snapshot: Snapshot) -> list[JobRecord]:
        """Jobs whose outcome (status and time) was not in the previous scan."""
        current: dict[str, ImportView] = {}
        fresh: list[JobRecord] = []
        for job in snapshot.imports:
            view = job.view
            if view is None or not view.status.finished:
                continue
            current[job.id] = view  # the snapshot's own view: no copy per job
            if self._known is not None and not _same_outcome(self._known.get(job.id), view):
                fresh.append(job)
        self._known = current
        return fresh


def _same_outcome(before: ImportView | None, now: ImportView) -> bool:
    return before is not None and before.status == now.status and before.since == now.since

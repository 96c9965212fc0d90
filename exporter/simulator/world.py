"""The simulated world behind the simulated CTS: jobs, their state machine and the CSE.

Everything here is plain Python driven by an injectable clock and random generator, so tests
can run it deterministically without HTTP. Time is a float of seconds since the epoch; job
transition times are stored to the millisecond, as the CTS stores them.

The world is an event queue. Jobs are planned in full when they arrive (every transition and
its time) and each transition is applied when its time comes; the CSE reacts to completions.
`advance(now)` applies every event due at or before `now`, stamping each with its own due time,
so no time written is ever in the future and a seeded run gives the same history however often
it is advanced.
"""

from __future__ import annotations

import hashlib
import heapq
import random
import time
import uuid
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from exporter.cts import JOB_STATES

TERMINAL_STATES = frozenset({"complete", "error", "canceled"})
NORMAL_PATH = JOB_STATES[:7]
CANCEL_PATH = ("canceling", "canceled")
FAILURE_PATH = ("error_processing_submitting", "error_processing_submitted", "error")
CLUSTERS = ("perlmutter-jaws", "lawrencium-jaws", "kbase")

CSE_START = "cse_event_processing_start"
CSE_COMPLETE = "cse_event_processing_complete"
CSE_NO_OPERATION = "cse_event_processing_no_operation"
CSE_ERROR = "cse_event_processing_error"
CSE_KEYS = {
    "start": CSE_START,
    "complete": CSE_COMPLETE,
    "no_operation": CSE_NO_OPERATION,
    "error": CSE_ERROR,
}
ImportOutcome = Literal["start", "complete", "no_operation", "error"]

MetaValue = str | int | float
_T = TypeVar("_T")

# Simulated seconds each step of the normal path takes, as (low, high) of a uniform draw: the
# CTS's own steps take seconds, file transfers minutes, the container run up to two hours.
_STEP_SECONDS: dict[str, tuple[float, float]] = {
    "download_submitted": (1.0, 8.0),
    "job_submitting": (20.0, 600.0),
    "job_submitted": (1.0, 8.0),
    "upload_submitting": (120.0, 7200.0),
    "upload_submitted": (1.0, 8.0),
    "complete": (20.0, 600.0),
}
_ERROR_STEP_SECONDS = (2.0, 60.0)


@dataclass(frozen=True, slots=True)
class JobImage:
    """A registered container image; the CSE has an importer for some images only."""

    name: str
    tag: str
    has_importer: bool = True

    @property
    def digest(self) -> str:
        """A stable fake digest derived from the name and tag."""
        return "sha256:" + hashlib.sha256(f"{self.name}:{self.tag}".encode()).hexdigest()

    @property
    def reference(self) -> str:
        """The image as a job's input names it, `name:tag`."""
        return f"{self.name}:{self.tag}"


IMAGES = (
    JobImage("ghcr.io/kbase/checkm2", "1.0"),
    JobImage("ghcr.io/kbase/gtdb_tk", "2.4.0"),
    JobImage("ghcr.io/kbase/bbmap", "39.06"),
    JobImage("ghcr.io/kbase/mmseqs2", "15.6f452"),
    JobImage("ghcr.io/kbase/genomad", "1.8.0", has_importer=False),
    JobImage("ghcr.io/kbase/skani", "0.2.2", has_importer=False),
)

_IMAGES_WITH_IMPORTER = tuple(image for image in IMAGES if image.has_importer)
_IMAGES_WITHOUT_IMPORTER = tuple(image for image in IMAGES if not image.has_importer)


def image_from_reference(reference: str) -> JobImage:
    """The known image a `name:tag` reference names, or a new image with an importer."""
    for image in IMAGES:
        if reference in (image.reference, image.name):
            return image
    name, _, tag = reference.rpartition(":")
    if not name or "/" in tag:
        return JobImage(reference, "latest")
    return JobImage(name, tag)


class WorldSettings(BaseModel):
    """Rates, durations and shares of the simulated world; durations in simulated seconds."""

    model_config = ConfigDict(extra="forbid")

    seed: int | None = Field(default=None, description="the same seed repeats a run")
    jobs: int = Field(default=2000, ge=0, description="jobs preloaded over the look-back")
    speed: float = Field(default=1.0, gt=0, description="divides every duration and interval")
    lookback: float = Field(default=7 * 86400.0, gt=0, description="seconds the preload covers")
    users: list[str] = Field(
        default_factory=lambda: ["alice", "bob", "carol", "dave", "erin"], min_length=1
    )
    arrival_interval: float = Field(
        default=30.0, ge=0, description="mean seconds between new live jobs; 0 stops arrivals"
    )
    job_error_share: float = Field(default=0.08, ge=0, le=1, description="jobs ending in error")
    job_cancel_share: float = Field(default=0.04, ge=0, le=1, description="jobs canceled")
    no_importer_share: float = Field(
        default=0.1, ge=0, le=1, description="jobs whose image the CSE has no importer for"
    )
    import_error_share: float = Field(default=0.05, ge=0, le=1, description="imports failing")
    import_stuck_share: float = Field(
        default=0.01, ge=0, le=1, description="imports left with `start` alone: the CSE died"
    )
    import_duration: float = Field(default=60.0, gt=0, description="mean import seconds")
    pickup_delay: float = Field(default=2.0, gt=0, description="seconds before a pickup")
    restart_delay: float = Field(default=30.0, gt=0, description="seconds a CSE restart takes")
    outage_interval: float = Field(
        default=2 * 86400.0, ge=0, description="mean seconds between CSE outages; 0 for none"
    )
    outage_duration: float = Field(default=1800.0, gt=0, description="mean outage seconds")
    backlog_jobs: int = Field(
        default=12, ge=0, description="latest preloaded completions an outage leaves waiting"
    )
    backlog_outage: float = Field(
        default=60.0, ge=0, description="seconds after start the preloaded outage ends"
    )


class Clock(Protocol):
    """Where the world reads the current time, in seconds since the epoch."""

    def now(self) -> float:
        """The current time."""
        ...


class SystemClock:
    """The wall clock."""

    def now(self) -> float:
        """The current wall-clock time."""
        return time.time()


class ManualClock:
    """A clock that moves only when told to, for deterministic tests."""

    def __init__(self, start: float) -> None:
        self._now = start

    def now(self) -> float:
        """The time last set."""
        return self._now

    def advance(self, seconds: float) -> float:
        """Move the clock forward and return the new time."""
        self._now += seconds
        return self._now


# Naive on purpose: isoformat() then writes no offset, and the caller appends "Z".
_NAIVE_EPOCH = datetime(1970, 1, 1)


def format_ms(ms: int) -> str:
    """A millisecond timestamp as the CTS writes times in bodies: `...T21:10:05.789Z`."""
    moment = _NAIVE_EPOCH + timedelta(milliseconds=ms)
    return moment.isoformat(timespec="milliseconds") + "Z"


def format_cse_time(t: float) -> str:
    """A time as the CSE writes its keys: `isoformat()` with `+00:00`."""
    return datetime.fromtimestamp(t, UTC).isoformat()


def to_ms(t: float) -> int:
    """Seconds to whole milliseconds, rounding down so a time never moves later."""
    return int(t * 1000)


class MetadataError(ValueError):
    """A metadata update the CTS would refuse as an illegal parameter."""


class NoSuchJobError(KeyError):
    """No job has the given id."""


@dataclass(slots=True, eq=False)
class Job:
    """One CTS job as the simulated CTS stores it."""

    id: str
    user: str
    cluster: str
    image: JobImage
    order: int
    transitions: list[tuple[str, int]] = field(default_factory=list)
    admin_meta: dict[str, MetaValue] = field(default_factory=dict)
    input_file_count: int = 1
    num_containers: int = 1
    cpus: int = 4
    memory: int = 8 * 1024**3
    runtime_seconds: int = 3600
    cpu_hours: float | None = None
    output_file_count: int | None = None
    error: str | None = None
    cse_ignored: bool = False
    row_cache: bytes | None = None

    @property
    def state(self) -> str:
        """The job's current state."""
        return self.transitions[-1][0]

    @property
    def last_ms(self) -> int:
        """The job's last transition time in epoch milliseconds."""
        return self.transitions[-1][1]

    @property
    def sort_key(self) -> tuple[int, int]:
        """The job's place in the list order: last transition, then arrival."""
        return (self.transitions[-1][1], self.order)

    def trans_id(self, position: int) -> str:
        """The id of the job's transition at `position`, stable across renderings."""
        digest = hashlib.md5(f"{self.id}/{position}".encode(), usedforsecurity=False).digest()
        return str(uuid.UUID(bytes=digest, version=4))

    def completed_ms(self) -> int | None:
        """When the job entered `complete`, if it did."""
        for state, ms in self.transitions:
            if state == "complete":
                return ms
        return None


class JobIndex:
    """Jobs sorted by last transition time, so a list is a bisect plus a slice."""

    def __init__(self) -> None:
        self._keys: list[tuple[int, int]] = []
        self._jobs: list[Job] = []

    def __len__(self) -> int:
        return len(self._jobs)

    def add(self, job: Job) -> None:
        """Insert a job at its place."""
        key = job.sort_key
        position = bisect_left(self._keys, key)
        self._keys.insert(position, key)
        self._jobs.insert(position, job)

    def remove(self, job: Job, key: tuple[int, int]) -> None:
        """Remove a job that was indexed under `key`."""
        position = bisect_left(self._keys, key)
        del self._keys[position]
        del self._jobs[position]

    def rebuild(self, jobs: Iterable[Job]) -> None:
        """Replace the index's content in one sort, for bulk loads."""
        ordered = sorted(jobs, key=lambda job: job.sort_key)
        self._jobs = ordered
        self._keys = [job.sort_key for job in ordered]

    def newest_first(self, after_ms: int | None, before_ms: int | None) -> Iterator[Job]:
        """Jobs with `after_ms <= last transition < before_ms`, newest first."""
        low = 0 if after_ms is None else bisect_left(self._keys, (after_ms,))
        high = len(self._keys) if before_ms is None else bisect_left(self._keys, (before_ms,))
        jobs = self._jobs
        for position in range(high - 1, low - 1, -1):
            yield jobs[position]


# A queued event: (due, sequence number, action, argument); the unique sequence number keeps
# events due at the same time in the order they were scheduled and spares comparing actions.
_Event = tuple[float, int, Callable[[float, Any], None], Any]


@dataclass(slots=True)
class _Plan:
    """A job's transitions still to come."""

    steps: list[tuple[str, float]]


class World:
    """Jobs, their state machine and the CSE; thread-unsafe, driven by `advance`."""

    def __init__(
        self,
        settings: WorldSettings | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings or WorldSettings()
        self.clock: Clock = clock or SystemClock()
        self.rng = rng or random.Random(self.settings.seed)  # noqa: S311 - simulation only
        self.jobs: dict[str, Job] = {}
        self.index = JobIndex()
        self.user_index: dict[str, JobIndex] = {}
        self._events: list[_Event] = []
        self._seq = 0
        self._order = 0
        self._bulk = False
        self._plans: dict[str, _Plan] = {}
        self.cse = SimulatedCse(self)

    # ----- time and events -------------------------------------------------------------------

    def scaled(self, simulated_seconds: float) -> float:
        """Real seconds a simulated duration takes at the configured speed."""
        return simulated_seconds / self.settings.speed

    def schedule(self, due: float, action: Callable[[float, Any], None], argument: Any) -> None:
        """Run `action(due, argument)` once the clock reaches `due`."""
        self._seq += 1
        heapq.heappush(self._events, (due, self._seq, action, argument))

    def next_due(self) -> float | None:
        """When the next event is due, if any is queued."""
        return self._events[0][0] if self._events else None

    def advance(self, now: float | None = None) -> int:
        """Apply every event due at or before `now` (default: the clock); return how many."""
        limit = self.clock.now() if now is None else now
        applied = 0
        events = self._events
        while events and events[0][0] <= limit:
            due, _, action, argument = heapq.heappop(events)
            action(due, argument)
            applied += 1
        return applied

    # ----- starting ----------------------------------------------------------------------------

    def start(self) -> None:
        """Preload the configured jobs and start arrivals and CSE outages from now."""
        now = self.clock.now()
        if self.settings.jobs:
            self.preload(self.settings.jobs, now)
        elif self.settings.outage_interval > 0:
            self.cse.schedule_random_outage(now)
        if self.settings.arrival_interval > 0:
            self.schedule(now + self._arrival_gap(), self._arrive, None)

    def preload(self, count: int, now: float) -> None:
        """Create `count` jobs spread over the look-back window, replaying the CSE over them.

        The latest `backlog_jobs` completions are left behind by a CSE outage that began with
        a crash mid-import, so right after start there are waiting jobs and a stuck (running)
        import next to the finished ones; the outage ends `backlog_outage` seconds later.
        """
        start = now - self.settings.lookback
        arrivals = sorted(self.rng.uniform(start, now) for _ in range(count))
        self._bulk = True
        completions: list[float] = []
        for created in arrivals:
            steps = self._plan_steps(created)
            job = self._new_job(self.rng.choice(self.settings.users), steps)
            if steps[-1][0] == "complete" and steps[-1][1] <= now:
                completions.append(steps[-1][1])
            self._start_plan(job, steps, now)
        if self.settings.outage_interval > 0:
            self.cse.schedule_random_outage(start)
        completions.sort()
        self.cse.keep_up_with(len(completions), self.scaled(self.settings.lookback))
        # Few completions keep at least three finished imports, one per final outcome.
        backlog = min(self.settings.backlog_jobs, max(1, (len(completions) - 3) // 2))
        if self.settings.backlog_jobs and len(completions) > backlog:
            # The CSE dies starting the job just before the backlog, which stays stuck.
            crash_at = completions[-(backlog + 1)] - 1e-3
            outage_end = now + self.scaled(self.settings.backlog_outage)
            self.schedule(crash_at, self.cse.crash_at_next_start, outage_end)
        self.advance(now)
        self.cse.keep_up_with(0, 0.0)
        self._bulk = False
        self.index.rebuild(self.jobs.values())
        for user, jobs in self._jobs_by_user().items():
            self.user_index.setdefault(user, JobIndex()).rebuild(jobs)
        self._ensure_every_outcome()

    def _jobs_by_user(self) -> dict[str, list[Job]]:
        by_user: dict[str, list[Job]] = {}
        for job in self.jobs.values():
            by_user.setdefault(job.user, []).append(job)
        return by_user

    def _ensure_every_outcome(self) -> None:
        """Turn the latest finished imports into each missing outcome, for small preloads.

        A handful of jobs may by chance include no failed or no-importer import; rewriting the
        newest completed import keeps every history consistent while showing each status.
        """
        finished = [
            job
            for job in self.jobs.values()
            if CSE_COMPLETE in job.admin_meta and CSE_START in job.admin_meta
        ]
        finished.sort(key=lambda job: job.sort_key, reverse=True)
        present = {key for job in self.jobs.values() for key in job.admin_meta}
        for key, image in ((CSE_ERROR, None), (CSE_NO_OPERATION, IMAGES[-1])):
            if key in present or not finished:
                continue
            job = finished.pop(0)
            if image is not None:
                job.image = image
            job.admin_meta[key] = job.admin_meta.pop(CSE_COMPLETE)
            job.row_cache = None

    # ----- jobs ---------------------------------------------------------------------------------

    def _arrival_gap(self) -> float:
        return self.scaled(self.rng.expovariate(1.0 / self.settings.arrival_interval))

    def _arrive(self, due: float, _: Any) -> None:
        steps = self._plan_steps(due)
        job = self._new_job(self.rng.choice(self.settings.users), steps)
        self._start_plan(job, steps, due)
        self.schedule(due + self._arrival_gap(), self._arrive, None)

    def _pick(self, options: Sequence[_T]) -> _T:
        """One of `options`, uniformly; cheaper than `Random.choice` for big preloads."""
        return options[int(self.rng.random() * len(options))]

    def _pick_image(self) -> JobImage:
        if self.rng.random() < self.settings.no_importer_share:
            return self._pick(_IMAGES_WITHOUT_IMPORTER)
        return self._pick(_IMAGES_WITH_IMPORTER)

    def _plan_steps(self, created: float) -> list[tuple[str, float]]:
        """Every transition of a new job with its time, ending in the job's fate."""
        rng = self.rng
        steps = [("created", created)]
        t = created
        for state in NORMAL_PATH[1:]:
            low, high = _STEP_SECONDS[state]
            t += self.scaled(rng.uniform(low, high))
            steps.append((state, t))
        fate = rng.random()
        error_share = self.settings.job_error_share
        if fate < error_share / 2:
            # A container failure: the run ends, then the error is processed.
            keep = NORMAL_PATH.index("job_submitted")
            path = list(FAILURE_PATH)
        elif fate < error_share:
            keep = rng.randrange(1, len(NORMAL_PATH) - 1)
            path = ["error"]
        elif fate < error_share + self.settings.job_cancel_share:
            keep = rng.randrange(1, len(NORMAL_PATH) - 1)
            path = list(CANCEL_PATH)
        else:
            return steps
        steps = steps[: keep + 1]
        t = steps[-1][1]
        for state in path:
            t += self.scaled(rng.uniform(*_ERROR_STEP_SECONDS))
            steps.append((state, t))
        return steps

    def _new_job(
        self,
        user: str,
        steps: list[tuple[str, float]],
        image: JobImage | None = None,
        cluster: str | None = None,
    ) -> Job:
        rng = self.rng
        self._order += 1
        job = Job(
            id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            user=user,
            cluster=cluster or self._pick(CLUSTERS),
            image=image or self._pick_image(),
            order=self._order,
            input_file_count=1 + int(rng.random() * 400),
            num_containers=self._pick((1, 1, 2, 4, 8)),
            cpus=self._pick((4, 8, 16, 32)),
            memory=self._pick((8, 16, 64, 128)) * 1024**3,
            runtime_seconds=self._pick((3600, 7200, 14400)),
        )
        final = steps[-1][0]
        if final == "complete":
            run_seconds = steps[4][1] - steps[3][1]
            job.cpu_hours = round(job.cpus * job.num_containers * run_seconds / 3600, 3)
            job.output_file_count = job.input_file_count * 1 + int(rng.random() * 4)
        elif final == "error":
            job.error = self._pick(
                (
                    "The job container exited with a non-zero exit code",
                    "File download from S3 failed",
                    "The remote job scheduler reported an unexpected failure",
                )
            )
        return job

    def _start_plan(self, job: Job, steps: list[tuple[str, float]], now: float) -> None:
        """Register a job, apply its past transitions and schedule the rest.

        Only the first transition still to come is queued; applying it queues the next, so the
        queue holds one event per unfinished job.
        """
        self.jobs[job.id] = job
        first_future = 0
        for state, t in steps:
            # A completion goes through the queue even in the past: the CSE must see it in
            # completion order.
            if t > now or state == "complete":
                break
            job.transitions.append((state, to_ms(t)))
            first_future += 1
        if first_future == 0:
            # Every job exists from its creation on: a job created in the future is a bug.
            raise ValueError("a job's first transition must not be in the future")
        if not self._bulk:
            self._index_add(job)
        rest = steps[first_future:]
        if rest:
            self._plans[job.id] = _Plan(rest)
            self.schedule(rest[0][1], self._next_step, job)

    def _next_step(self, due: float, job: Job) -> None:
        plan = self._plans[job.id]
        state, _ = plan.steps.pop(0)
        self.transition(job, state, due)
        if plan.steps:
            self.schedule(plan.steps[0][1], self._next_step, job)
        else:
            del self._plans[job.id]

    def transition(self, job: Job, state: str, t: float) -> None:
        """Move a job to `state` at time `t` and let the CSE know of a completion."""
        old_key = job.sort_key
        job.transitions.append((state, max(to_ms(t), job.last_ms)))
        job.row_cache = None
        if not self._bulk:
            self.index.remove(job, old_key)
            self.index.add(job)
            user_index = self.user_index[job.user]
            user_index.remove(job, old_key)
            user_index.add(job)
        if state == "complete" and not job.cse_ignored:
            self.cse.enqueue(job, t)

    def _index_add(self, job: Job) -> None:
        self.index.add(job)
        self.user_index.setdefault(job.user, JobIndex()).add(job)

    def add_job(
        self,
        user: str,
        image: str | JobImage = IMAGES[0],
        cluster: str = "kbase",
        state: str = "complete",
        last_transition: float | None = None,
        step_seconds: float = 1.0,
    ) -> Job:
        """Create a job already in `state`, its last transition at `last_transition` (now).

        The CSE leaves such jobs alone and they never move on by themselves; tests set their
        import status with `write_import`. Earlier transitions are `step_seconds` apart.
        """
        if state not in JOB_STATES:
            raise ValueError(f"unknown job state {state!r}")
        if cluster not in CLUSTERS:
            raise ValueError(f"unknown cluster {cluster!r}")
        now = self.clock.now()
        last = now if last_transition is None else last_transition
        if last > now:
            raise ValueError("a job's last transition cannot be in the future")
        path = path_to(state)
        steps = [(s, last - step_seconds * (len(path) - 1 - i)) for i, s in enumerate(path)]
        if isinstance(image, str):
            image = image_from_reference(image)
        job = self._new_job(user, steps, image=image, cluster=cluster)
        job.cse_ignored = True
        for step_state, t in steps:
            job.transitions.append((step_state, to_ms(t)))
        self.jobs[job.id] = job
        self._index_add(job)
        return job

    def get(self, job_id: str) -> Job:
        """The job with this id; raises `NoSuchJobError`."""
        try:
            return self.jobs[job_id]
        except KeyError:
            raise NoSuchJobError(job_id) from None

    def list_jobs(
        self,
        *,
        after_ms: int | None = None,
        before_ms: int | None = None,
        state: str | None = None,
        cluster: str | None = None,
        user: str | None = None,
        limit: int = 1000,
    ) -> list[Job]:
        """Jobs by the CTS list rules: `after` inclusive, `before` exclusive, newest first."""
        if user is not None:
            index = self.user_index.get(user)
            if index is None:
                return []
        else:
            index = self.index
        found: list[Job] = []
        for job in index.newest_first(after_ms, before_ms):
            if state is not None and job.state != state:
                continue
            if cluster is not None and job.cluster != cluster:
                continue
            found.append(job)
            if len(found) >= limit:
                break
        return found

    # ----- metadata -----------------------------------------------------------------------------

    def update_admin_meta(
        self,
        job_id: str,
        set_fields: dict[str, MetaValue],
        unset_keys: Iterable[str],
    ) -> None:
        """Overwrite `set_fields`, remove `unset_keys`, leave other keys and times alone."""
        unset = set(unset_keys)
        if not set_fields and not unset:
            raise MetadataError("At least one of set_fields or unset_keys must contain keys")
        conflicts = sorted(set(set_fields) & unset)
        if conflicts:
            raise MetadataError(f"Cannot set and unset the same keys: {conflicts[:10]}")
        job = self.get(job_id)
        job.admin_meta.update(set_fields)
        for key in unset:
            job.admin_meta.pop(key, None)
        job.row_cache = None

    def write_import(self, job_id: str, outcome: ImportOutcome, t: float | None = None) -> None:
        """Write a CSE key as the CSE does: a `start` also unsets `complete` and `error`."""
        value = format_cse_time(self.clock.now() if t is None else t)
        if outcome == "start":
            self.update_admin_meta(job_id, {CSE_START: value}, (CSE_COMPLETE, CSE_ERROR))
        else:
            self.update_admin_meta(job_id, {CSE_KEYS[outcome]: value}, ())


def path_to(state: str) -> list[str]:
    """A plausible sequence of states from `created` that ends in `state`."""
    if state in NORMAL_PATH:
        return list(NORMAL_PATH[: NORMAL_PATH.index(state) + 1])
    if state in ("canceling", "canceled"):
        return [*path_to("download_submitted"), *CANCEL_PATH[: CANCEL_PATH.index(state) + 1]]
    return [*path_to("job_submitted"), *FAILURE_PATH[: FAILURE_PATH.index(state) + 1]]


class SimulatedCse:
    """The CSE: imports completed jobs one at a time, in completion order.

    It writes its keys through the same metadata update as `PUT /admin/jobs/{id}/meta`. It can
    be paused by an operator (the running import still finishes) or be down in an outage (the
    running import is lost and keeps `start` alone forever, as when the real CSE dies).
    """

    def __init__(self, world: World) -> None:
        self.world = world
        self.queue: deque[Job] = deque()
        self.current: Job | None = None
        self.paused_by_operator = False
        self.outage_until = 0.0
        self._pickup_pending = False
        self._generation = 0
        self._crash_pending_until: float | None = None
        self._duration_factor = 1.0
        # What the CSE did, oldest first, as (job id, event); bounded for long runs.
        self.history: deque[tuple[str, str]] = deque(maxlen=200_000)

    def keep_up_with(self, imports: int, seconds: float) -> None:
        """Shorten imports so `imports` spread over `seconds` keep the CSE at most half busy.

        A large preload would otherwise bury the CSE under a backlog no real deployment has;
        `keep_up_with(0, 0)` restores the configured durations.
        """
        if imports <= 0 or seconds <= 0:
            self._duration_factor = 1.0
            return
        busy = imports * self.world.scaled(self.world.settings.import_duration)
        self._duration_factor = min(1.0, 0.5 * seconds / busy)

    def is_paused(self, t: float) -> bool:
        """Whether the CSE takes no new job at time `t`."""
        return self.paused_by_operator or t < self.outage_until

    def enqueue(self, job: Job, t: float) -> None:
        """A job completed at `t`: queue it for import."""
        self.queue.append(job)
        self._kick(t)

    def pause(self) -> None:
        """Stop taking new jobs until `resume`; the running import finishes."""
        self.paused_by_operator = True

    def resume(self, t: float | None = None) -> None:
        """Take jobs again (after an outage still running, once it ends)."""
        self.paused_by_operator = False
        self._kick(self.world.clock.now() if t is None else t)

    def _kick(self, t: float) -> None:
        if self._pickup_pending or self.current is not None or not self.queue:
            return
        if self.is_paused(t):
            return
        self._pickup_pending = True
        self.world.schedule(
            t + self.world.scaled(self.world.settings.pickup_delay), self._pick_up, None
        )

    def _pick_up(self, due: float, _: Any) -> None:
        self._pickup_pending = False
        if self.current is not None or not self.queue or self.is_paused(due):
            return
        world = self.world
        settings = world.settings
        job = self.queue.popleft()
        world.write_import(job.id, "start", due)
        self.history.append((job.id, "start"))
        if self._crash_pending_until is not None:
            self._begin_outage(due, self._crash_pending_until)
            self._crash_pending_until = None
            return
        if not job.image.has_importer:
            outcome: ImportOutcome = "no_operation"
            seconds = world.rng.uniform(0.2, 2.0)
        else:
            draw = world.rng.random()
            if draw < settings.import_stuck_share:
                # The CSE dies mid-import: the job keeps `start` alone and the CSE restarts.
                self.history.append((job.id, "stuck"))
                self._begin_outage(due, due + world.scaled(settings.restart_delay))
                return
            outcome = (
                "error"
                if draw < settings.import_stuck_share + (settings.import_error_share)
                else "complete"
            )
            seconds = world.rng.expovariate(1.0 / settings.import_duration)
            seconds *= self._duration_factor
        self.current = job
        world.schedule(due + world.scaled(seconds), self._finish, (job, outcome, self._generation))

    def _finish(self, due: float, argument: tuple[Job, ImportOutcome, int]) -> None:
        job, outcome, generation = argument
        if generation != self._generation:
            return
        self.current = None
        self.world.write_import(job.id, outcome, due)
        self.history.append((job.id, outcome))
        self._kick(due)

    def _begin_outage(self, t: float, until: float) -> None:
        """Go down until `until`; an import in progress is lost and stays stuck."""
        if self.current is not None:
            self.history.append((self.current.id, "stuck"))
        self.current = None
        self._generation += 1
        self.outage_until = max(self.outage_until, until)
        self.world.schedule(self.outage_until, self._outage_over, None)

    def _outage_over(self, due: float, _: Any) -> None:
        self._kick(due)

    def crash_at_next_start(self, due: float, until: float) -> None:
        """Die at the next import start (or now, if one runs) and stay down until `until`."""
        if self.current is not None:
            self._begin_outage(due, until)
        else:
            self._crash_pending_until = until

    def schedule_random_outage(self, t: float) -> None:
        """Queue the next random outage after an exponential gap from `t`."""
        world = self.world
        gap = world.rng.expovariate(1.0 / world.settings.outage_interval)
        world.schedule(t + world.scaled(gap), self._random_outage, None)

    def _random_outage(self, due: float, _: Any) -> None:
        world = self.world
        length = world.rng.expovariate(1.0 / world.settings.outage_duration)
        self._begin_outage(due, due + world.scaled(length))
        self.schedule_random_outage(self.outage_until)

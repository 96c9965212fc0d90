"""Turning scans into Prometheus metrics.

Two kinds of series live here. Cumulative ones (scan counts, finished imports, latency
histograms, request durations) are ordinary prometheus-client instruments, updated once per
scan. The picture of the jobs is rendered by SnapshotCollector afresh on every scrape from the
last successful scan: a job that leaves the window leaves ``/metrics`` with it, and ages are
measured at the moment of the scrape.

``ExporterMetrics.render`` serves ``/metrics``. prometheus-client formats everything but the
three per-job families, whose thousands of series would cost it some 15 µs each; those are
written here, once per snapshot, with only the ages of unfinished imports formatted per scrape.
The registry still holds every family, so prometheus-client's own rendering of it stays the
reference that the fast path must match.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from exporter import __version__
from exporter.cts import ERROR_REASONS, JOB_STATES, ErrorReason
from exporter.imports import FINISHED_STATUSES, ImportStatus
from exporter.scan import JobRecord, Snapshot

# Imports take from seconds (nothing to import) to a day (a backlog behind a CSE outage).
IMPORT_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800,
                  43200, 86400)  # fmt: skip
REQUEST_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

JOB_LABELS = ("job_id", "user", "cluster", "image")

# prometheus-client's own spelling of a sample value, so the text written here matches its.
_sample_value: Callable[[float], str] = floatToGoString


@dataclass
class ScanHealth:
    """How the exporter's contact with the CTS is going; read on every scrape."""

    last_success: bool = False
    last_success_at: float = 0.0
    last_duration: float = 0.0
    admin_mode: bool | None = None
    clock_skew: float | None = None
    cts_version: str | None = None
    cts_git_hash: str = ""
    last_error: str | None = None


class ExporterMetrics:
    """Every metric the exporter serves, in a registry of its own."""

    def __init__(self, max_job_series: int, clock: Callable[[], float] = time.time) -> None:
        # ``_created`` series double every counter's output and no rule or panel reads them.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry(auto_describe=True)
        self.health = ScanHealth()
        self.snapshot: Snapshot | None = None
        self.max_job_series = max_job_series
        self.clock = clock
        self._job_text: JobSeriesText | None = None

        self.scans = Counter(
            "cts_exporter_scans", "Scans of the CTS attempted.", registry=self.registry
        )
        self.scan_errors = Counter(
            "cts_exporter_scan_errors",
            "Failed scans of the CTS, by reason.",
            ["reason"],
            registry=self.registry,
        )
        for reason in ERROR_REASONS:
            self.scan_errors.labels(reason)
        self.imports = Counter(
            "cts_imports",
            "Imports seen to finish, by outcome; the first scan after start counts nothing.",
            ["status"],
            registry=self.registry,
        )
        for status in FINISHED_STATUSES:
            self.imports.labels(status.value)
        self.latency = Histogram(
            "cts_import_latency_seconds",
            "Time from a job's completion to the end of its import, once per outcome.",
            buckets=IMPORT_BUCKETS,
            registry=self.registry,
        )
        self.duration = Histogram(
            "cts_import_duration_seconds",
            "Time from an import's start to its end, once per outcome.",
            buckets=IMPORT_BUCKETS,
            registry=self.registry,
        )
        self.requests = Histogram(
            "cts_exporter_request_duration_seconds",
            "Latency of requests to the CTS, by endpoint.",
            ["endpoint"],
            buckets=REQUEST_BUCKETS,
            registry=self.registry,
        )
        self._instruments: tuple[Collector, ...] = (
            self.scans,
            self.scan_errors,
            self.imports,
            self.latency,
            self.duration,
            self.requests,
        )
        self._snapshot_collector = SnapshotCollector(self)
        self.registry.register(self._snapshot_collector)

    def render(self, *, openmetrics: bool = False) -> bytes:
        """The ``/metrics`` body: the classic text format, or OpenMetrics when asked.

        It holds the same families and samples as prometheus-client's rendering of
        ``registry``; the per-job families come from text kept for the current snapshot.
        """
        now = self.clock()
        snapshot = self.snapshot
        if snapshot is None:
            # Nothing per job yet: the whole registry is a few dozen series.
            return _generate(self.registry, openmetrics)
        summary = _Families(
            [
                *(metric for instrument in self._instruments for metric in instrument.collect()),
                *self._snapshot_collector.summary(snapshot, now),
            ]
        )
        head = _generate(summary, openmetrics)
        if openmetrics:
            # The families written here belong before the end marker.
            head = head.removesuffix(_OPENMETRICS_END)
        job_text = self._job_text
        cap = self.max_job_series
        if job_text is None or job_text.snapshot is not snapshot or job_text.cap != cap:
            job_text = self._job_text = JobSeriesText(snapshot, cap)
        tail = job_text.render(now, openmetrics).encode()
        return head + tail + _OPENMETRICS_END if openmetrics else head + tail

    def observe_request(self, endpoint: str, seconds: float) -> None:
        """Record one CTS request's latency."""
        self.requests.labels(endpoint).observe(seconds)

    def scan_succeeded(self, snapshot: Snapshot, finished: Iterable[JobRecord]) -> None:
        """Publish a new snapshot and count the imports that finished since the last one."""
        for job in finished:
            assert job.view is not None
            self.imports.labels(job.view.status.value).inc()
            if job.view.latency is not None:
                self.latency.observe(job.view.latency)
            if job.view.duration is not None:
                self.duration.observe(max(job.view.duration, 0.0))
        self.scans.inc()
        self.snapshot = snapshot
        # Let the last snapshot's text, and with it the snapshot, go now rather than at the
        # next scrape.
        self._job_text = None
        self.health.last_success = True
        self.health.last_success_at = snapshot.finished_at
        self.health.last_duration = snapshot.duration
        self.health.last_error = None

    def scan_failed(self, reason: ErrorReason, message: str, duration: float) -> None:
        """Count a failed scan; the last good snapshot stays on show."""
        self.scans.inc()
        self.scan_errors.labels(reason).inc()
        self.health.last_success = False
        self.health.last_duration = duration
        self.health.last_error = message


class SnapshotCollector(Collector):
    """Renders the last snapshot and the scan health on every scrape."""

    def __init__(self, metrics: ExporterMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        """Yield every gauge, with ages measured now."""
        now = self._metrics.clock()
        snapshot = self._metrics.snapshot
        if snapshot is None:
            yield from self._health_gauges()
            yield from _empty_picture()
            return
        yield from self.summary(snapshot, now)
        yield from _job_series(snapshot, now, self._metrics.max_job_series)

    def summary(self, snapshot: Snapshot, now: float) -> Iterator[Metric]:
        """Every gauge of ``snapshot`` but the per-job families and the count they dropped."""
        yield from self._health_gauges()
        yield from _picture(snapshot, now)

    def _health_gauges(self) -> Iterator[Metric]:
        health = self._metrics.health
        snapshot = self._metrics.snapshot
        yield _gauge(
            "cts_exporter_last_scan_success",
            "1 when the last scan of the CTS succeeded, else 0.",
            float(health.last_success),
        )
        yield _gauge(
            "cts_exporter_last_scan_success_timestamp_seconds",
            "End time of the last successful scan; 0 before the first.",
            health.last_success_at,
        )
        yield _gauge(
            "cts_exporter_last_scan_duration_seconds",
            "Duration of the last scan, successful or not.",
            health.last_duration,
        )
        yield _gauge(
            "cts_exporter_scanned_jobs",
            "Jobs listed by the last successful scan.",
            len(snapshot.jobs) if snapshot else 0,
        )
        yield _gauge(
            "cts_exporter_scan_pages",
            "List requests made by the last successful scan.",
            snapshot.pages if snapshot else 0,
        )
        yield _gauge(
            "cts_exporter_scan_truncated",
            "1 when the job cap cut the last successful scan short.",
            float(snapshot.truncated) if snapshot else 0.0,
        )
        yield _gauge(
            "cts_exporter_unreadable_jobs",
            "Jobs of the last scan left out because their state or times could not be read.",
            snapshot.unreadable_jobs if snapshot else 0,
        )
        if health.admin_mode is not None:
            yield _gauge(
                "cts_exporter_admin_mode",
                "1 when all users' jobs are scanned, 0 when only the token owner's.",
                float(health.admin_mode),
            )
        if health.clock_skew is not None:
            yield _gauge(
                "cts_exporter_clock_skew_seconds",
                "The exporter's clock minus the CTS server time.",
                health.clock_skew,
            )
        build = GaugeMetricFamily(
            "cts_exporter_build_info", "The exporter's version.", labels=["version"]
        )
        build.add_metric([__version__], 1)
        yield build
        if health.cts_version is not None:
            cts = GaugeMetricFamily(
                "cts_info", "The CTS version last seen.", labels=["version", "git_hash"]
            )
            cts.add_metric([health.cts_version, health.cts_git_hash], 1)
            yield cts


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


_JOBS_HELP = "Jobs in the look-back window by CTS state."
_IMPORT_JOBS_HELP = "Completed jobs in the look-back window by import status."
_LAG_HELP = "Age since completion of the oldest import not finished yet; 0 when none."
_INVALID_HELP = "Completed jobs whose CSE metadata could not be read."
_DROPPED_HELP = "Per-job series left out by the cap in this render."
_SKEW_HELP = "Completed jobs with a CSE time before the time it follows (clock skew)."


def _empty_picture() -> Iterator[Metric]:
    """Before the first successful scan: every count at zero, so queries have series."""
    jobs = GaugeMetricFamily("cts_jobs", _JOBS_HELP, labels=["state"])
    for state in JOB_STATES:
        jobs.add_metric([state], 0)
    yield jobs
    statuses = GaugeMetricFamily("cts_import_jobs", _IMPORT_JOBS_HELP, labels=["status"])
    for status in ImportStatus:
        statuses.add_metric([status.value], 0)
    yield statuses
    yield _gauge("cts_exporter_job_series_dropped", _DROPPED_HELP, 0)


def _picture(snapshot: Snapshot, now: float) -> Iterator[Metric]:
    jobs = GaugeMetricFamily("cts_jobs", _JOBS_HELP, labels=["state"])
    for state, count in snapshot.state_counts.items():
        jobs.add_metric([state], count)
    yield jobs

    statuses = GaugeMetricFamily("cts_import_jobs", _IMPORT_JOBS_HELP, labels=["status"])
    for status, count in snapshot.status_counts.items():
        statuses.add_metric([status.value], count)
    yield statuses

    oldest = snapshot.oldest_pending_completion
    yield _gauge(
        "cts_import_lag_seconds", _LAG_HELP, 0.0 if oldest is None else max(now - oldest, 0)
    )

    pending = GaugeMetricFamily(
        "cts_import_oldest_pending_timestamp_seconds",
        "Waiting: completion time of the oldest waiting job. "
        "Running: start time of the oldest running import.",
        labels=["status"],
    )
    if snapshot.oldest_waiting_completion is not None:
        pending.add_metric(["waiting"], snapshot.oldest_waiting_completion)
    if snapshot.oldest_running_start is not None:
        pending.add_metric(["running"], snapshot.oldest_running_start)
    yield pending

    yield _gauge("cts_import_invalid_metadata_jobs", _INVALID_HELP, snapshot.invalid_metadata)
    yield _gauge("cts_import_clock_skew_jobs", _SKEW_HELP, snapshot.skewed)


_LAG = "cts_import_job_lag_seconds"
_LAG_JOB_HELP = (
    "Per completed job: outcome time minus completion time, or now minus completion time "
    "while not finished."
)
_SINCE = "cts_import_job_status_timestamp_seconds"
_SINCE_HELP = "Per completed job: when it entered its import status."
_TRANSITION = "cts_job_last_transition_timestamp_seconds"
_TRANSITION_HELP = "Per job in the window: time of its last state transition."
_DROPPED = "cts_exporter_job_series_dropped"


def _job_series(snapshot: Snapshot, now: float, cap: int) -> Iterator[Metric]:
    """One series per job, problems first, up to ``cap`` per family."""
    lag = GaugeMetricFamily(_LAG, _LAG_JOB_HELP, labels=[*JOB_LABELS, "status"])
    since = GaugeMetricFamily(_SINCE, _SINCE_HELP, labels=[*JOB_LABELS, "status"])
    for job in snapshot.imports[:cap]:
        view = job.view
        assert view is not None and job.completed_at is not None
        labels = [job.id, job.user, job.cluster, job.image, view.status.value]
        if view.latency is not None:
            lag.add_metric(labels, view.latency)
        else:
            lag.add_metric(labels, _age(job.completed_at, now))
        since.add_metric(labels, view.since)
    yield lag
    yield since

    transitions = GaugeMetricFamily(_TRANSITION, _TRANSITION_HELP, labels=[*JOB_LABELS, "state"])
    for job in snapshot.jobs[:cap]:
        transitions.add_metric(
            [job.id, job.user, job.cluster, job.image, job.state], job.last_transition
        )
    yield transitions
    yield _gauge(_DROPPED, _DROPPED_HELP, _dropped(snapshot, cap))


def _age(completed_at: float, now: float) -> float:
    """An unfinished import's lag; never negative, even when the CTS's clock runs ahead."""
    return max(now - completed_at, 0.0)


def _dropped(snapshot: Snapshot, cap: int) -> int:
    return max(len(snapshot.imports) - cap, 0) + max(len(snapshot.jobs) - cap, 0)


class JobSeriesText:
    """The per-job families of one snapshot, and the count the cap dropped, as exposition text.

    The same samples as ``_job_series``, in the same order. All but the lag of unfinished
    imports stays the same from scrape to scrape, so it is written once, here; ``render`` only
    formats those lags. The text suits both formats: the families are gauges, whose lines the
    classic and OpenMetrics formats write alike; only the HELP escaping differs.
    """

    def __init__(self, snapshot: Snapshot, cap: int) -> None:
        self.snapshot = snapshot
        self.cap = cap
        # The lag family's lines are cut before each unfinished import's value: the chunks
        # between the cuts are fixed, the values are ages, formatted per scrape.
        chunks: list[str] = []
        unfinished: list[float] = []
        lines: list[str] = []
        since: list[str] = []
        for job in snapshot.imports[:cap]:
            view = job.view
            assert view is not None and job.completed_at is not None
            labels = _label_text(_STATUS_LABELS, job, view.status.value)
            since.append(f"{_SINCE}{{{labels}}} {_sample_value(view.since)}\n")
            if view.latency is not None:
                lines.append(f"{_LAG}{{{labels}}} {_sample_value(view.latency)}\n")
            else:
                lines.append(f"{_LAG}{{{labels}}} ")
                chunks.append("".join(lines))
                unfinished.append(job.completed_at)
                lines = ["\n"]
        chunks.append("".join(lines))
        self._lag_start = chunks[0]
        self._lag_rest = list(zip(unfinished, chunks[1:], strict=True))
        self._since = "".join(since)
        self._transitions = "".join(
            f"{_TRANSITION}{{{_label_text(_STATE_LABELS, job, job.state)}}} "
            f"{_sample_value(job.last_transition)}\n"
            for job in snapshot.jobs[:cap]
        )
        self._dropped = f"{_DROPPED} {_sample_value(_dropped(snapshot, cap))}\n"

    def render(self, now: float, openmetrics: bool) -> str:
        """The families' text with the ages of unfinished imports measured at ``now``."""
        parts = [_header(_LAG, _LAG_JOB_HELP, openmetrics), self._lag_start]
        for completed_at, after in self._lag_rest:
            parts.append(_sample_value(_age(completed_at, now)))
            parts.append(after)
        parts += (
            _header(_SINCE, _SINCE_HELP, openmetrics),
            self._since,
            _header(_TRANSITION, _TRANSITION_HELP, openmetrics),
            self._transitions,
            _header(_DROPPED, _DROPPED_HELP, openmetrics),
            self._dropped,
        )
        return "".join(parts)


def _label_template(name: str) -> str:
    """A format string for a job's labels plus ``name``, in the sorted order samples use.

    Filled with the escaped job id, user, cluster, image and ``name``'s value, in that order.
    """
    labels = (*JOB_LABELS, name)
    return ",".join(f'{label}="{{{labels.index(label)}}}"' for label in sorted(labels))


_STATUS_LABELS = _label_template("status")
_STATE_LABELS = _label_template("state")


def _label_text(template: str, job: JobRecord, value: str) -> str:
    """A job's labels as a sample writes them inside braces."""
    return template.format(
        *map(_escape_label_value, (job.id, job.user, job.cluster, job.image, value))
    )


def _escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _header(name: str, documentation: str, openmetrics: bool) -> str:
    """A gauge family's HELP and TYPE lines; OpenMetrics also escapes quotes in HELP."""
    documentation = documentation.replace("\\", "\\\\").replace("\n", "\\n")
    if openmetrics:
        documentation = documentation.replace('"', '\\"')
    return f"# HELP {name} {documentation}\n# TYPE {name} gauge\n"


_OPENMETRICS_END = b"# EOF\n"


class _Families(Collector):
    """Families already collected, handed to prometheus-client's writers."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        """The families, as given."""
        return self._families


def _generate(collector: Collector, openmetrics: bool) -> bytes:
    """prometheus-client's rendering of ``collector`` in the chosen format."""
    if openmetrics:
        text: bytes = generate_openmetrics(collector)  # type: ignore[no-untyped-call]
        return text
    return generate_latest(collector)

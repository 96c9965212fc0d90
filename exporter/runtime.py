"""The running exporter: scans on a schedule, serves metrics, stops cleanly on a signal."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import uvicorn
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from exporter.cts import CtsError, ErrorReason, RetryPolicy, TokenSource, client_for
from exporter.imports import ImportStatus, parse_time
from exporter.metrics import ExporterMetrics
from exporter.scan import OutcomeTracker, ScanOutcome, build_snapshot, list_window
from exporter.server import EmbeddedServer, create_app, listening_socket
from exporter.settings import ExporterSettings, split_address
from exporter.webconfig import WebConfig, load_web_config

log = logging.getLogger(__name__)


class Exporter:
    """Scans the CTS and keeps the metrics that describe what the last good scan saw."""

    def __init__(
        self,
        settings: ExporterSettings,
        cts_url: str,
        token: TokenSource,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.settings = settings
        self.web = WebConfig()
        if settings.web_config_file is not None:
            self.web = load_web_config(settings.web_config_file)
        self.metrics = ExporterMetrics(settings.max_job_series)
        self.client = client_for(
            settings, cts_url, token, retry=retry, on_request=self.metrics.observe_request
        )
        self._tracker = OutcomeTracker()
        self._scan_task: asyncio.Task[None] | None = None
        self._stopping = False

    async def scan(self) -> None:
        """Run one scan; a failure is counted and logged, never raised."""
        self._scan_task = asyncio.current_task()
        started = time.time()
        outcome = ScanOutcome()
        try:
            async with asyncio.timeout(self.settings.scan_timeout):
                admin = await self._contact()
                with _paused_cycle_collector():
                    await list_window(
                        self.client,
                        admin=admin,
                        now=datetime.fromtimestamp(started, UTC),
                        lookback=timedelta(seconds=self.settings.lookback),
                        page_size=self.settings.page_size,
                        max_jobs=self.settings.max_jobs,
                        outcome=outcome,
                    )
        except CtsError as error:
            self._fail(error.reason, str(error), started, outcome)
            return
        except TimeoutError:
            message = f"scan did not finish within {self.settings.scan_timeout:g}s"
            self._fail("timeout", message, started, outcome)
            return
        except asyncio.CancelledError:
            if not self._stopping:
                raise
            # Cancelled by serve() on SIGTERM: an expected end, not a failure for the scheduler
            # to report with a traceback.
            log.info("scan abandoned after %d page(s): the exporter is stopping", outcome.pages)
            return
        except Exception as error:
            # A defect, most likely met through a CTS answer nobody foresaw. Counting it keeps
            # last_scan_success honest; the traceback is for whoever fixes it.
            log.exception("scan failed on an unexpected error")
            self._fail("payload", f"unexpected {type(error).__name__}", started, outcome)
            return
        finally:
            self._scan_task = None

        finished = time.time()
        with _paused_cycle_collector():
            snapshot = build_snapshot(outcome, started=started, finished=finished)
        self.metrics.scan_succeeded(snapshot, self._tracker.new_outcomes(snapshot))
        counts = snapshot.status_counts
        log.info(
            "scan ok: %d jobs, %d page(s), %.2fs; imports waiting %d, running %d, error %d%s",
            len(snapshot.jobs),
            snapshot.pages,
            snapshot.duration,
            counts[ImportStatus.WAITING],
            counts[ImportStatus.RUNNING],
            counts[ImportStatus.ERROR],
            "; truncated at the job cap" if snapshot.truncated else "",
        )

    async def _contact(self) -> bool:
        """Read the CTS's version and clock and the token's roles; True for an admin token."""
        service = await self.client.service_info()
        health = self.metrics.health
        health.cts_version, health.cts_git_hash = service.version, service.git_hash
        server_time = parse_time(service.server_time)
        health.clock_skew = None if server_time is None else time.time() - server_time

        identity = await self.client.whoami()
        if identity.is_admin != health.admin_mode:
            if identity.is_admin:
                log.info("the token is a CTS admin's: scanning every user's jobs")
            else:
                log.warning(
                    "the token is not a CTS admin's: only the jobs of user %s are visible",
                    identity.user,
                )
            health.admin_mode = identity.is_admin
        return identity.is_admin

    def _fail(
        self, reason: ErrorReason, message: str, started: float, outcome: ScanOutcome
    ) -> None:
        self.metrics.scan_failed(reason, message, time.time() - started)
        snapshot = self.metrics.snapshot
        kept = (
            "no earlier scan to show"
            if snapshot is None
            else f"still serving the scan of {time.time() - snapshot.finished_at:.0f}s ago"
        )
        retry = "fix the token; " if reason == "auth" else ""
        log.warning(
            "scan failed (%s) after %d page(s): %s; %s; %snext try in %gs",
            reason,
            outcome.pages,
            message,
            kept,
            retry,
            self.settings.scan_interval,
        )

    async def serve(self) -> int:
        """Scan every interval and serve ``/metrics`` until SIGTERM or SIGINT; the exit code."""
        host, port = split_address(self.settings.listen_address)
        try:
            listener = listening_socket(host, port)
        except OSError as error:
            log.error("cannot listen on %s: %s", self.settings.listen_address, error.strerror)
            return 1

        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stopping.set)

        server = EmbeddedServer(
            uvicorn.Config(
                create_app(self.metrics, self.web.users),
                log_config=None,
                access_log=False,
                lifespan="off",
                **self.web.uvicorn_options(),
            )
        )
        serving = asyncio.create_task(server.serve(sockets=[listener]))
        scheduler = AsyncIOScheduler(timezone=UTC)
        scheduler.add_job(
            self.scan,
            "interval",
            seconds=self.settings.scan_interval,
            next_run_time=datetime.now(UTC),
            max_instances=1,
            coalesce=True,
            misfire_grace_time=None,
        )
        scheduler.start()
        log.info(
            "serving metrics on %s://%s/metrics%s; scanning every %gs",
            "https" if self.web.tls else "http",
            self.settings.listen_address,
            " behind basic auth" if self.web.users else "",
            self.settings.scan_interval,
        )

        stop_requested = asyncio.create_task(stopping.wait())
        await asyncio.wait([serving, stop_requested], return_when=asyncio.FIRST_COMPLETED)
        log.info("stopping")
        scheduler.shutdown(wait=False)
        self._stopping = True
        if self._scan_task is not None:
            self._scan_task.cancel()
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await serving
        stop_requested.cancel()
        await self.client.aclose()
        return 0


@contextlib.contextmanager
def _paused_cycle_collector() -> Iterator[None]:
    """Keep Python's cycle collector out of a scan's way.

    A scan allocates hundreds of thousands of short-lived, acyclic objects (decoded pages,
    records) while the last snapshot's as many stay alive, so the collector would walk them all
    again and again: a third of a 100,000-job scan's CPU. Reference counting still frees what
    the scan drops; cycles wait for the collector's next run after the scan.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()

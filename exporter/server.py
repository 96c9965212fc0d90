"""The exporter's HTTP endpoints: ``/metrics``, a landing page at ``/`` and ``/healthz``."""

from __future__ import annotations

import html
import time
from collections.abc import Mapping

from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.openmetrics.exposition import (
    CONTENT_TYPE_LATEST as OPENMETRICS_CONTENT_TYPE,
)
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import Route

from exporter import __version__
from exporter.metrics import ExporterMetrics
from exporter.webconfig import BasicAuth


def create_app(
    metrics: ExporterMetrics, basic_auth_users: Mapping[str, bytes] | None = None
) -> Starlette:
    """The ASGI application serving ``metrics``, behind basic auth when users are given."""

    async def serve_metrics(request: Request) -> Response:
        # Rendering reads only the last snapshot, so it never waits on a scan in progress.
        # Prometheus asks for OpenMetrics first, so both formats take the same fast path.
        if "application/openmetrics-text" in request.headers.get("accept", ""):
            return Response(metrics.render(openmetrics=True), media_type=OPENMETRICS_CONTENT_TYPE)
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    async def landing(request: Request) -> Response:
        return HTMLResponse(_landing_page(metrics))

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    return Starlette(
        routes=[
            Route("/metrics", serve_metrics),
            Route("/", landing),
            Route("/healthz", healthz),
        ],
        middleware=[Middleware(BasicAuth, users=basic_auth_users)] if basic_auth_users else [],
    )


def _landing_page(metrics: ExporterMetrics) -> str:
    health = metrics.health
    snapshot = metrics.snapshot
    if snapshot is None:
        picture = "No scan has succeeded yet."
    else:
        age = time.time() - snapshot.finished_at
        picture = (
            f"Last successful scan {age:.0f}s ago: {len(snapshot.jobs)} jobs in "
            f"{snapshot.pages} page(s), {snapshot.duration:.2f}s."
        )
    if health.last_success:
        outcome = "The last scan succeeded."
    elif health.last_error:
        outcome = f"The last scan failed: {html.escape(health.last_error)}"
    else:
        outcome = "The first scan has not finished yet."
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        "<title>CTS import exporter</title></head><body>"
        f"<h1>CTS import exporter {__version__}</h1>"
        f"<p>{outcome}</p><p>{html.escape(picture)}</p>"
        "<p><a href='/metrics'>Metrics</a> · <a href='/healthz'>Health</a></p>"
        "</body></html>"
    )

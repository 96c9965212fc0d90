"""The exporter's HTTP endpoints: ``/metrics``, a landing page at ``/`` and ``/healthz``."""

from __future__ import annotations

import contextlib
import html
import socket
import time
from collections.abc import Iterator, Mapping

import uvicorn
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


class EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves signals to the program that embeds it.

    uvicorn re-raises a captured SIGTERM once it has shut down, which would end the process
    with the signal's status instead of a clean exit.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Capture nothing: the embedding program handles SIGTERM and SIGINT."""
        yield


def listening_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket, bound before anything else starts so a busy port fails fast."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP by name: asyncio sets TCP_NODELAY only on sockets that say so, and without
    # it a kept-alive client waits ~40 ms on every request after the first.
    listener = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError:
        listener.close()
        raise
    listener.listen(128)
    listener.setblocking(False)
    return listener

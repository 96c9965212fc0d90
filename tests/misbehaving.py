"""A CTS stand-in on 127.0.0.1 that can misbehave byte by byte, and helpers to read metrics.

The stand-in speaks just enough HTTP/1.1 to serve the GET endpoints the exporter reads (``/``,
``/whoami``, ``/admin/jobs``, ``/jobs``), pages jobs as the CTS does, and records every request.
Faults are queued per path prefix and decide what happens to the next matching requests: an
error status, a raw body, a stall, a drip, a connection cut mid-body or closed at once. It runs
its own event loop in a thread, so the exporter under test may live in the test's loop or in
another process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from tests import jobs

TOKEN = "tok-7f3e9c1d2b-admin-secret"


# ---- jobs as the CTS sends them -------------------------------------------------------------


def ago(seconds: float) -> datetime:
    """The moment so many seconds before now."""
    return datetime.now(UTC) - timedelta(seconds=seconds)


def job(
    job_id: str,
    *,
    completed: datetime | None = None,
    state: str = "complete",
    user: str = "alice",
    **cse: datetime | str,
) -> dict[str, Any]:
    """A list row for a job that reached ``state`` at ``completed`` (ten minutes ago unless
    given) with the given CSE keys, named by suffix as in ``tests.jobs.job``."""
    return jobs.job(job_id, state=state, last=completed or ago(600), user=user, **cse)


def _last_transition_ms(row: object) -> int | None:
    """A row's last transition time in milliseconds, None when the row has no readable one."""
    try:
        text = row["transition_times"][-1]["time"]  # type: ignore[index]
        return int(datetime.fromisoformat(text).timestamp() * 1000)
    except (KeyError, IndexError, TypeError, ValueError, OverflowError):
        return None


# ---- faults ---------------------------------------------------------------------------------


@dataclass
class Status:
    """Answer with this status, a CTS-style error body unless ``body`` is given, and headers."""

    code: int
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Body:
    """Answer 200 with exactly these bytes."""

    raw: bytes
    content_type: str = "application/json"


@dataclass
class Stall:
    """Read the request and answer nothing until the stand-in stops or ``release`` is set;
    after a release, answer normally."""

    release: threading.Event = field(default_factory=threading.Event)


@dataclass
class Drip:
    """Answer normally, sending the body one byte every ``interval`` seconds."""

    interval: float = 0.05


@dataclass
class Cut:
    """Announce the full body, send ``after_bytes`` of it, then close the connection."""

    after_bytes: int = 10


@dataclass
class Hangup:
    """Close the connection without answering."""


Fault = Status | Body | Stall | Drip | Cut | Hangup


@dataclass
class Seen:
    """A request the stand-in received."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    at: float = field(default_factory=time.monotonic)


class CtsStandIn:
    """A CTS on 127.0.0.1 with scriptable faults; use as a context manager."""

    def __init__(
        self,
        *,
        port: int = 0,
        tls: ssl.SSLContext | None = None,
        admin: bool = True,
        echo_auth_in_errors: bool = False,
    ) -> None:
        self.jobs: list[Any] = []
        self.token = TOKEN
        self.admin = admin
        self.skew = 0.0
        self.echo_auth_in_errors = echo_auth_in_errors
        self.seen: list[Seen] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self.on_list: Callable[[Seen], None] | None = None
        self.request_arrived = threading.Event()
        self._faults: list[tuple[str, Fault, int | None]] = []
        self._lock = threading.Lock()
        self._port = port
        self._tls = tls
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._stop = asyncio.Event()
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}

    # -- lifecycle

    def __enter__(self) -> CtsStandIn:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Close the listener and every open connection, and end the thread."""
        if not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _start(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self._port))
        self._server = await asyncio.start_server(self._connection, sock=listener, ssl=self._tls)
        self._port = listener.getsockname()[1]

    async def _close(self) -> None:
        self._stop.set()
        assert self._server is not None
        self._server.close()
        for writer in self._connections.values():
            writer.close()
        if self._connections:
            await asyncio.wait(list(self._connections), timeout=2)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 2)

    @property
    def port(self) -> int:
        """The port the stand-in listens on."""
        return self._port

    @property
    def url(self) -> str:
        """The base URL to give the exporter."""
        scheme = "https" if self._tls else "http"
        return f"{scheme}://127.0.0.1:{self._port}"

    # -- scripting

    def fail(self, path: str, fault: Fault, times: int | None = None) -> None:
        """Apply ``fault`` to the next ``times`` requests whose path starts with ``path``
        (every one when ``times`` is None), ahead of faults queued later."""
        with self._lock:
            self._faults.append((path, fault, times))

    def heal(self) -> None:
        """Drop every queued fault."""
        with self._lock:
            self._faults.clear()

    def requests(self, path: str | None = None) -> list[Seen]:
        """Requests seen so far, all or those for exactly ``path``."""
        with self._lock:
            return [seen for seen in self.seen if path is None or seen.path == path]

    def _take_fault(self, path: str) -> Fault | None:
        with self._lock:
            for position, (prefix, fault, times) in enumerate(self._faults):
                if not path.startswith(prefix):
                    continue
                if times is not None:
                    if times <= 1:
                        del self._faults[position]
                    else:
                        self._faults[position] = (prefix, fault, times - 1)
                return fault
        return None

    # -- HTTP

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections[task] = writer
        try:
            while not self._stop.is_set():
                request = await self._read_request(reader)
                if request is None:
                    break
                keep_open = await self._answer(request, writer)
                if not keep_open:
                    break
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            self._connections.pop(task, None)
            writer.close()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await writer.wait_closed()

    async def _read_request(self, reader: asyncio.StreamReader) -> Seen | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            return None
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        if length:
            await reader.readexactly(length)
        parts = urlsplit(target)
        seen = Seen(method, parts.path, dict(parse_qsl(parts.query)), headers)
        with self._lock:
            self.seen.append(seen)
        self.request_arrived.set()
        return seen

    async def _answer(self, request: Seen, writer: asyncio.StreamWriter) -> bool:
        """Write the answer to one request; False when the connection must close."""
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            fault = self._take_fault(request.path)
            if isinstance(fault, Hangup):
                return False
            if isinstance(fault, Stall):
                while not fault.release.is_set():
                    if self._stop.is_set():
                        return False
                    await asyncio.sleep(0.02)
                fault = None
            if isinstance(fault, Status):
                body = fault.body if fault.body is not None else _error_body(fault.code, "")
                await _write(writer, fault.code, body, headers=fault.headers)
                return True
            if isinstance(fault, Body):
                await _write(writer, 200, fault.raw, content_type=fault.content_type)
                return True

            status, body = self._route(request)
            if isinstance(fault, Cut):
                await _write(writer, status, body[: fault.after_bytes], length=len(body))
                return False
            if isinstance(fault, Drip):
                await _write(writer, status, b"", length=len(body))
                for byte in body:
                    if self._stop.is_set():
                        return False
                    writer.write(bytes([byte]))
                    await writer.drain()
                    await asyncio.sleep(fault.interval)
                return True
            await _write(writer, status, body)
            return True
        finally:
            self.in_flight -= 1

    def _route(self, request: Seen) -> tuple[int, bytes]:
        if request.method != "GET":
            return 405, _error_body(405, "only GET here")
        authorization = request.headers.get("authorization", "")
        if authorization != f"Bearer {self.token}":
            detail = f"invalid token: {authorization}" if self.echo_auth_in_errors else ""
            return 401, _error_body(401, detail, appcode=10020)
        if request.path == "/":
            now = datetime.now(UTC) + timedelta(seconds=self.skew)
            return 200, _json(
                {
                    "service_name": "CDM Task Service",
                    "version": "0.1.0-prototype6",
                    "git_hash": "0123abc",
                    "server_time": jobs.cts_time(now),
                    "notes": ["a stand-in"],
                }
            )
        if request.path == "/whoami":
            roles = ["full_admin"] if self.admin else []
            return 200, _json({"user": "monitor", "roles": roles, "allowed_paths": []})
        if request.path in ("/admin/jobs", "/jobs"):
            if self.on_list is not None:
                self.on_list(request)
            return 200, _json({"jobs": self._page(request.query)})
        return 404, _error_body(404, f"no endpoint {request.path}")

    def _page(self, query: dict[str, str]) -> list[Any]:
        """Rows in [after, before), newest last transition first, at most ``limit``."""
        after = _query_ms(query.get("after"))
        before = _query_ms(query.get("before"))
        limit = int(query.get("limit", "1000"))
        chosen = []
        for row in self.jobs:
            moment = _last_transition_ms(row)
            if moment is not None and (
                (after is not None and moment < after) or (before is not None and moment >= before)
            ):
                continue
            chosen.append(row)
        chosen.sort(key=lambda row: -(_last_transition_ms(row) or 0))
        return chosen[:limit]


def _query_ms(value: str | None) -> int | None:
    return None if value is None else int(datetime.fromisoformat(value).timestamp() * 1000)


def _json(value: object) -> bytes:
    return json.dumps(value).encode()


def _error_body(code: int, message: str, appcode: int | None = None) -> bytes:
    error: dict[str, object] = {"httpcode": code, "httpstatus": "Error", "message": message}
    if appcode is not None:
        error["appcode"] = appcode
    return _json({"error": error})


async def _write(
    writer: asyncio.StreamWriter,
    status: int,
    body: bytes,
    *,
    content_type: str = "application/json",
    headers: dict[str, str] | None = None,
    length: int | None = None,
) -> None:
    lines = [
        f"HTTP/1.1 {status} X",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body) if length is None else length}",
        *(f"{name}: {value}" for name, value in (headers or {}).items()),
    ]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
    await writer.drain()


def http_date(moment: datetime) -> str:
    """A time as an HTTP date, for ``Retry-After``."""
    return format_datetime(moment.astimezone(UTC), usegmt=True)


@contextlib.contextmanager
def unaccepting_port() -> Iterator[int]:
    """A loopback port whose listener never accepts and whose queue is full, so a new
    connection hangs in the TCP handshake until the client gives up."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(8):
            filler = socket.socket()
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
            fillers.append(filler)
        yield port
    finally:
        for filler in fillers:
            filler.close()
        listener.close()

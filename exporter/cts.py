"""Reading the CTS over HTTP: the few GET endpoints the exporter needs, and nothing else.

The exporter's token is a CTS administrator's and could change jobs, so this client offers
GET requests only. Every failure becomes a CtsError whose ``reason`` is one of a closed set
(the label of ``cts_exporter_scan_errors_total``) and whose message names the endpoint and the
cause, never the token.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import httpx
import orjson
import pydantic

if TYPE_CHECKING:
    from exporter.settings import ExporterSettings

log = logging.getLogger(__name__)

ErrorReason = Literal["connect", "timeout", "auth", "http", "payload"]
ERROR_REASONS: tuple[ErrorReason, ...] = ("connect", "timeout", "auth", "http", "payload")

ADMIN_ROLE = "full_admin"

# Every state a CTS job can be in; the first seven are the normal path, in order.
JOB_STATES = (
    "created",
    "download_submitted",
    "job_submitting",
    "job_submitted",
    "upload_submitting",
    "upload_submitted",
    "complete",
    "canceling",
    "canceled",
    "error_processing_submitting",
    "error_processing_submitted",
    "error",
)

Model = TypeVar("Model", bound="pydantic.BaseModel")
Body = TypeVar("Body")


class CtsError(Exception):
    """A CTS call that failed; ``reason`` says which kind of failure it was."""

    def __init__(self, reason: ErrorReason, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.reason: ErrorReason = reason
        self.status = status


# ---- payloads -------------------------------------------------------------------------------
# Jobs are decoded here and read field by field in exporter.scan.read_job, so that a job with an
# unreadable field is set aside on its own; the small service payloads are pydantic models.
# Only the fields the exporter reads matter; the CTS sends many more, which are ignored.


class _Payload(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="ignore", frozen=True)


@dataclass(frozen=True)
class JobPage:
    """The body of ``GET /admin/jobs`` and ``GET /jobs``: its rows, decoded but not yet read.

    Rows are read one by one later (``exporter.scan.read_job``), so that a row that is not a
    readable job is set aside and counted instead of failing the page: one bad job must not
    stop the exporter from seeing every other job for as long as it stays in the window.
    Decoding with orjson and reading only the fields the exporter uses costs less than half of
    what validating every row with a model did, at 100,000 jobs a scan.
    """

    rows: list[object]

    @property
    def size(self) -> int:
        """Rows the CTS sent, readable or not: what the page's limit counts."""
        return len(self.rows)


class PayloadError(ValueError):
    """A 2xx body that is not what the endpoint returns."""


def read_page(body: bytes) -> JobPage:
    """A list endpoint's body; PayloadError unless it is an object with a ``jobs`` list."""
    decoded = _decode_object(body)
    rows = decoded.get("jobs")
    if not isinstance(rows, list):
        raise PayloadError("unexpected body: no list of jobs")
    return JobPage(rows)


def read_job_body(body: bytes) -> dict[str, Any]:
    """A single-job endpoint's body, decoded; PayloadError unless it is a JSON object."""
    return _decode_object(body)


def _decode_object(body: bytes) -> dict[str, Any]:
    try:
        decoded = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise PayloadError(f"body is not JSON ({str(error)[:80]})") from None
    if not isinstance(decoded, dict):
        raise PayloadError(f"unexpected body: a JSON {type(decoded).__name__}, not an object")
    return decoded


def _read_model(model: type[Model]) -> Callable[[bytes], Model]:
    """A body reader for a small pydantic payload."""

    def read(body: bytes) -> Model:
        try:
            return model.model_validate_json(body)
        except pydantic.ValidationError as error:
            raise PayloadError(_describe(error)) from None

    return read


class ServiceInfo(_Payload):
    """The body of ``GET /``."""

    service_name: str
    version: str = ""
    git_hash: str = ""
    server_time: str = ""


class Identity(_Payload):
    """The body of ``GET /whoami``."""

    user: str
    roles: list[str] = []

    @property
    def is_admin(self) -> bool:
        """True when the token may list every user's jobs."""
        return ADMIN_ROLE in self.roles


# ---- the token ------------------------------------------------------------------------------


class TokenSource:
    """The CTS token, from a file that is read again whenever it changes, or a fixed value.

    Rotating the token means replacing the file; the next request uses the new one.
    """

    def __init__(self, path: Path | None = None, value: str | None = None) -> None:
        if path is None and not value:
            raise ValueError("a CTS token is needed: give a token file or a token value")
        if value:
            _check_token(value, "the CTS token")
        self._path = path
        self._token = value or ""
        self._stamp: tuple[float, int] | None = None
        if path is not None:
            self.current()

    def current(self) -> str:
        """The token to send now; raises TokenError when the file cannot be used."""
        if self._path is None:
            return self._token
        try:
            stat = self._path.stat()
            stamp = (stat.st_mtime, stat.st_size)
            if stamp != self._stamp:
                token = self._path.read_text(encoding="utf-8").strip()
                if not token:
                    raise TokenError(f"token file {self._path} is empty")
                _check_token(token, f"token file {self._path}")
                self._token, self._stamp = token, stamp
        except OSError as error:
            raise TokenError(f"cannot read token file {self._path}: {error.strerror}") from None
        except UnicodeDecodeError:
            raise TokenError(f"token file {self._path} is not UTF-8 text") from None
        return self._token


class TokenError(ValueError):
    """The token file is missing, empty or unreadable, or the token is not one."""


def _check_token(token: str, source: str) -> None:
    """Refuse a token that cannot travel in a header.

    The HTTP library would reject it on every request with an error that quotes the header,
    token included, into the logs.
    """
    if not (token.isascii() and token.isprintable()) or any(c.isspace() for c in token):
        raise TokenError(f"{source} holds spaces, control or non-ASCII characters in the token")


def scrub(message: str, token: str) -> str:
    """``message`` with every occurrence of ``token`` masked."""
    return message.replace(token, "***") if len(token) >= 4 else message


# ---- the client -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry a GET that may succeed on a second try."""

    attempts: int = 4
    first_backoff: float = 0.5
    max_backoff: float = 10.0


RequestObserver = Callable[[str, float], None]


class CtsClient:
    """An async client for the CTS's read-only endpoints."""

    def __init__(
        self,
        base_url: str,
        token: TokenSource,
        *,
        timeout: float = 30.0,
        ca_bundle: Path | None = None,
        max_body_bytes: int = 256 * 1024 * 1024,
        retry: RetryPolicy | None = None,
        on_request: RequestObserver | None = None,
    ) -> None:
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            timeout=timeout,
            verify=trust_store(ca_bundle),
            follow_redirects=False,
            headers={"Accept": "application/json"},
        )
        self._token = token
        self._max_body_bytes = max_body_bytes
        self._retry = retry or RetryPolicy()
        self._on_request = on_request

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def service_info(self) -> ServiceInfo:
        """``GET /``: the service's name, version and clock."""
        return await self._get("/", _read_model(ServiceInfo))

    async def whoami(self) -> Identity:
        """``GET /whoami``: whose token this is and whether it is an admin's."""
        return await self._get("/whoami", _read_model(Identity))

    async def list_jobs(
        self, *, admin: bool, after: datetime, before: datetime | None, limit: int
    ) -> JobPage:
        """One page of jobs whose last transition is in [after, before), newest first."""
        params = {"after": _iso(after), "limit": str(limit)}
        if before is not None:
            params["before"] = _iso(before)
        return await self._get("/admin/jobs" if admin else "/jobs", read_page, params)

    async def job_status(self, job_id: str) -> dict[str, Any]:
        """``GET /jobs/{id}/status``: one job, for its owner only, decoded but not yet read."""
        return await self._get(
            f"/jobs/{job_id}/status", read_job_body, endpoint="/jobs/{id}/status"
        )

    async def admin_job(self, job_id: str) -> dict[str, Any]:
        """``GET /admin/jobs/{id}``: one job, for an admin, decoded but not yet read."""
        return await self._get(f"/admin/jobs/{job_id}", read_job_body, endpoint="/admin/jobs/{id}")

    async def _get(
        self,
        path: str,
        read: Callable[[bytes], Body],
        params: dict[str, str] | None = None,
        endpoint: str | None = None,
    ) -> Body:
        """GET a path and ``read`` its body, retrying what may pass on a retry."""
        endpoint = endpoint or path
        for attempt in range(1, self._retry.attempts + 1):
            try:
                body = await self._get_once(path, params, endpoint)
            except _Retryable as failure:
                if attempt == self._retry.attempts:
                    raise failure.error from None
                pause = failure.retry_after
                if pause is not None and pause > self._retry.max_backoff:
                    # Waiting that long would spend the scan's deadline asleep and report a
                    # timeout; failing now names the real cause, and the next scan asks again.
                    raise CtsError(
                        failure.error.reason,
                        f"{failure.error}; the CTS asks to wait {pause:.0f}s",
                        failure.error.status,
                    ) from None
                if pause is None:
                    ceiling = self._retry.first_backoff * 2 ** (attempt - 1)
                    pause = random.uniform(0, min(ceiling, self._retry.max_backoff))  # noqa: S311
                log.warning("%s; retrying in %.1fs", failure.error, pause)
                await asyncio.sleep(pause)
                continue
            try:
                return read(body)
            except PayloadError as error:
                raise CtsError("payload", f"GET {endpoint}: {error}") from None
        raise AssertionError("unreachable: the loop returns or raises")

    async def _get_once(self, path: str, params: dict[str, str] | None, endpoint: str) -> bytes:
        """One GET; returns the body of a 2xx answer or raises CtsError or _Retryable."""
        try:
            token = self._token.current()
        except TokenError as error:
            raise CtsError("auth", str(error)) from None
        headers = {"Authorization": f"Bearer {token}"}
        started = time.perf_counter()
        try:
            async with self._http.stream("GET", path, params=params, headers=headers) as answer:
                body = await self._read_capped(answer, endpoint)
        except httpx.TimeoutException as error:
            failure = f"GET {endpoint}: {_kind(error)}"
            raise _Retryable(CtsError("timeout", scrub(failure, token))) from None
        except (httpx.TransportError, httpx.StreamError) as error:
            if _untrusted_certificate(error):
                # Not a passing fault: retrying would only repeat the refusal.
                failure = f"GET {endpoint}: the CTS's TLS certificate is not trusted ({error})"
                raise CtsError("connect", scrub(failure, token)) from None
            failure = f"GET {endpoint}: {_kind(error)}"
            raise _Retryable(CtsError("connect", scrub(failure, token))) from None
        finally:
            if self._on_request is not None:
                self._on_request(endpoint, time.perf_counter() - started)

        status = answer.status_code
        if 200 <= status < 300:
            return body
        # A proxy may echo the request's headers in its error page.
        failure = scrub(f"GET {endpoint}: HTTP {status}{_cts_message(body)}", token)
        if status in (401, 403):
            raise CtsError("auth", failure, status)
        if status == 429 or status >= 500:
            retry_after = _retry_after(answer.headers.get("Retry-After"))
            raise _Retryable(CtsError("http", failure, status), retry_after)
        raise CtsError("http", failure, status)

    async def _read_capped(self, answer: httpx.Response, endpoint: str) -> bytes:
        """The whole body, refusing one larger than the cap before it fills memory."""
        chunks: list[bytes] = []
        size = 0
        async for chunk in answer.aiter_bytes():
            size += len(chunk)
            if size > self._max_body_bytes:
                raise CtsError(
                    "payload",
                    f"GET {endpoint}: body larger than {self._max_body_bytes} bytes",
                    answer.status_code,
                )
            chunks.append(chunk)
        return b"".join(chunks)


def client_for(
    settings: ExporterSettings,
    url: str,
    token: TokenSource,
    *,
    retry: RetryPolicy | None = None,
    on_request: RequestObserver | None = None,
) -> CtsClient:
    """A client for the CTS at ``url`` with the timeout, CA bundle and body cap of ``settings``."""
    return CtsClient(
        url,
        token,
        timeout=settings.request_timeout,
        ca_bundle=settings.ca_bundle,
        max_body_bytes=settings.max_response_bytes,
        retry=retry,
        on_request=on_request,
    )


class _Retryable(Exception):
    """A failure worth another try, with the server's requested pause if it gave one."""

    def __init__(self, error: CtsError, retry_after: float | None = None) -> None:
        super().__init__(str(error))
        self.error = error
        self.retry_after = retry_after


def trust_store(ca_bundle: Path | None) -> ssl.SSLContext | bool:
    """What verifies the CTS's certificate: the system's CAs, or those of ``ca_bundle``.

    Raises CaBundleError when the bundle cannot be read; verification is never turned off.
    """
    if ca_bundle is None:
        return True
    try:
        return ssl.create_default_context(cafile=str(ca_bundle))
    except ssl.SSLError:
        raise CaBundleError(f"CA bundle {ca_bundle} holds no PEM certificate") from None
    except OSError as error:
        raise CaBundleError(f"cannot read CA bundle {ca_bundle}: {error.strerror}") from None


class CaBundleError(ValueError):
    """The CA bundle file is missing or not a bundle of certificates."""


def _untrusted_certificate(error: BaseException) -> bool:
    """True when a transport error comes from a certificate that failed verification."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def _iso(moment: datetime) -> str:
    """A time as the CTS wants it in a query: ISO-8601 with a zone, to the millisecond."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")


def _retry_after(header: str | None) -> float | None:
    """Seconds to wait from a Retry-After header given in seconds or as an HTTP date."""
    if not header:
        return None
    header = header.strip()
    if header.isascii() and header.isdigit():  # isdigit alone accepts "²", which float refuses
        return float(header)
    try:
        when = email.utils.parsedate_to_datetime(header)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - time.time())


def _cts_message(body: bytes) -> str:
    """The CTS's own explanation from an error body, when it sent one."""
    try:
        error = pydantic.TypeAdapter(dict[str, Any]).validate_json(body).get("error")
    except pydantic.ValidationError:
        return ""
    if not isinstance(error, dict):
        return ""
    parts = [str(error[key]) for key in ("appcode", "message") if error.get(key) not in (None, "")]
    if not parts:
        parts = [str(error.get("httpstatus", ""))]
    return ": " + " ".join(parts)[:300]


def _kind(error: Exception) -> str:
    """A short, token-free description of a transport failure."""
    detail = str(error).strip()
    return f"{type(error).__name__}: {detail[:200]}" if detail else type(error).__name__


def _describe(error: pydantic.ValidationError) -> str:
    """The first validation problem of a body, without echoing large values."""
    first = error.errors(include_url=False, include_input=False)[0]
    where = ".".join(str(part) for part in first["loc"]) or "body"
    return f"unexpected body at {where}: {first['msg']}"

"""The simulated CTS's HTTP interface: the CTS endpoints the project uses and a control API.

Shapes, status codes and app codes follow `shared/cts-api.md`. Every request first brings the
world up to the current time, so a read always sees every event due by then.
"""

from __future__ import annotations

import base64
import hashlib
import math
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from typing import Any, Literal, TypeVar

import orjson
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from exporter import __version__
from exporter.cts import JOB_STATES
from exporter.simulator.faults import FaultMiddleware, FaultRequest, FaultRules
from exporter.simulator.world import (
    CLUSTERS,
    IMAGES,
    TERMINAL_STATES,
    Job,
    MetadataError,
    MetaValue,
    NoSuchJobError,
    World,
    format_ms,
)

CTS_VERSION = "0.1.0-prototype6"
ADMIN_USER = "ctsadmin"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_JOB_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
_REGISTERED_ON = "2026-01-05T17:00:00.000Z"


@dataclass(frozen=True)
class Tokens:
    """Who each token belongs to: one admin and one token per simulated user."""

    admin_token: str
    user_tokens: dict[str, str]
    admin_user: str = ADMIN_USER

    def caller(self, token: str) -> Caller | None:
        """The caller a token identifies, if any."""
        if token == self.admin_token:
            return Caller(self.admin_user, is_admin=True)
        for user, user_token in self.user_tokens.items():
            if token == user_token:
                return Caller(user, is_admin=False)
        return None


@dataclass(frozen=True)
class Caller:
    """An authenticated caller."""

    user: str
    is_admin: bool


class ApiError(Exception):
    """An error answered with the CTS error body."""

    def __init__(
        self,
        status: int,
        appcode: int | None,
        apperror: str | None,
        message: str,
        detail: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.appcode = appcode
        self.apperror = apperror
        self.message = message
        self.detail = detail


def _no_token() -> ApiError:
    return ApiError(401, 10010, "No authentication token", "Authorization header required")


def _unauthorized(message: str) -> ApiError:
    return ApiError(403, 20000, "Unauthorized", message)


def _validation_error(location: str, name: str, message: str, value: object) -> ApiError:
    detail = [{"type": "value_error", "loc": [location, name], "msg": message, "input": value}]
    return ApiError(400, 30010, "Request validation failed", f"{name}: {message}", detail)


def _no_such_job(job_id: str) -> ApiError:
    return ApiError(404, 40040, "No such job", f"No job with ID '{job_id}' exists")


def error_body(error: ApiError) -> bytes:
    """The JSON body the CTS sends with an error."""
    content: dict[str, Any] = {
        "httpcode": error.status,
        "httpstatus": HTTPStatus(error.status).phrase,
        "time": datetime.now(UTC).isoformat(),
        "request_id": str(uuid.uuid4()),
    }
    if error.appcode is not None:
        content["appcode"] = error.appcode
        content["apperror"] = error.apperror
    content["message"] = error.message
    if error.detail is not None:
        content["request_validation_detail"] = error.detail
    return orjson.dumps({"error": content})


def _json(content: object, status: int = 200) -> Response:
    return Response(orjson.dumps(content), status_code=status, media_type="application/json")


def _iso_duration(seconds: int) -> str:
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    parts = (f"{hours}H" if hours else "") + (f"{minutes}M" if minutes else "")
    return "PT" + parts + (f"{secs}S" if secs or not parts else "")


def _short_image_name(job: Job) -> str:
    return job.image.name.rsplit("/", 1)[-1]


def job_status(job: Job) -> dict[str, Any]:
    """A job as `GET /jobs/{id}/status` shows it."""
    status: dict[str, Any] = {
        "id": job.id,
        "user": job.user,
        "admin_meta": job.admin_meta,
        "state": job.state,
        "transition_times": [
            {"state": state, "time": format_ms(ms)} for state, ms in job.transitions
        ],
    }
    return status


def job_preview(job: Job) -> dict[str, Any]:
    """A job as list rows show it: no input file list, no outputs, null fields left out."""
    preview = job_status(job)
    preview["job_input"] = {
        "cluster": job.cluster,
        "image": job.image.reference,
        "params": {
            "input_mount_point": "/in",
            "output_mount_point": "/out",
            "args": ["--threads", str(job.cpus), "--input", "/in"],
        },
        "num_containers": job.num_containers,
        "cpus": job.cpus,
        "memory": job.memory,
        "runtime": _iso_duration(job.runtime_seconds),
        "output_dir": f"cts-data/{job.user}/{_short_image_name(job)}/{job.id}",
    }
    preview["image"] = {
        "name": job.image.name,
        "digest": job.image.digest,
        "tag": job.image.tag,
        "entrypoint": ["/usr/local/bin/run"],
        "registered_by": ADMIN_USER,
        "registered_on": _REGISTERED_ON,
    }
    preview["input_file_count"] = job.input_file_count
    # A job's fate is planned when it arrives; what it produced shows only once it got there.
    if job.state == "complete" and job.cpu_hours is not None:
        preview["cpu_hours"] = job.cpu_hours
    if job.state == "complete" and job.output_file_count is not None:
        preview["output_file_count"] = job.output_file_count
    if job.state == "error" and job.error is not None:
        preview["error"] = job.error
        preview["logpath"] = f"cts-logs/{job.id}/"
    return preview


def job_row(job: Job) -> bytes:
    """A job's list row as JSON, cached on the job until it changes."""
    if job.row_cache is None:
        job.row_cache = orjson.dumps(job_preview(job))
    return job.row_cache


def full_job(job: Job) -> dict[str, Any]:
    """A job as `GET /admin/jobs/{id}` shows it, with inputs, outputs and transition ids."""
    content = job_preview(job)
    content["job_input"]["input_files"] = [
        f"cts-data/{job.user}/inputs/sample_{number:04d}.fa"
        for number in range(job.input_file_count)
    ]
    content["transition_times"] = [
        {"state": state, "time": format_ms(ms), "trans_id": job.trans_id(position),
         "notif_sent": True}
        for position, (state, ms) in enumerate(job.transitions)
    ]
    if "output_file_count" in content:
        output_dir = content["job_input"]["output_dir"]
        content["outputs"] = [
            {"file": f"{output_dir}/result_{number:04d}.tsv",
             "crc64nvme": _fake_checksum(f"{job.id}/{number}")}
            for number in range(content["output_file_count"])
        ]
    content["cleaned"] = job.state in TERMINAL_STATES
    return content


def _fake_checksum(text: str) -> str:
    digest = hashlib.md5(text.encode(), usedforsecurity=False).digest()[:8]
    return base64.b64encode(digest).decode()


def parse_time_param(name: str, value: str) -> int:
    """A list bound as the first whole millisecond not before it, or a 400 error.

    Stored times are whole milliseconds, so `after <= t` and `t < before` for a bound with a
    sub-millisecond fraction hold exactly when they hold for that bound rounded up.
    """
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise _validation_error("query", name, "Input should be a valid datetime", value) from None
    if moment.tzinfo is None:
        raise _validation_error("query", name, "Input should have timezone info", value)
    micros = (moment - _EPOCH) // timedelta(microseconds=1)
    return math.ceil(micros / 1000)


def _limit_param(value: str | None) -> int:
    if value is None:
        return 1000
    try:
        limit = int(value)
    except ValueError:
        raise _validation_error("query", "limit", "Input should be a valid integer",
                                value) from None
    if not 1 <= limit <= 1000:
        raise _validation_error("query", "limit", "Input should be between 1 and 1000", value)
    return limit


class _UpdateAdminMeta(BaseModel):
    model_config = ConfigDict(extra="forbid")

    set_fields: dict[str, str | int | float] = Field(default_factory=dict)
    unset_keys: set[str] = Field(default_factory=set)


class _NewJob(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user: str | None = None
    image: str = IMAGES[0].reference
    cluster: Literal["perlmutter-jaws", "lawrencium-jaws", "kbase"] = "kbase"
    state: str = "complete"
    last_transition: AwareDatetime | None = None


class _ImportWrite(BaseModel):
    model_config = ConfigDict(extra="forbid")

    outcome: Literal["start", "complete", "no_operation", "error"]


class _CseControl(BaseModel):
    model_config = ConfigDict(extra="forbid")

    paused: bool


_Body = TypeVar("_Body", bound=BaseModel)


def _parse_body(model: type[_Body], raw: bytes) -> _Body:
    try:
        return model.model_validate_json(raw or b"{}")
    except ValidationError as error:
        detail = [
            {"type": e["type"], "loc": ["body", *e["loc"]], "msg": e["msg"]}
            for e in error.errors(include_url=False)
        ]
        raise ApiError(400, 30010, "Request validation failed", "Invalid request body",
                       detail) from None


Endpoint = Callable[[Request], Awaitable[Response]]


class SimulatedCts:
    """The Starlette application serving one world with one set of tokens."""

    def __init__(self, world: World, tokens: Tokens, faults: FaultRules | None = None) -> None:
        self.world = world
        self.tokens = tokens
        self.faults = faults or FaultRules()
        routes = [
            Route("/", self.root),
            Route("/whoami", self.whoami),
            Route("/sites", self.sites),
            Route("/admin/jobs", self.admin_list_jobs),
            Route("/admin/jobs/{job_id}", self.admin_get_job),
            Route("/admin/jobs/{job_id}/meta", self.admin_update_meta, methods=["PUT"]),
            Route("/jobs", self.list_jobs),
            Route("/jobs/{job_id}/status", self.job_status),
            Route("/_sim/jobs", self.sim_add_job, methods=["POST"]),
            Route("/_sim/jobs/{job_id}/import", self.sim_write_import, methods=["POST"]),
            Route("/_sim/cse", self.sim_cse, methods=["GET", "POST"]),
            Route("/_sim/faults", self.sim_faults, methods=["GET", "POST", "DELETE"]),
        ]
        starlette = Starlette(
            routes=[Route(r.path, self._guarded(r.endpoint), methods=r.methods)
                    for r in routes],
            exception_handlers={HTTPException: self._http_exception},
        )
        self.app = FaultMiddleware(starlette, self.faults)

    # ----- plumbing -----------------------------------------------------------------------------

    def _guarded(self, endpoint: Any) -> Endpoint:
        """Bring the world up to date, then answer an `ApiError` with the CTS error body."""

        async def guarded(request: Request) -> Response:
            try:
                self.world.advance()
                response: Response = await endpoint(request)
            except ApiError as error:
                return Response(error_body(error), status_code=error.status,
                                media_type="application/json")
            return response

        return guarded

    async def _http_exception(self, request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        error = ApiError(status, None, None, HTTPStatus(status).phrase)
        return Response(error_body(error), status_code=status, media_type="application/json")

    def _caller(self, request: Request) -> Caller | None:
        """Who is calling; a header that is present but wrong fails even where none is needed."""
        header = request.headers.get("authorization")
        if header is None:
            return None
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, 10030, "Invalid authentication header",
                           "Authorization header requires Bearer scheme")
        caller = self.tokens.caller(token.strip())
        if caller is None:
            raise ApiError(401, 10020, "Invalid token", "Invalid token")
        return caller

    def _required_caller(self, request: Request) -> Caller:
        caller = self._caller(request)
        if caller is None:
            raise _no_token()
        return caller

    def _admin(self, request: Request) -> Caller:
        caller = self._required_caller(request)
        if not caller.is_admin:
            raise _unauthorized("Only service administrators may call this method")
        return caller

    def _job(self, request: Request) -> Job:
        job_id: str = request.path_params["job_id"]
        if not 1 <= len(job_id) <= 50 or not set(job_id) <= _JOB_ID_CHARS:
            raise _validation_error("path", "job_id", "String should match pattern '^[\\w-]+$'",
                                    job_id)
        try:
            return self.world.get(job_id)
        except NoSuchJobError:
            raise _no_such_job(job_id) from None

    # ----- CTS endpoints ------------------------------------------------------------------------

    async def root(self, request: Request) -> Response:
        """`GET /`: the service's name, version and clock."""
        self._caller(request)
        return _json({
            "service_name": "CDM Task Service",
            "version": CTS_VERSION,
            "git_hash": "5e1d0c0a" + "0" * 32,
            "server_time": format_ms(int(self.world.clock.now() * 1000)),
            "notes": [f"Simulated by cts-import-exporter {__version__}"],
        })

    async def whoami(self, request: Request) -> Response:
        """`GET /whoami`: the caller and their roles."""
        caller = self._required_caller(request)
        return _json({
            "user": caller.user,
            "roles": ["full_admin"] if caller.is_admin else [],
            "allowed_paths": [f"cts-data/{caller.user}/"],
        })

    async def sites(self, request: Request) -> Response:
        """`GET /sites`: every cluster, all active and available."""
        self._caller(request)
        return _json({"sites": [
            {"cluster": cluster, "active": True, "available": True, "nodes": 16,
             "cpus_per_node": 128, "memory_per_node_gb": 512, "max_runtime_min": 2880}
            for cluster in CLUSTERS
        ]})

    def _list(self, request: Request, user: str | None) -> Response:
        params = request.query_params
        state = params.get("state")
        if state is not None and state not in JOB_STATES:
            raise _validation_error("query", "state", "Input should be a job state", state)
        cluster = params.get("cluster")
        if cluster is not None and cluster not in CLUSTERS:
            raise _validation_error("query", "cluster", "Input should be a cluster", cluster)
        after = params.get("after")
        before = params.get("before")
        jobs = self.world.list_jobs(
            after_ms=None if after is None else parse_time_param("after", after),
            before_ms=None if before is None else parse_time_param("before", before),
            state=state,
            cluster=cluster,
            user=user,
            limit=_limit_param(params.get("limit")),
        )
        body = b'{"jobs":[' + b",".join(job_row(job) for job in jobs) + b"]}"
        return Response(body, media_type="application/json")

    async def admin_list_jobs(self, request: Request) -> Response:
        """`GET /admin/jobs`: every user's jobs, or one `user`'s."""
        self._admin(request)
        return self._list(request, request.query_params.get("user"))

    async def list_jobs(self, request: Request) -> Response:
        """`GET /jobs`: the caller's own jobs."""
        caller = self._required_caller(request)
        return self._list(request, caller.user)

    async def job_status(self, request: Request) -> Response:
        """`GET /jobs/{id}/status`: for the job's owner only, admins included."""
        caller = self._required_caller(request)
        job = self._job(request)
        if job.user != caller.user:
            raise _unauthorized(f"User {caller.user} may not access job {job.id}")
        return _json(job_status(job))

    async def admin_get_job(self, request: Request) -> Response:
        """`GET /admin/jobs/{id}`: the full job."""
        self._admin(request)
        return _json(full_job(self._job(request)))

    async def admin_update_meta(self, request: Request) -> Response:
        """`PUT /admin/jobs/{id}/meta`: set and unset admin metadata keys."""
        self._admin(request)
        job = self._job(request)
        update = _parse_body(_UpdateAdminMeta, await request.body())
        set_fields: dict[str, MetaValue] = dict(update.set_fields)
        try:
            self.world.update_admin_meta(job.id, set_fields, update.unset_keys)
        except MetadataError as error:
            raise ApiError(400, 30001, "Illegal input parameter", str(error)) from None
        return Response(status_code=204)

    # ----- control API --------------------------------------------------------------------------

    async def sim_add_job(self, request: Request) -> Response:
        """`POST /_sim/jobs`: a job the CSE leaves alone, by default completed now."""
        self._admin(request)
        spec = _parse_body(_NewJob, await request.body())
        try:
            job = self.world.add_job(
                user=spec.user or self.world.settings.users[0],
                image=spec.image,
                cluster=spec.cluster,
                state=spec.state,
                last_transition=(None if spec.last_transition is None
                                 else spec.last_transition.timestamp()),
            )
        except ValueError as error:
            raise ApiError(400, 30001, "Illegal input parameter", str(error)) from None
        return _json(full_job(job))

    async def sim_write_import(self, request: Request) -> Response:
        """`POST /_sim/jobs/{id}/import`: write one CSE key now, as the CSE would."""
        self._admin(request)
        job = self._job(request)
        outcome = _parse_body(_ImportWrite, await request.body()).outcome
        self.world.write_import(job.id, outcome)
        return _json(job_status(job))

    async def sim_cse(self, request: Request) -> Response:
        """`GET|POST /_sim/cse`: the simulated CSE's state; POST pauses or resumes it."""
        self._admin(request)
        cse = self.world.cse
        if request.method == "POST":
            control = _parse_body(_CseControl, await request.body())
            if control.paused:
                cse.pause()
            else:
                cse.resume()
        now = self.world.clock.now()
        return _json({
            "paused": cse.paused_by_operator,
            "outage": now < cse.outage_until,
            "queued": len(cse.queue),
            "importing": None if cse.current is None else cse.current.id,
        })

    async def sim_faults(self, request: Request) -> Response:
        """`GET|POST|DELETE /_sim/faults`: list, add or clear fault rules."""
        self._admin(request)
        if request.method == "DELETE":
            self.faults.clear()
            return Response(status_code=204)
        if request.method == "POST":
            self.faults.add(_parse_body(FaultRequest, await request.body()).rules)
        return _json({"rules": self.faults.describe()})

"""Fault injection for the simulated CTS: misbehaviour a proxy or a sick CTS could show.

Rules are an ASGI middleware's business, ahead of authentication, as a proxy would be. Each
rule matches a path prefix and optionally a number of requests, after which it is spent; the
first live rule that matches a request decides what happens to it. The control API (`/_sim/`)
is never affected, so a test can always clear the faults it set.
"""

from __future__ import annotations

import asyncio
import logging
from http import HTTPStatus
from typing import Annotated, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CONTROL_PREFIX = "/_sim/"


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str = Field(default="/", description="path prefix the rule applies to")
    count: int | None = Field(default=None, ge=1, description="requests to affect; none for all")


class StatusFault(_Rule):
    """Answer `status` with `body` (a CTS-style error by default) and extra headers."""

    action: Literal["status"]
    status: int = Field(default=500, ge=200, le=599)
    body: str | None = None
    content_type: str = "application/json"
    headers: dict[str, str] = Field(default_factory=dict)


class DelayFault(_Rule):
    """Wait `seconds`, then answer normally."""

    action: Literal["delay"]
    seconds: float = Field(ge=0)


class BodyFault(_Rule):
    """Answer 200 with `body` repeated `repeat` times: HTML, empty, truncated or huge."""

    action: Literal["body"]
    body: str = ""
    repeat: int = Field(default=1, ge=1, le=10_000_000)
    content_type: str = "application/json"


class DripFault(_Rule):
    """Answer normally but send the body `chunk_bytes` at a time, `interval` seconds apart."""

    action: Literal["drip"]
    chunk_bytes: int = Field(default=64, ge=1)
    interval: float = Field(default=0.1, ge=0)


class DisconnectFault(_Rule):
    """Answer normally but close the connection after `after_bytes` of the body."""

    action: Literal["disconnect"]
    after_bytes: int = Field(default=16, ge=0)


FaultRule = Annotated[
    StatusFault | DelayFault | BodyFault | DripFault | DisconnectFault,
    Field(discriminator="action"),
]


class FaultRequest(BaseModel):
    """The body of `POST /_sim/faults`."""

    model_config = ConfigDict(extra="forbid")

    rules: list[FaultRule] = Field(min_length=1)


class _Countdown:
    """A rule with the requests it may still affect."""

    def __init__(self, rule: FaultRule) -> None:
        self.rule = rule
        self.remaining = rule.count

    def describe(self) -> dict[str, object]:
        return {**self.rule.model_dump(), "remaining": self.remaining}


class FaultRules:
    """The active fault rules, oldest first."""

    def __init__(self) -> None:
        self._rules: list[_Countdown] = []

    def add(self, rules: list[FaultRule]) -> None:
        """Append rules; earlier rules win when several match."""
        self._rules.extend(_Countdown(rule) for rule in rules)

    def clear(self) -> None:
        """Drop every rule."""
        self._rules.clear()

    def describe(self) -> list[dict[str, object]]:
        """The live rules with the requests each may still affect."""
        return [rule.describe() for rule in self._rules]

    def take(self, path: str) -> FaultRule | None:
        """The rule that applies to a request for `path`, spending one of its requests."""
        if path.startswith(CONTROL_PREFIX):
            return None
        for countdown in self._rules:
            if not path.startswith(countdown.rule.path):
                continue
            if countdown.remaining is not None:
                countdown.remaining -= 1
                if countdown.remaining <= 0:
                    self._rules.remove(countdown)
            return countdown.rule
        return None


def _status_body(status: int) -> bytes:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    return orjson.dumps({"error": {"httpcode": status, "httpstatus": phrase,
                                   "message": "Injected fault"}})


class _ClosedMidBody(Exception):
    """Raised to make the server drop the connection after part of a body."""


class FaultMiddleware:
    """Applies the active fault rules to every request before the simulated CTS sees it."""

    def __init__(self, app: ASGIApp, rules: FaultRules) -> None:
        self.app = app
        self.rules = rules

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        rule = self.rules.take(scope["path"]) if scope["type"] == "http" else None
        if rule is None:
            await self.app(scope, receive, send)
        elif isinstance(rule, StatusFault):
            body = rule.body.encode() if rule.body is not None else _status_body(rule.status)
            await _answer(send, rule.status, body, rule.content_type, rule.headers)
        elif isinstance(rule, DelayFault):
            await asyncio.sleep(rule.seconds)
            await self.app(scope, receive, send)
        elif isinstance(rule, BodyFault):
            await _answer(send, 200, rule.body.encode() * rule.repeat, rule.content_type, {})
        elif isinstance(rule, DripFault):
            await self.app(scope, receive, _dripping(send, rule))
        else:
            await _disconnecting(self.app, scope, receive, send, rule)


async def _answer(
    send: Send, status: int, body: bytes, content_type: str, headers: dict[str, str]
) -> None:
    raw_headers = [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(body)).encode()),
        *((name.lower().encode(), value.encode()) for name, value in headers.items()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


def _dripping(send: Send, rule: DripFault) -> Send:
    async def drip(message: Message) -> None:
        if message["type"] != "http.response.body":
            await send(message)
            return
        body: bytes = message.get("body", b"")
        more = message.get("more_body", False)
        for offset in range(0, len(body), rule.chunk_bytes):
            await send({"type": "http.response.body",
                        "body": body[offset:offset + rule.chunk_bytes], "more_body": True})
            await asyncio.sleep(rule.interval)
        if not more:
            await send({"type": "http.response.body", "body": b""})

    return drip


async def _disconnecting(
    app: ASGIApp, scope: Scope, receive: Receive, send: Send, rule: DisconnectFault
) -> None:
    """Send the real response's headers and the first bytes of its body, then stop.

    Returning before the body is complete makes uvicorn close the connection, which the
    client sees as a response cut short; uvicorn's complaint about it is filtered out.
    """
    sent = 0

    async def cut(message: Message) -> None:
        nonlocal sent
        if message["type"] != "http.response.body":
            await send(message)
            return
        body: bytes = message.get("body", b"")
        room = rule.after_bytes - sent
        await send({"type": "http.response.body", "body": body[:room], "more_body": True})
        sent += min(room, len(body))
        if sent >= rule.after_bytes or not message.get("more_body", False):
            raise _ClosedMidBody

    try:
        await app(scope, receive, cut)
    except _ClosedMidBody:
        return


class _QuietIncompleteResponses(logging.Filter):
    """Hides uvicorn's error line for the responses a disconnect rule cuts short on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "without completing response" not in record.getMessage()


def quiet_uvicorn_about_cut_responses() -> None:
    """Install the filter on uvicorn's error logger, once."""
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _QuietIncompleteResponses) for f in logger.filters):
        logger.addFilter(_QuietIncompleteResponses())

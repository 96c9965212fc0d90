"""Fault rules of the simulated CTS, seen by a real HTTP client."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from exporter.simulator import Simulator, start_simulator
from tests.simhelpers import bearer, quiet_options

pytestmark = pytest.mark.anyio


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with start_simulator(quiet_options()) as simulator:
        for _ in range(20):
            simulator.world.add_job("alice")
        yield simulator


@pytest.fixture
async def client(sim: Simulator) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=sim.url, headers=bearer(sim.admin_token)) as http:
        yield http


async def inject(client: httpx.AsyncClient, *rules: dict[str, Any]) -> None:
    response = await client.post("/_sim/faults", json={"rules": list(rules)})
    assert response.status_code == 200, response.text


async def test_a_status_rule_answers_its_code_for_its_count_then_stops(
    client: httpx.AsyncClient,
) -> None:
    await inject(client, {"action": "status", "status": 503, "path": "/admin/jobs", "count": 2})

    codes = [(await client.get("/admin/jobs")).status_code for _ in range(3)]

    assert codes == [503, 503, 200]
    assert (await client.get("/_sim/faults")).json() == {"rules": []}


async def test_a_rule_only_touches_its_path_prefix(client: httpx.AsyncClient) -> None:
    await inject(client, {"action": "status", "status": 502, "path": "/admin/jobs"})

    assert (await client.get("/whoami")).status_code == 200
    assert (await client.get("/admin/jobs")).status_code == 502


async def test_too_many_requests_carries_retry_after(client: httpx.AsyncClient) -> None:
    http_date = "Wed, 21 Oct 2026 07:28:00 GMT"
    await inject(
        client,
        {"action": "status", "status": 429, "count": 1, "headers": {"Retry-After": "3"}},
        {"action": "status", "status": 429, "count": 1, "headers": {"Retry-After": http_date}},
    )

    first = await client.get("/admin/jobs")
    second = await client.get("/admin/jobs")

    assert (first.status_code, first.headers["retry-after"]) == (429, "3")
    assert (second.status_code, second.headers["retry-after"]) == (429, http_date)


async def test_an_injected_401_looks_like_the_cts_error(client: httpx.AsyncClient) -> None:
    await inject(client, {"action": "status", "status": 401, "count": 1})

    response = await client.get("/admin/jobs")

    assert response.status_code == 401
    assert response.json()["error"]["httpcode"] == 401


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        (
            {"body": "<html><body>Bad gateway</body></html>", "content_type": "text/html"},
            b"<html><body>Bad gateway</body></html>",
        ),
        ({"body": ""}, b""),
        ({"body": '{"jobs": [{"id": '}, b'{"jobs": [{"id": '),
        ({"body": "x", "repeat": 3_000_000}, b"x" * 3_000_000),
    ],
    ids=["html", "empty", "truncated json", "huge"],
)
async def test_a_body_rule_sends_its_raw_body_with_200(
    client: httpx.AsyncClient, rule: dict[str, Any], expected: bytes
) -> None:
    await inject(client, {"action": "body", "count": 1, **rule})

    response = await client.get("/admin/jobs")

    assert (response.status_code, response.content) == (200, expected)


async def test_a_delay_rule_answers_normally_after_waiting(client: httpx.AsyncClient) -> None:
    await inject(client, {"action": "delay", "seconds": 0.3, "count": 1})

    started = time.monotonic()
    response = await client.get("/admin/jobs")

    assert response.status_code == 200
    assert len(response.json()["jobs"]) == 20
    assert time.monotonic() - started >= 0.3


async def test_a_delay_longer_than_the_client_timeout_times_it_out(
    client: httpx.AsyncClient,
) -> None:
    await inject(client, {"action": "delay", "seconds": 2, "count": 1})

    with pytest.raises(httpx.ReadTimeout):
        await client.get("/admin/jobs", timeout=0.2)


async def test_a_drip_rule_sends_the_whole_body_slowly(client: httpx.AsyncClient) -> None:
    expected = (await client.get("/admin/jobs")).content
    await inject(client, {"action": "drip", "chunk_bytes": 4096, "interval": 0.05, "count": 1})

    chunks = []
    async with client.stream("GET", "/admin/jobs") as response:
        async for chunk in response.aiter_raw():
            chunks.append(chunk)

    assert b"".join(chunks) == expected
    assert len(chunks) >= len(expected) // 4096


async def test_a_disconnect_rule_cuts_the_body_short(client: httpx.AsyncClient) -> None:
    await inject(client, {"action": "disconnect", "after_bytes": 100, "count": 1})

    with pytest.raises(httpx.RemoteProtocolError):
        await client.get("/admin/jobs")
    assert (await client.get("/admin/jobs")).status_code == 200


async def test_faults_never_touch_the_control_api_and_can_be_cleared(
    client: httpx.AsyncClient,
) -> None:
    await inject(client, {"action": "status", "status": 500, "path": "/"})
    assert (await client.get("/")).status_code == 500

    cleared = await client.delete("/_sim/faults")

    assert cleared.status_code == 204
    assert (await client.get("/")).status_code == 200


async def test_the_first_matching_rule_wins(client: httpx.AsyncClient) -> None:
    await inject(
        client,
        {"action": "status", "status": 503, "path": "/admin", "count": 1},
        {"action": "status", "status": 500, "path": "/"},
    )

    assert (await client.get("/admin/jobs")).status_code == 503
    assert (await client.get("/admin/jobs")).status_code == 500


@pytest.mark.parametrize(
    "rule",
    [{"action": "explode"}, {"action": "status", "count": 0}, {"action": "delay"}],
    ids=["unknown action", "zero count", "delay without seconds"],
)
async def test_malformed_rules_are_refused(client: httpx.AsyncClient, rule: dict[str, Any]) -> None:
    response = await client.post("/_sim/faults", json={"rules": [rule]})

    assert (response.status_code, response.json()["error"]["appcode"]) == (400, 30010)
    assert (await client.get("/_sim/faults")).json() == {"rules": []}

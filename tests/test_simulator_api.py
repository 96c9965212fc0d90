"""The simulated CTS over real HTTP: shapes, auth, filters, paging, metadata and control API."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import anyio
import httpx
import pytest

from exporter.cts import JOB_STATES
from exporter.simulator import Simulator, SimulatorOptions, start_simulator
from exporter.simulator.world import CSE_COMPLETE, CSE_ERROR, CSE_START, Job
from tests.simhelpers import bearer, import_statuses, quiet_options

pytestmark = pytest.mark.anyio

NOW = datetime.now(UTC).replace(microsecond=0).timestamp()


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with start_simulator(quiet_options()) as simulator:
        yield simulator


@pytest.fixture
async def client(sim: Simulator) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=sim.url) as http:
        yield http


@pytest.fixture
def admin(sim: Simulator) -> dict[str, str]:
    return bearer(sim.admin_token)


def completed_at(sim: Simulator, seconds_ago: float, user: str = "alice", **kw: Any) -> Job:
    """A completed job whose last transition was `seconds_ago` before the test began."""
    return sim.world.add_job(user, last_transition=NOW - seconds_ago, **kw)


def iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat()


async def listed_ids(
    client: httpx.AsyncClient, headers: dict[str, str], path: str = "/admin/jobs", **params: Any
) -> list[str]:
    response = await client.get(path, headers=headers, params=params)
    assert response.status_code == 200, response.text
    return [row["id"] for row in response.json()["jobs"]]


def appcode(response: httpx.Response) -> int | None:
    code: int | None = response.json()["error"].get("appcode")
    return code


# ----- shapes ---------------------------------------------------------------------------------


async def test_root_names_the_service_and_its_clock(client: httpx.AsyncClient) -> None:
    body = (await client.get("/")).json()

    assert body["service_name"] == "CDM Task Service"
    assert {"version", "git_hash", "server_time", "notes"} <= body.keys()
    server_time = datetime.fromisoformat(body["server_time"])
    assert abs(server_time.timestamp() - datetime.now(UTC).timestamp()) < 60


async def test_whoami_shows_admin_role_only_for_the_admin(
    sim: Simulator, client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    admin_body = (await client.get("/whoami", headers=admin)).json()
    user_body = (await client.get("/whoami", headers=bearer(sim.user_tokens["bob"]))).json()

    assert admin_body["roles"] == ["full_admin"]
    assert user_body == {"user": "bob", "roles": [], "allowed_paths": user_body["allowed_paths"]}


async def test_sites_lists_the_three_clusters(client: httpx.AsyncClient) -> None:
    sites = (await client.get("/sites")).json()["sites"]

    assert {site["cluster"] for site in sites} == {"perlmutter-jaws", "lawrencium-jaws", "kbase"}
    assert all(site["active"] and site["available"] for site in sites)


async def test_list_rows_omit_inputs_outputs_and_nulls_but_keep_admin_meta(
    sim: Simulator, client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    running = completed_at(sim, 5, state="job_submitted")
    done = completed_at(sim, 10)
    uuid_like = r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"

    rows = {
        row["id"]: row for row in (await client.get("/admin/jobs", headers=admin)).json()["jobs"]
    }

    assert rows[done.id]["admin_meta"] == {}
    assert rows[running.id]["admin_meta"] == {}
    for row in rows.values():
        assert "input_files" not in row["job_input"]
        assert "outputs" not in row
        assert None not in row.values()
        assert re.match(uuid_like, row["id"])
    assert "cpu_hours" in rows[done.id]
    assert "cpu_hours" not in rows[running.id]
    times = [step["time"] for step in rows[done.id]["transition_times"]]
    assert all(t.endswith("Z") and len(t) == len("2026-10-25T21:10:05.789Z") for t in times)


async def test_the_full_job_adds_inputs_outputs_and_transition_ids(
    sim: Simulator, client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    job = completed_at(sim, 5)

    body = (await client.get(f"/admin/jobs/{job.id}", headers=admin)).json()

    assert len(body["job_input"]["input_files"]) == body["input_file_count"]
    assert len(body["outputs"]) == body["output_file_count"]
    assert all({"trans_id", "notif_sent"} <= step.keys() for step in body["transition_times"])


async def test_job_status_is_for_the_owner_only(
    sim: Simulator, client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    job = completed_at(sim, 5, user="alice")

    owner = await client.get(f"/jobs/{job.id}/status", headers=bearer(sim.user_tokens["alice"]))
    other = await client.get(f"/jobs/{job.id}/status", headers=bearer(sim.user_tokens["bob"]))
    as_admin = await client.get(f"/jobs/{job.id}/status", headers=admin)

    assert owner.status_code == 200
    assert owner.json().keys() == {"id", "user", "admin_meta", "state", "transition_times"}
    assert (other.status_code, appcode(other)) == (403, 20000)
    assert (as_admin.status_code, appcode(as_admin)) == (403, 20000)


async def test_an_unknown_job_is_404_with_40040(
    sim: Simulator, client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    missing = "0c5f2c9e-0000-4000-8000-000000000000"
    for response in (
        await client.get(f"/admin/jobs/{missing}", headers=admin),
        await client.get(f"/jobs/{missing}/status", headers=bearer(sim.user_tokens["alice"])),
        await client.put(
            f"/admin/jobs/{missing}/meta", headers=admin, json={"set_fields": {"a": 1}}
        ),
    ):
        assert (response.status_code, appcode(response)) == (404, 40040)
        assert missing in response.json()["error"]["message"]


# ----- auth -------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/whoami", "/jobs", "/admin/jobs"])
async def test_calls_needing_a_token_answer_10010_without_one(
    client: httpx.AsyncClient, path: str
) -> None:
    response = await client.get(path)

    assert (response.status_code, appcode(response)) == (401, 10010)
    error = response.json()["error"]
    assert {"httpcode", "httpstatus", "time", "request_id", "apperror", "message"} <= error.keys()


@pytest.mark.parametrize("path", ["/", "/sites", "/whoami", "/admin/jobs"])
async def test_a_bad_token_breaks_every_call(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path, headers=bearer("not-a-token"))

    assert (response.status_code, appcode(response)) == (401, 10020)


@pytest.mark.parametrize("path", ["/", "/admin/jobs"])
async def test_a_bare_token_without_bearer_is_a_bad_header(
    sim: Simulator, client: httpx.AsyncClient, path: str
) -> None:
    response = await client.get(path, headers={"Authorization": sim.admin_token})

    assert (response.status_code, appcode(response)) == (401, 10030)


async def test_non_admins_are_refused_admin_calls(
    sim: Simulator, client: httpx.AsyncClient
) -> None:
    job = completed_at(sim, 5, user="alice")
    alice = bearer(sim.user_tokens["alice"])

    for response in (
        await client.get("/admin/jobs", headers=alice),
        await client.get(f"/admin/jobs/{job.id}", headers=alice),
        await client.put(
            f"/admin/jobs/{job.id}/meta", headers=alice, json={"set_fields": {"a": 1}}
        ),
        await client.post("/_sim/jobs", headers=alice, json={}),
    ):
        assert (response.status_code, appcode(response)) == (403, 20000)
    assert job.admin_meta == {}


async def test_users_list_only_their_own_jobs(sim: Simulator, client: httpx.AsyncClient) -> None:
    mine = completed_at(sim, 5, user="alice")
    completed_at(sim, 6, user="bob")

    ids = await listed_ids(client, bearer(sim.user_tokens["alice"]), "/jobs", user="bob")

    assert ids == [mine.id]


# ----- filters, order and limits --------------------------------------------------------------


async def test_rows_come_newest_last_transition_first(
    sim: Simulator, client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    older = completed_at(sim, 30)
    newer = completed_at(sim, 10)
    middle = completed_at(sim, 20)

    assert await listed_ids(client, admin) == [newer.id, middle.id, older.id]


async def test_after_is_inclusive_and_before_exclusive(
    sim: Simulator, client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    early = completed_at(sim, 30)
    edge = completed_at(sim, 20)
    late = completed_at(sim, 10)
    edge_time = iso(NOW - 20)

    assert set(await listed_ids(client, admin, after=edge_time)) == {edge.id, late.id}
    assert set(await listed_ids(client, admin, before=edge_time)) == {early.id}


async def test_bounds_accept_any_zone_and_the_z_spelling(
    sim: Simulator, client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    job = completed_at(sim, 20)
    moment = datetime.fromtimestamp(NOW - 20, UTC)

    z_spelling = moment.strftime("%Y-%m-%dT%H:%M:%S.000Z")
    other_zone = moment.astimezone(datetime.now().astimezone().tzinfo).isoformat()
    plus_two = moment.astimezone(timezone(timedelta(hours=2))).isoformat()

    for bound in (z_spelling, other_zone, plus_two):
        assert await listed_ids(client, admin, after=bound) == [job.id]


@pytest.mark.parametrize(
    "params",
    [
        {"after": "2026-05-01T12:00:00"},
        {"before": "2026-05-01T12:00:00.123"},
        {"after": "yesterday"},
        {"limit": "0"},
        {"limit": "1001"},
        {"limit": "ten"},
        {"state": "finished"},
        {"cluster": "nersc"},
    ],
    ids=lambda params: "-".join(f"{k}={v}" for k, v in params.items()),
)
async def test_bad_list_parameters_are_400_30010(
    client: httpx.AsyncClient, admin: dict[str, str], params: dict[str, str]
) -> None:
    response = await client.get("/admin/jobs", headers=admin, params=params)

    assert (response.status_code, appcode(response)) == (400, 30010)
    assert response.json()["error"]["request_validation_detail"]


async def test_limit_bounds_are_one_and_one_thousand(
    sim: Simulator, client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    for offset in range(1005):
        completed_at(sim, 1000 + offset)

    assert len(await listed_ids(client, admin, limit=1)) == 1
    assert len(await listed_ids(client, admin, limit=1000)) == 1000
    assert len(await listed_ids(client, admin)) == 1000


async def test_state_cluster_and_user_filters(
    sim: Simulator, client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    failed = completed_at(sim, 5, user="bob", state="error", cluster="perlmutter-jaws")
    done = completed_at(sim, 6, user="alice", cluster="kbase")
    completed_at(sim, 7, user="carol", state="canceled", cluster="lawrencium-jaws")

    assert await listed_ids(client, admin, state="error") == [failed.id]
    assert await listed_ids(client, admin, cluster="kbase") == [done.id]
    assert await listed_ids(client, admin, user="alice") == [done.id]
    assert await listed_ids(client, admin, user="alice", state="error") == []


async def test_every_job_state_can_be_created_and_filtered(
    sim: Simulator, client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    for state in JOB_STATES:
        response = await client.post("/_sim/jobs", headers=admin, json={"state": state})
        assert response.status_code == 200, response.text

    for state in JOB_STATES:
        rows = (await client.get("/admin/jobs", headers=admin, params={"state": state})).json()
        assert [row["state"] for row in rows["jobs"]] == [state]


async def test_paging_with_before_plus_one_ms_finds_every_job_exactly_once(
    sim: Simulator, client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    # Four jobs share one millisecond, and the first page of ten ends among them.
    shared = NOW - 50.123
    jobs = [completed_at(sim, 100 + n) for n in range(12)]
    jobs += [sim.world.add_job("alice", last_transition=shared) for _ in range(4)]
    jobs += [completed_at(sim, 10 + n) for n in range(8)]

    seen: list[str] = []
    before: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 10}
        if before is not None:
            params["before"] = before
        rows = (await client.get("/admin/jobs", headers=admin, params=params)).json()["jobs"]
        pages += 1
        new = [row["id"] for row in rows if row["id"] not in seen]
        if not new:
            break
        seen += new
        oldest = datetime.fromisoformat(rows[-1]["transition_times"][-1]["time"])
        before = (oldest + timedelta(milliseconds=1)).isoformat()

    assert pages == 4
    assert sorted(seen) == sorted(job.id for job in jobs)
    assert len(seen) == len(set(seen))


async def test_paging_with_before_equal_to_the_oldest_loses_shared_jobs(
    sim: Simulator, client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    shared = NOW - 50.123
    [sim.world.add_job("alice", last_transition=shared) for _ in range(5)]
    first = (await client.get("/admin/jobs", headers=admin, params={"limit": 2})).json()["jobs"]
    oldest = first[-1]["transition_times"][-1]["time"]

    rest = await listed_ids(client, admin, before=oldest)

    assert rest == []


# ----- metadata ---------------------------------------------------------------------------------


async def test_metadata_writes_overwrite_set_keys_and_leave_the_rest(
    sim: Simulator, client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    job = completed_at(sim, 60)
    url = f"/admin/jobs/{job.id}/meta"
    first = await client.put(url, headers=admin, json={"set_fields": {"a": "x", "b": 1}})
    second = await client.put(
        url, headers=admin, json={"set_fields": {"b": 2.5, "c": "y"}, "unset_keys": ["a"]}
    )

    assert (first.status_code, second.status_code) == (204, 204)
    row = (await client.get(f"/admin/jobs/{job.id}", headers=admin)).json()
    assert row["admin_meta"] == {"b": 2.5, "c": "y"}
    assert row["transition_times"][-1]["time"] == iso(NOW - 60).replace("+00:00", ".000Z")
    assert await listed_ids(client, admin, after=iso(NOW - 30)) == []


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({}, 30001),
        ({"set_fields": {"a": 1}, "unset_keys": ["a"]}, 30001),
        ({"set_fields": {"a": [1]}}, 30010),
        ({"set_fields": {"a": 1}, "extra": True}, 30010),
    ],
    ids=["empty", "set and unset one key", "list value", "unknown field"],
)
async def test_bad_metadata_writes_are_400(
    sim: Simulator,
    client: httpx.AsyncClient,
    admin: dict[str, str],
    body: dict[str, Any],
    code: int,
) -> None:
    job = completed_at(sim, 5)

    response = await client.put(f"/admin/jobs/{job.id}/meta", headers=admin, json=body)

    assert (response.status_code, appcode(response)) == (400, code)
    assert job.admin_meta == {}


# ----- control API ------------------------------------------------------------------------------


async def test_control_jobs_complete_now_and_take_import_writes(
    sim: Simulator, client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    created = await client.post(
        "/_sim/jobs",
        headers=admin,
        json={"user": "carol", "image": "ghcr.io/kbase/checkm2:1.0", "cluster": "perlmutter-jaws"},
    )
    job = created.json()
    assert (job["user"], job["state"], job["job_input"]["cluster"]) == (
        "carol",
        "complete",
        "perlmutter-jaws",
    )

    for outcome in ("complete", "error", "start"):
        written = await client.post(
            f"/_sim/jobs/{job['id']}/import", headers=admin, json={"outcome": outcome}
        )
        assert written.status_code == 200

    meta = written.json()["admin_meta"]
    assert set(meta) == {CSE_START}
    assert datetime.fromisoformat(meta[CSE_START]).tzinfo is not None


async def test_control_job_times_cannot_be_in_the_future(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    response = await client.post(
        "/_sim/jobs", headers=admin, json={"last_transition": iso(NOW + 3600)}
    )

    assert (response.status_code, appcode(response)) == (400, 30001)


async def test_pausing_the_cse_over_http_piles_up_waiting_jobs() -> None:
    options = quiet_options(
        pickup_delay=0.05,
        import_duration=0.05,
        import_stuck_share=0.0,
        import_error_share=0.0,
        speed=1.0,
    )
    async with start_simulator(options) as sim, httpx.AsyncClient(base_url=sim.url) as client:
        admin = bearer(sim.admin_token)
        paused = await client.post("/_sim/cse", headers=admin, json={"paused": True})
        assert paused.json()["paused"] is True
        jobs = []
        for _ in range(3):
            job = sim.world.add_job("alice")
            job.cse_ignored = False
            sim.world.cse.enqueue(job, sim.world.clock.now())
            jobs.append(job)
        rows = (await client.get("/admin/jobs", headers=admin)).json()["jobs"]
        assert import_statuses(rows)["waiting"] == 3

        await client.post("/_sim/cse", headers=admin, json={"paused": False})
        for _ in range(200):
            rows = (await client.get("/admin/jobs", headers=admin)).json()["jobs"]
            if import_statuses(rows) == {"complete": 3}:
                break
            await anyio.sleep(0.05)
        assert import_statuses(rows) == {"complete": 3}


async def test_right_after_start_every_import_status_is_listed() -> None:
    options = SimulatorOptions(seed=3, jobs=2000)
    async with start_simulator(options) as sim, httpx.AsyncClient(base_url=sim.url) as client:
        rows = (
            await client.get(
                "/admin/jobs", headers=bearer(sim.admin_token), params={"state": "complete"}
            )
        ).json()["jobs"]

    assert set(import_statuses(rows)) == {"waiting", "running", "complete", "no_operation", "error"}


async def test_metadata_keys_from_the_cse_use_the_contract_spelling(
    sim: Simulator, client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    job = completed_at(sim, 5)
    sim.world.write_import(job.id, "complete", NOW - 1)
    sim.world.write_import(job.id, "error", NOW - 0.5)

    row = (await client.get(f"/admin/jobs/{job.id}", headers=admin)).json()

    assert row["admin_meta"][CSE_COMPLETE].endswith("+00:00")
    assert datetime.fromisoformat(row["admin_meta"][CSE_ERROR]).microsecond == 500000

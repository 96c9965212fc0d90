"""The simulated world, driven deterministically: jobs, the state machine and the CSE."""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Any

import pytest

from exporter.cts import JOB_STATES
from exporter.simulator.world import (
    CSE_COMPLETE,
    CSE_ERROR,
    CSE_START,
    TERMINAL_STATES,
    Job,
    MetadataError,
    World,
    format_cse_time,
)
from tests.simhelpers import T0, import_status, manual_world

ALLOWED_MOVES = {
    "created": {"download_submitted"},
    "download_submitted": {"job_submitting"},
    "job_submitting": {"job_submitted"},
    "job_submitted": {"upload_submitting", "error_processing_submitting"},
    "upload_submitting": {"upload_submitted"},
    "upload_submitted": {"complete"},
    "error_processing_submitting": {"error_processing_submitted"},
    "error_processing_submitted": {"error"},
    "canceling": {"canceled"},
}


def view(job: Job) -> dict[str, Any]:
    """The part of a job the import classifier reads."""
    return {"state": job.state, "admin_meta": job.admin_meta}


def statuses(world: World) -> Counter[str]:
    return Counter(
        import_status(job.admin_meta) for job in world.jobs.values() if job.state == "complete"
    )


def completed(world: World, count: int, clock_step: float = 1.0) -> list[Job]:
    """`count` completed jobs handed to the CSE in order, one per `clock_step` seconds."""
    jobs = []
    for _ in range(count):
        job = world.add_job("alice", last_transition=world.clock.now() - 10)
        job.cse_ignored = False
        world.cse.enqueue(job, world.clock.now())
        jobs.append(job)
        world.clock.advance(clock_step)  # type: ignore[attr-defined]
    return jobs


def test_jobs_walk_only_the_real_state_machine() -> None:
    world, _clock = manual_world(jobs=3000)
    world.start()

    for job in world.jobs.values():
        states = [state for state, _ in job.transitions]
        assert states[0] == "created"
        for before, after in itertools.pairwise(states):
            legal = ALLOWED_MOVES.get(before, set()) | {"error", "canceling"}
            assert after in legal, f"{before} -> {after}"
            assert before not in TERMINAL_STATES
        times = [ms for _, ms in job.transitions]
        assert times == sorted(times)
    assert {job.state for job in world.jobs.values()} >= {"complete", "error", "canceled"}


def test_a_long_run_reaches_every_state() -> None:
    world, _ = manual_world(jobs=3000)
    world.start()

    seen = {state for job in world.jobs.values() for state, _ in job.transitions}
    assert seen == set(JOB_STATES)


def test_no_time_is_ever_in_the_future() -> None:
    world, clock = manual_world(jobs=2000, arrival_interval=5.0, outage_interval=3600.0)
    world.start()
    for _ in range(50):
        now = clock.advance(37.0)
        world.advance()
        latest_transition = max(job.last_ms for job in world.jobs.values())
        assert latest_transition <= now * 1000
        for job in world.jobs.values():
            for value in job.admin_meta.values():
                assert str(value) <= format_cse_time(now)


def test_the_same_seed_repeats_a_run_exactly() -> None:
    def run() -> list[tuple[str, str, list[tuple[str, int]], dict[str, Any]]]:
        world, clock = manual_world(jobs=500, arrival_interval=20.0, outage_interval=7200.0)
        world.start()
        clock.advance(3600)
        world.advance()
        return [
            (job.id, job.user, job.transitions, dict(job.admin_meta)) for job in world.jobs.values()
        ]

    assert run() == run()


def test_preload_spreads_jobs_over_the_lookback_window() -> None:
    world, _ = manual_world(jobs=1000, lookback=86400.0)
    world.start()

    created = [job.transitions[0][1] / 1000 for job in world.jobs.values()]
    assert min(created) >= T0 - 86400
    assert max(created) <= T0
    first_half = sum(1 for t in created if t < T0 - 43200)
    assert 400 < first_half < 600


@pytest.mark.parametrize("jobs", [10, 20, 2000])
def test_after_preload_every_import_status_is_present(jobs: int) -> None:
    world, _ = manual_world(jobs=jobs)
    world.start()

    assert set(statuses(world)) == {"waiting", "running", "complete", "no_operation", "error"}


def test_preloaded_backlog_drains_once_its_outage_ends() -> None:
    world, clock = manual_world(jobs=2000, backlog_outage=60.0)
    world.start()
    waiting = statuses(world)["waiting"]
    assert waiting >= 12

    clock.advance(59)
    world.advance()
    assert statuses(world)["waiting"] == waiting

    clock.advance(3600)
    world.advance()
    assert statuses(world)["waiting"] == 0


def test_the_cse_imports_one_job_at_a_time_in_completion_order() -> None:
    world, clock = manual_world(import_stuck_share=0.0)
    jobs = completed(world, 40)
    clock.advance(86400)
    world.advance()

    events = list(world.cse.history)
    started = [job_id for job_id, event in events if event == "start"]
    assert started == [job.id for job in jobs]
    running = None
    for job_id, event in events:
        if event == "start":
            assert running is None, "a second import started before the first finished"
            running = job_id
        else:
            assert job_id == running
            running = None


def test_each_import_starts_after_the_previous_one_finished() -> None:
    world, clock = manual_world(import_stuck_share=0.0, import_error_share=0.0)
    jobs = completed(world, 10, clock_step=0.0)
    clock.advance(86400)
    world.advance()

    for previous, job in itertools.pairwise(jobs):
        assert job.admin_meta[CSE_START] >= previous.admin_meta[CSE_COMPLETE]


def test_import_outcomes_follow_their_shares_over_a_seeded_run() -> None:
    world, clock = manual_world(
        seed=11,
        jobs=4000,
        import_error_share=0.1,
        import_stuck_share=0.05,
        no_importer_share=0.2,
        backlog_jobs=0,
        outage_interval=0.0,
    )
    world.start()
    clock.advance(86400)
    world.advance()

    counts = statuses(world)
    total = sum(counts.values())
    assert counts["waiting"] == 0
    assert counts["no_operation"] / total == pytest.approx(0.2, abs=0.03)
    # Images with an importer make up the other 80%; the shares apply to those imports.
    assert counts["error"] / total == pytest.approx(0.8 * 0.1, abs=0.02)
    assert counts["running"] / total == pytest.approx(0.8 * 0.05, abs=0.015)


def test_no_operation_comes_from_images_without_an_importer() -> None:
    world, clock = manual_world(jobs=2000)
    world.start()
    clock.advance(86400)
    world.advance()

    for job in world.jobs.values():
        status = import_status(job.admin_meta) if job.state == "complete" else None
        if status == "no_operation":
            assert not job.image.has_importer
        if status in ("complete", "error"):
            assert job.image.has_importer


def test_only_completed_jobs_get_cse_keys() -> None:
    world, _clock = manual_world(jobs=2000)
    world.start()

    for job in world.jobs.values():
        if job.state != "complete":
            assert job.admin_meta == {}


def test_a_paused_cse_leaves_completed_jobs_waiting() -> None:
    world, clock = manual_world()
    world.cse.pause()
    jobs = completed(world, 5)
    clock.advance(3600)
    world.advance()
    assert all(import_status(job.admin_meta) == "waiting" for job in jobs)

    world.cse.resume()
    clock.advance(3600)
    world.advance()
    assert not any(import_status(job.admin_meta) == "waiting" for job in jobs)


def test_an_outage_leaves_the_running_import_stuck() -> None:
    world, clock = manual_world(import_stuck_share=0.0, import_duration=600.0)
    first, second = completed(world, 2, clock_step=0.0)
    clock.advance(3)
    world.advance()
    assert import_status(first.admin_meta) == "running"

    world.cse.crash_at_next_start(clock.now(), until=clock.now() + 60)
    clock.advance(86400)
    world.advance()

    assert first.admin_meta.keys() == {CSE_START}
    assert import_status(second.admin_meta) in {"complete", "error", "no_operation"}


def test_a_start_unsets_complete_and_error_but_not_no_operation() -> None:
    world, clock = manual_world()
    job = world.add_job("alice")
    world.write_import(job.id, "no_operation", clock.now())
    world.write_import(job.id, "error", clock.advance(1))
    world.write_import(job.id, "complete", clock.advance(1))

    world.write_import(job.id, "start", clock.advance(1))

    assert set(job.admin_meta) == {CSE_START, "cse_event_processing_no_operation"}
    assert import_status(job.admin_meta) == "running"


def test_metadata_writes_keep_other_keys_and_the_transition_time() -> None:
    world, _ = manual_world()
    job = world.add_job("alice")
    world.update_admin_meta(job.id, {"operator_note": "checked", "count": 1}, ())
    last = job.transitions[-1]

    world.update_admin_meta(job.id, {"count": 2, CSE_ERROR: "x"}, ["operator_note"])

    assert job.admin_meta == {"count": 2, CSE_ERROR: "x"}
    assert job.transitions[-1] == last


@pytest.mark.parametrize(
    ("set_fields", "unset_keys"),
    [({}, []), ({"a": 1}, ["a"])],
    ids=["empty update", "same key set and unset"],
)
def test_illegal_metadata_updates_are_refused(
    set_fields: dict[str, int], unset_keys: list[str]
) -> None:
    world, _ = manual_world()
    job = world.add_job("alice")
    with pytest.raises(MetadataError):
        world.update_admin_meta(job.id, set_fields, unset_keys)


def test_speed_divides_every_duration() -> None:
    def median_job_seconds(speed: float) -> float:
        world, clock = manual_world(seed=5, jobs=0, arrival_interval=10.0, speed=speed)
        world.start()
        clock.advance(86400 / speed)
        world.advance()
        spans = sorted(
            job.last_ms - job.transitions[0][1]
            for job in world.jobs.values()
            if job.state == "complete"
        )
        return spans[len(spans) // 2] / 1000

    assert median_job_seconds(10.0) == pytest.approx(median_job_seconds(1.0) / 10, rel=0.2)


def test_control_jobs_are_left_alone_by_the_cse() -> None:
    world, clock = manual_world()
    job = world.add_job("bob", state="complete")
    clock.advance(3600)
    world.advance()

    assert job.admin_meta == {}
    assert [state for state, _ in job.transitions][-1] == "complete"

"""Every dashboard query, run by a real Prometheus scraping the exporter over the simulated CTS.

The simulator, the exporter and Prometheus run as processes on loopback. A few jobs are set up
through the simulator's control API so that each problem the dashboards show (a failed, a
running and a waiting import) exists; the simulated CSE imports everything else.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.promstack import Prometheus, free_port, start_prometheus, wait_until

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "grafana"))

import dashboard_queries as dq  # noqa: E402

EXPORTER = str(Path(sys.executable).parent / "cts-import-exporter")
START_TIMEOUT_SECONDS = 60.0
# Rates and quantiles need a few scrapes with imports finishing in between; the simulator runs
# 60 times faster than real time, so this is hours of simulated CTS.
DATA_TIMEOUT_SECONDS = 150.0
USER = "grafana-live-user"
SAMPLE_NAME = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]", re.MULTILINE)


@dataclass
class Stack:
    """The running simulator, exporter and Prometheus, and the jobs set up for the test."""

    cts_url: str
    exporter_url: str
    prometheus: Prometheus
    failed_job: str
    running_job: str
    waiting_job: str


def start_process(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)


def stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def answers(url: str, check: Callable[[httpx.Response], bool] = lambda r: r.is_success) -> bool:
    try:
        return check(httpx.get(url, timeout=2))
    except httpx.TransportError:
        return False


def wait_for(process: subprocess.Popen[bytes], log: Path, condition: Callable[[], bool]) -> None:
    """Wait until `condition` holds, failing with the process's log if it exits first."""

    def ready() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"{log.stem} exited:\n{log.read_text()[-4000:]}")
        return condition()

    wait_until(ready, START_TIMEOUT_SECONDS, f"{log.stem} to be ready", poll_seconds=0.2)


def control(cts_url: str, token: str, path: str, body: dict[str, Any]) -> Any:
    response = httpx.post(
        cts_url + path, json=body, headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    response.raise_for_status()
    return response.json() if response.content else None


def new_job(cts_url: str, token: str, outcome: str | None) -> str:
    """A job for USER that completes now; `outcome` is the import key written on it, if any."""
    job = control(cts_url, token, "/_sim/jobs", {"user": USER})
    if outcome is not None:
        control(cts_url, token, f"/_sim/jobs/{job['id']}/import", {"outcome": outcome})
    return str(job["id"])


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    directory = tmp_path_factory.mktemp("grafana-live")
    token_file = directory / "admin-token"
    cts_port, exporter_port = free_port(), free_port()
    cts_url = f"http://127.0.0.1:{cts_port}"
    exporter_url = f"http://127.0.0.1:{exporter_port}"
    processes: list[subprocess.Popen[bytes]] = []
    prometheus: Prometheus | None = None
    try:
        simulator_log = directory / "simulator.log"
        simulator = start_process(
            [EXPORTER, "simulate", "--listen-address", f"127.0.0.1:{cts_port}", "--seed", "3",
             "--jobs", "300", "--speed", "60", "--admin-token-file", str(token_file)],
            simulator_log,
        )  # fmt: skip
        processes.append(simulator)
        wait_for(simulator, simulator_log, lambda: answers(cts_url + "/"))
        token = token_file.read_text().strip()

        # Set up before the first scan, so the exporter sees these jobs from the start.
        failed_job = new_job(cts_url, token, "error")
        running_job = new_job(cts_url, token, "start")
        waiting_job = new_job(cts_url, token, None)

        exporter_log = directory / "exporter.log"
        exporter = start_process(
            [EXPORTER, "--cts-url", cts_url, "--cts-token-file", str(token_file),
             "--listen-address", f"127.0.0.1:{exporter_port}", "--scan-interval", "1s"],
            exporter_log,
        )  # fmt: skip
        processes.append(exporter)
        wait_for(
            exporter,
            exporter_log,
            lambda: answers(
                exporter_url + "/metrics",
                lambda r: "\ncts_exporter_last_scan_success 1.0" in r.text,
            ),
        )

        scrape_config = f"""
global: {{scrape_interval: 1s, evaluation_interval: 1s}}
scrape_configs:
  - job_name: cts-import-exporter
    static_configs: [{{targets: ["127.0.0.1:{exporter_port}"]}}]
"""
        prometheus = start_prometheus(scrape_config)
        scraped = prometheus  # a name mypy can see is not None inside the lambda
        wait_until(
            lambda: bool(scraped.query("cts_exporter_build_info")),
            START_TIMEOUT_SECONDS,
            "Prometheus's first scrape of the exporter",
        )
        yield Stack(cts_url, exporter_url, prometheus, failed_job, running_job, waiting_job)
    finally:
        if prometheus is not None:
            prometheus.stop()
        for process in reversed(processes):
            stop_process(process)


def has_data(result: list[dict[str, Any]]) -> bool:
    """True when an instant query returned a series with a number (not NaN) in it."""
    return any(not math.isnan(float(series["value"][1])) for series in result)


def poll(prometheus: Prometheus, expr: str, satisfied: Callable[[list[Any]], bool]) -> list[Any]:
    """Run `expr` until its result satisfies `satisfied` or the data timeout passes."""
    deadline = time.monotonic() + DATA_TIMEOUT_SECONDS
    while True:
        result = prometheus.query(expr)
        if satisfied(result) or time.monotonic() > deadline:
            return result
        time.sleep(1)


def label_values(prometheus: Prometheus, variable: dict[str, Any], values: dict[str, str]) -> Any:
    """What a query variable lists, asked of Prometheus as Grafana's label_values does."""
    selector, label = dq.label_values_selector(dq.variable_query(variable))
    match = dq.interpolate(selector, values)
    return prometheus.get(f"/api/v1/label/{label}/values", **{"match[]": match})["data"]


def scope(stack: Stack, board: dict[str, Any]) -> dict[str, str]:
    """Variable values picked the way a viewer would: from each variable's own query."""
    values = dq.default_values(board)
    values["job"] = "cts-import-exporter"
    values["instance"] = stack.exporter_url.removeprefix("http://")
    for variable in dq.variables(board):
        if variable["type"] == "query":
            listed = label_values(stack.prometheus, variable, values)
            wanted = USER if variable["name"] == "user" else values[variable["name"]]
            assert wanted in listed, (variable["name"], listed)
            values[variable["name"]] = wanted
    return values


def run_dashboard(stack: Stack, uid: str, **overrides: str) -> dict[tuple[str, str], list[Any]]:
    """Every query of a dashboard, by (panel, refId), once each returns data."""
    board = dq.load_dashboards()[f"{uid}.json"]
    values = {**scope(stack, board), **overrides}
    return {
        (query.panel, query.ref): poll(
            stack.prometheus, dq.interpolate(query.expr, values), has_data
        )
        for query in dq.queries(board)
    }


def job_statuses(result: list[dict[str, Any]]) -> dict[str, str]:
    return {series["metric"]["job_id"]: series["metric"]["status"] for series in result}


def test_dashboards_use_only_names_the_exporter_serves(stack: Stack) -> None:
    served = set(SAMPLE_NAME.findall(httpx.get(stack.exporter_url + "/metrics").text))
    for board in dq.load_dashboards().values():
        for query in dq.queries(board):
            for metric, _ in dq.selectors(query.expr):
                assert metric in served, (query.panel, metric)


def test_every_overview_query_returns_data(stack: Stack) -> None:
    results = run_dashboard(stack, "cts-import-overview")
    empty = [where for where, result in results.items() if not has_data(result)]
    assert not empty


def test_every_my_jobs_query_returns_data_for_a_user(stack: Stack) -> None:
    results = run_dashboard(stack, "cts-import-my-jobs")
    empty = [where for where, result in results.items() if not has_data(result)]
    assert not empty


def test_problem_table_lists_failed_and_waiting_jobs_and_running_ones_past_stuck_after(
    stack: Stack,
) -> None:
    results = run_dashboard(stack, "cts-import-overview", stuck_after="0")
    (table,) = [r for (panel, _), r in results.items() if panel.startswith("Failed, stuck")]
    statuses = job_statuses(table)

    assert statuses[stack.failed_job] == "error"
    assert statuses[stack.running_job] == "stuck"
    assert statuses[stack.waiting_job] == "waiting"
    assert all(s in ("error", "stuck", "waiting") for s in statuses.values())


def test_problem_table_leaves_out_imports_running_less_than_stuck_after(stack: Stack) -> None:
    results = run_dashboard(stack, "cts-import-overview", stuck_after="86400")
    (table,) = [r for (panel, _), r in results.items() if panel.startswith("Failed, stuck")]
    assert stack.running_job not in job_statuses(table)
    assert stack.failed_job in job_statuses(table)


def test_my_jobs_filters_by_a_typed_job_id_prefix(stack: Stack) -> None:
    prefix = stack.waiting_job[:13]
    results = run_dashboard(stack, "cts-import-my-jobs", job_id=prefix)
    recent = results[("Recent jobs", "B")]
    assert {series["metric"]["job_id"] for series in recent} == {stack.waiting_job}
    assert recent[0]["metric"]["status"] == "waiting"
    states = results[("Recent jobs", "A")]
    assert [series["metric"]["state"] for series in states] == ["complete"]

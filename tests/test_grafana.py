"""The Grafana dashboards: structure, queries and the generator that writes them."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from itertools import combinations
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
GRAFANA = ROOT / "grafana"
sys.path.insert(0, str(GRAFANA))

import dashboard_queries as dq  # noqa: E402

DASHBOARDS = dq.load_dashboards()
EXPECTED_UIDS = {"cts-import-overview", "cts-import-my-jobs"}
SCOPE_MATCHERS = ('job=~"$job"', 'instance=~"$instance"')
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def documented_metrics() -> dict[str, str]:
    """Metric names and types from the tables in docs/metrics.md."""
    row = re.compile(r"^\| `([a-z_]+)(?:\{[^}]*\})?` \| (\w+) \|", re.MULTILINE)
    return dict(row.findall((ROOT / "docs" / "metrics.md").read_text()))


def allowed_names(documented: dict[str, str]) -> set[str]:
    """Series names a query may select: documented names plus histogram series."""
    names = set(documented)
    for name, kind in documented.items():
        if kind == "histogram":
            names |= {name + suffix for suffix in HISTOGRAM_SUFFIXES}
    return names


def all_queries() -> list[dq.Query]:
    return [query for board in DASHBOARDS.values() for query in dq.queries(board)]


def content_panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    return [panel for panel in dq.panels(board) if panel["type"] != "row"]


def rendered(board: dict[str, Any], text: str) -> str:
    """A query as Grafana would send it with the dashboard's defaults, a user picked."""
    return dq.interpolate(text, {**dq.default_values(board), "user": "alice"})


# --- structure ------------------------------------------------------------------------


def test_each_dashboard_file_is_named_after_its_stable_uid() -> None:
    assert {board["uid"] for board in DASHBOARDS.values()} == EXPECTED_UIDS
    for name, board in DASHBOARDS.items():
        assert name == f"{board['uid']}.json"
        assert re.fullmatch(r"[a-zA-Z0-9_-]{1,40}", board["uid"])
        assert board["id"] is None


def test_dashboard_files_are_valid_json_objects_with_panels() -> None:
    for path in (GRAFANA / "dashboards").glob("*.json"):
        board = json.loads(path.read_text())
        assert board["title"] and board["panels"] and board["schemaVersion"] >= 36


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_panel_ids_are_unique(name: str) -> None:
    ids = [panel["id"] for panel in dq.panels(DASHBOARDS[name])]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_panels_fit_the_24_column_grid_without_overlap(name: str) -> None:
    boxes = [panel["gridPos"] for panel in dq.panels(DASHBOARDS[name])]
    for box in boxes:
        assert box["x"] >= 0 and box["y"] >= 0 and box["w"] > 0 and box["h"] > 0
        assert box["x"] + box["w"] <= 24
    for a, b in combinations(boxes, 2):
        apart = (
            a["x"] + a["w"] <= b["x"]
            or b["x"] + b["w"] <= a["x"]
            or a["y"] + a["h"] <= b["y"]
            or b["y"] + b["h"] <= a["y"]
        )
        assert apart, f"{a} overlaps {b}"


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_every_panel_has_a_title_a_description_and_a_unit(name: str) -> None:
    for panel in content_panels(DASHBOARDS[name]):
        assert panel["title"].strip(), panel
        assert panel["description"].strip(), panel["title"]
        assert panel["fieldConfig"]["defaults"]["unit"], panel["title"]
    rows = [panel for panel in dq.panels(DASHBOARDS[name]) if panel["type"] == "row"]
    assert all(row["title"].strip() for row in rows)


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_every_variable_used_is_declared(name: str) -> None:
    board = DASHBOARDS[name]
    declared = {variable["name"] for variable in dq.variables(board)}
    used = dq.referenced_variables(json.dumps(board))
    builtins = {ref for ref in used if ref.startswith("__")}
    assert used - builtins <= declared
    assert {"datasource", "job", "instance"} <= declared


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_variables_refer_only_to_variables_declared_before_them(name: str) -> None:
    earlier: set[str] = set()
    for variable in dq.variables(DASHBOARDS[name]):
        used = dq.referenced_variables(json.dumps(variable))
        assert {ref for ref in used if not ref.startswith("__")} <= earlier, variable["name"]
        earlier.add(variable["name"])


def test_datasource_variable_defaults_to_the_provisioned_prometheus() -> None:
    provisioning = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )
    (source,) = provisioning["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    for board in DASHBOARDS.values():
        (variable,) = [v for v in dq.variables(board) if v["name"] == "datasource"]
        assert variable["type"] == "datasource" and variable["query"] == "prometheus"
        assert variable["current"]["value"] == source["uid"]


def test_every_panel_and_query_uses_the_datasource_variable() -> None:
    wanted = {"type": "prometheus", "uid": "${datasource}"}
    for board in DASHBOARDS.values():
        for panel in content_panels(board):
            assert panel["datasource"] == wanted, panel["title"]
            assert all(target["datasource"] == wanted for target in panel["targets"])
        for variable in dq.variables(board):
            if variable["type"] == "query":
                assert variable["datasource"] == wanted


def test_dashboard_provider_reads_the_mounted_dashboard_directory() -> None:
    provisioning = yaml.safe_load(
        (GRAFANA / "provisioning" / "dashboards" / "cts-import.yml").read_text()
    )
    (provider,) = provisioning["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"


def test_problem_jobs_link_to_the_job_in_the_cts() -> None:
    board = DASHBOARDS["cts-import-overview.json"]
    (problems,) = [p for p in content_panels(board) if p["type"] == "table"]
    (job_column,) = [
        o for o in problems["fieldConfig"]["overrides"] if o["matcher"]["options"] == "job_id"
    ]
    links = next(p["value"] for p in job_column["properties"] if p["id"] == "links")
    assert links[0]["url"] == "${cts_url}/admin/jobs/${__value.raw}"
    variable = next(v for v in dq.variables(board) if v["name"] == "cts_url")
    assert variable["type"] in ("textbox", "constant") and variable["query"].startswith("http")


def test_my_jobs_picks_a_user_from_the_per_job_series_and_filters_by_typed_job_id() -> None:
    board = DASHBOARDS["cts-import-my-jobs.json"]
    by_name = {variable["name"]: variable for variable in dq.variables(board)}
    selector, label = dq.label_values_selector(dq.variable_query(by_name["user"]))
    assert label == "user" and selector.startswith("cts_job_last_transition_timestamp_seconds{")
    assert by_name["job_id"]["type"] == "textbox" and by_name["job_id"]["query"] == ""
    for query in dq.queries(board):
        assert 'user="$user"' in query.expr and 'job_id=~".*$job_id.*"' in query.expr


# --- queries --------------------------------------------------------------------------


def test_every_selector_is_scoped_by_job_and_instance() -> None:
    for query in all_queries():
        found = dq.selectors(query.expr)
        assert found, query
        for metric, matchers in found:
            assert all(m in matchers for m in SCOPE_MATCHERS), (query.panel, metric)


def test_range_functions_use_the_rate_interval() -> None:
    for query in all_queries():
        assert all(window == "$__rate_interval" for window in dq.ranges(query.expr)), query


def test_latency_quantiles_come_from_the_import_latency_histogram_rate() -> None:
    board = DASHBOARDS["cts-import-overview.json"]
    latency = [q.expr for q in dq.queries(board) if q.panel == "Import latency"]
    assert len(latency) == 3
    for expr in latency:
        assert expr.startswith("histogram_quantile(")
        assert "rate(cts_import_latency_seconds_bucket{" in expr
        assert expr.endswith("[$__rate_interval])))")


def test_queries_use_only_metric_names_from_the_metrics_document() -> None:
    names = allowed_names(documented_metrics())
    assert len(names) > 20, "docs/metrics.md tables were not read"
    for board in DASHBOARDS.values():
        for query in dq.queries(board):
            for metric, _ in dq.selectors(query.expr):
                assert metric in names, (query.panel, metric)
        for variable in dq.variables(board):
            if variable["type"] == "query":
                selector, _ = dq.label_values_selector(dq.variable_query(variable))
                assert selector.split("{")[0] in names


def test_every_query_parses_as_promql_after_interpolation(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: apt-get install prometheus"
    rules: list[dict[str, str]] = []
    for board in DASHBOARDS.values():
        for query in dq.queries(board):
            rules.append(
                {"record": f"dashboard:query_{len(rules)}", "expr": rendered(board, query.expr)}
            )
        for variable in dq.variables(board):
            if variable["type"] == "query":
                selector, _ = dq.label_values_selector(dq.variable_query(variable))
                rules.append(
                    {"record": f"dashboard:query_{len(rules)}", "expr": rendered(board, selector)}
                )
    rule_file = tmp_path / "queries.yml"
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))

    result = subprocess.run(
        [promtool, "check", "rules", str(rule_file)], capture_output=True, text=True, check=False
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_promtool_check_rejects_a_broken_query(tmp_path: Path) -> None:
    rule_file = tmp_path / "broken.yml"
    rule = {"record": "dashboard:broken", "expr": "sum(rate(cts_imports_total[$__rate_interval])"}
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "g", "rules": [rule]}]}))
    result = subprocess.run(
        ["promtool", "check", "rules", str(rule_file)], capture_output=True, check=False
    )
    assert result.returncode != 0


def test_interpolation_leaves_no_variable_behind() -> None:
    for board in DASHBOARDS.values():
        for query in dq.queries(board):
            assert "$" not in rendered(board, query.expr), query


# --- the generator --------------------------------------------------------------------


def run_generator(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(GRAFANA / "generate.py"), *args],
        capture_output=True,
        text=True,
        check=False,
    )


def test_committed_dashboards_equal_the_generated_ones() -> None:
    result = run_generator("--check")
    assert result.returncode == 0, result.stderr


def test_check_fails_when_a_dashboard_was_edited_by_hand(tmp_path: Path) -> None:
    for path in (GRAFANA / "dashboards").glob("*.json"):
        shutil.copy(path, tmp_path / path.name)
    edited = tmp_path / "cts-import-overview.json"
    edited.write_text(edited.read_text().replace("Import lag", "Import delay"))

    result = run_generator("--check", "--output", str(tmp_path))

    assert result.returncode == 1
    assert "cts-import-overview.json" in result.stderr
    assert "cts-import-my-jobs.json" not in result.stderr


def test_generator_writes_the_committed_files_into_an_empty_directory(tmp_path: Path) -> None:
    assert run_generator("--output", str(tmp_path)).returncode == 0
    written = sorted(path.name for path in tmp_path.iterdir())
    assert written == sorted(DASHBOARDS)
    for name in written:
        assert (tmp_path / name).read_text() == (GRAFANA / "dashboards" / name).read_text()

"""Write the Grafana dashboards for CTS imports as JSON.

The dashboards are built here, in code, so that every query is scoped the same way and every
panel gets a title, a description and a unit; the JSON under `grafana/dashboards/` is the
output, committed so Grafana can load it without running Python.

    python grafana/generate.py          # rewrite grafana/dashboards/*.json
    python grafana/generate.py --check  # exit 1 when the committed JSON is out of date

Standard library only, so it runs without the project's virtual environment.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

Json = dict[str, Any]

DASHBOARD_DIR = Path(__file__).resolve().parent / "dashboards"

# Must equal the uid in provisioning/datasources/prometheus.yml: it is the datasource
# variable's default, so provisioned dashboards work before anyone picks a data source.
DATASOURCE_UID = "cts-prometheus"
DATASOURCE_NAME = "CTS Prometheus"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

# Example deployment root; operators set their own in the variable box or as ?var-cts_url=.
DEFAULT_CTS_URL = "https://ci.kbase.us/services/cts"

# Every selector carries these matchers so one Grafana can watch several exporters.
SCOPE = 'job=~"$job", instance=~"$instance"'
# The My jobs dashboard narrows to one user, and to job ids containing the typed text.
MY_SCOPE = SCOPE + ', user="$user", job_id=~".*$job_id.*"'
WAITING = 'status="waiting"'
RUNNING = 'status="running"'
ERROR = 'status="error"'
# Stuck imports are running ones past a threshold, so they are selected separately.
PROBLEM = 'status=~"error|waiting"'

GRID_WIDTH = 24
TAGS = ["cts", "cts-import"]
OVERVIEW_UID = "cts-import-overview"
MY_JOBS_UID = "cts-import-my-jobs"

IMPORT_STATUSES = ("waiting", "running", "complete", "no_operation", "error")


def selector(metric: str, scope: str = SCOPE, extra: str = "") -> str:
    """A vector selector for `metric` with the dashboard's scope and optional extra matchers."""
    matchers = f"{scope}, {extra}" if extra else scope
    return f"{metric}{{{matchers}}}"


def quantile(q: float, histogram: str, by: str = "le") -> str:
    """The q-quantile of a histogram's rate over Grafana's rate interval."""
    buckets = selector(f"{histogram}_bucket")
    return f"histogram_quantile({q}, sum by ({by}) (rate({buckets}[$__rate_interval])))"


# --- targets and panels ----------------------------------------------------------------


def target(expr: str, legend: str = "__auto", ref: str = "A", *, table: bool = False) -> Json:
    """A Prometheus query; `table` makes it an instant query shaped as a table."""
    query: Json = {
        "datasource": DATASOURCE,
        "editorMode": "code",
        "expr": expr,
        "legendFormat": legend,
        "range": not table,
        "refId": ref,
    }
    if table:
        query.update(format="table", instant=True)
    return query


def targets(*queries: tuple[str, str]) -> list[Json]:
    """Range queries from (expression, legend) pairs, lettered A, B, C..."""
    return [target(expr, legend, chr(ord("A") + i)) for i, (expr, legend) in enumerate(queries)]


def thresholds(*steps: tuple[float, str]) -> Json:
    """Absolute thresholds: green below the first step, then each (value, colour)."""
    return {
        "mode": "absolute",
        "steps": [{"color": "green", "value": None}]
        + [{"color": color, "value": value} for value, color in steps],
    }


def value_names(names: dict[int, tuple[str, str]]) -> list[Json]:
    """Value mappings that show a gauge's 0/1 as words in a colour."""
    options = {
        str(value): {"color": color, "index": i, "text": text}
        for i, (value, (text, color)) in enumerate(sorted(names.items()))
    }
    return [{"options": options, "type": "value"}]


def panel(kind: str, title: str, description: str, unit: str, queries: list[Json]) -> Json:
    """The fields every panel shares; the layout fills in `id` and `gridPos`."""
    return {
        "datasource": DATASOURCE,
        "description": description,
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {},
        "targets": queries,
        "title": title,
        "type": kind,
    }


def stat(
    title: str,
    description: str,
    unit: str,
    queries: list[Json],
    *,
    steps: Iterable[tuple[float, str]] = (),
    names: dict[int, tuple[str, str]] | None = None,
    text_mode: str = "value",
) -> Json:
    """A single-number panel coloured by thresholds or by named values."""
    stat_panel = panel("stat", title, description, unit, queries)
    defaults = stat_panel["fieldConfig"]["defaults"]
    defaults["thresholds"] = thresholds(*steps)
    defaults["mappings"] = value_names(names) if names else []
    defaults["color"] = {"mode": "thresholds"}
    stat_panel["options"] = {
        "colorMode": "value",
        "graphMode": "none" if names or text_mode == "name" else "area",
        "justifyMode": "auto",
        "orientation": "auto",
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "textMode": text_mode,
    }
    return stat_panel


def timeseries(
    title: str, description: str, unit: str, queries: list[Json], *, stacked: bool = False
) -> Json:
    """A graph over time; `stacked` for parts of a whole (states, outcomes)."""
    graph = panel("timeseries", title, description, unit, queries)
    graph["fieldConfig"]["defaults"].update(
        color={"mode": "palette-classic"},
        custom={
            "drawStyle": "line",
            "fillOpacity": 30 if stacked else 10,
            "lineWidth": 1,
            "showPoints": "never",
            "spanNulls": False,
            "stacking": {"group": "A", "mode": "normal" if stacked else "none"},
        },
    )
    graph["options"] = {
        "legend": {"calcs": [], "displayMode": "list", "placement": "bottom", "showLegend": True},
        "tooltip": {"mode": "multi", "sort": "desc"},
    }
    return graph


def column(name: str, title: str, **properties: Any) -> Json:
    """A table override that renames one column and sets its other properties."""
    props = [{"id": "displayName", "value": title}]
    props += [{"id": key, "value": value} for key, value in properties.items()]
    return {"matcher": {"id": "byName", "options": name}, "properties": props}


def table(
    title: str,
    description: str,
    queries: list[Json],
    *,
    columns: list[Json],
    order: list[str],
    sort_by: str,
    merge: bool = False,
) -> Json:
    """A table of per-job series: labels become columns, `order` lists the ones shown."""
    table_panel = panel("table", title, description, "none", queries)
    table_panel["fieldConfig"]["defaults"]["custom"] = {
        "align": "auto",
        "cellOptions": {"type": "auto"},
        "filterable": True,
    }
    table_panel["fieldConfig"]["overrides"] = columns
    table_panel["options"] = {
        "cellHeight": "sm",
        "footer": {"countRows": False, "fields": "", "reducer": ["sum"], "show": False},
        "showHeader": True,
        "sortBy": [{"desc": True, "displayName": sort_by}],
    }
    # Instant table queries bring every label as a column; keep the listed ones, in order.
    hidden = ["Time", "__name__", "job", "instance", "user", "cluster", "image", "job_id"]
    organize = {
        "excludeByName": {name: True for name in hidden if name not in order},
        "indexByName": {name: i for i, name in enumerate(order)},
        "renameByName": {},
    }
    steps: list[Json] = [{"id": "merge", "options": {}}] if merge else []
    table_panel["transformations"] = [*steps, {"id": "organize", "options": organize}]
    return table_panel


# --- layout -----------------------------------------------------------------------------


class Grid:
    """Places panels left to right on Grafana's 24-column grid, wrapping to new lines."""

    def __init__(self) -> None:
        self.panels: list[Json] = []
        self.x = 0
        self.y = 0
        self.line_height = 0

    def _newline(self) -> None:
        self.y += self.line_height
        self.x = 0
        self.line_height = 0

    def _place(self, item: Json, width: int, height: int) -> None:
        if self.x + width > GRID_WIDTH:
            self._newline()
        item["id"] = len(self.panels) + 1
        item["gridPos"] = {"h": height, "w": width, "x": self.x, "y": self.y}
        self.panels.append(item)
        self.x += width
        self.line_height = max(self.line_height, height)

    def row(self, title: str) -> None:
        """Start a titled row across the full width."""
        self._newline()
        self._place({"collapsed": False, "panels": [], "title": title, "type": "row"}, 24, 1)
        self._newline()

    def add(self, width: int, height: int, *items: Json) -> None:
        """Add panels of the same size, side by side."""
        for item in items:
            self._place(item, width, height)


# --- variables --------------------------------------------------------------------------


def datasource_variable() -> Json:
    """Pick the Prometheus that scrapes the exporter; defaults to the provisioned one."""
    return {
        "current": {"selected": False, "text": DATASOURCE_NAME, "value": DATASOURCE_UID},
        "hide": 0,
        "includeAll": False,
        "label": "Data source",
        "multi": False,
        "name": "datasource",
        "options": [],
        "query": "prometheus",
        "refresh": 1,
        "regex": "",
        "skipUrlSync": False,
        "type": "datasource",
    }


def query_variable(name: str, label: str, query: str, *, include_all: bool = True) -> Json:
    """A variable listing label values from Prometheus, refreshed with the time range."""
    current: Json = (
        {"selected": True, "text": ["All"], "value": ["$__all"]}
        if include_all
        else {"selected": False, "text": "", "value": ""}
    )
    variable: Json = {
        "current": current,
        "datasource": DATASOURCE,
        "definition": query,
        "hide": 0,
        "includeAll": include_all,
        "label": label,
        "multi": include_all,
        "name": name,
        "options": [],
        "query": {"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
        "refresh": 2,
        "regex": "",
        "skipUrlSync": False,
        "sort": 1,
        "type": "query",
    }
    if include_all:
        variable["allValue"] = ".*"
    return variable


def textbox_variable(name: str, label: str, default: str) -> Json:
    """A free-text variable with a default value."""
    return {
        "current": {"selected": False, "text": default, "value": default},
        "hide": 0,
        "label": label,
        "name": name,
        "options": [{"selected": True, "text": default, "value": default}],
        "query": default,
        "skipUrlSync": False,
        "type": "textbox",
    }


def custom_variable(name: str, label: str, choices: list[tuple[str, str]], default: str) -> Json:
    """A fixed list of (text, value) choices, `default` being one of the texts."""
    options = [
        {"selected": text == default, "text": text, "value": value} for text, value in choices
    ]
    current = next(option for option in options if option["selected"])
    return {
        "current": {**current, "selected": False},
        "hide": 0,
        "includeAll": False,
        "label": label,
        "multi": False,
        "name": name,
        "options": options,
        "query": ",".join(f"{text} : {value}" for text, value in choices),
        "skipUrlSync": False,
        "type": "custom",
    }


def scope_variables() -> list[Json]:
    """The variables every dashboard starts with: data source, job and instance."""
    build_info = selector("cts_exporter_build_info", 'job=~"$job"')
    return [
        datasource_variable(),
        query_variable("job", "Job", "label_values(cts_exporter_build_info, job)"),
        query_variable("instance", "Instance", f"label_values({build_info}, instance)"),
    ]


def dashboard(uid: str, title: str, description: str, variables: list[Json], grid: Grid) -> Json:
    """A complete dashboard, importable as is into Grafana 10 and 11."""
    return {
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "description": description,
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "id": None,
        "links": [
            {
                "asDropdown": False,
                "icon": "external link",
                "includeVars": False,
                "keepTime": True,
                "tags": ["cts-import"],
                "targetBlank": False,
                "title": "CTS import dashboards",
                "type": "dashboards",
            }
        ],
        "panels": grid.panels,
        "refresh": "1m",
        # 38 is what Grafana 10.0 writes; later versions migrate it forward on load.
        "schemaVersion": 38,
        "tags": TAGS,
        "templating": {"list": variables},
        "time": {"from": "now-24h", "to": "now"},
        "timepicker": {},
        "timezone": "utc",
        "title": title,
        "uid": uid,
        "version": 1,
        "weekStart": "",
    }


# --- the operator overview -------------------------------------------------------------


def overview() -> Json:
    """Operators: is the import pipeline keeping up, which jobs need a hand, is the exporter ok."""
    grid = Grid()
    running_age = f"time() - {selector('cts_import_job_status_timestamp_seconds', extra=RUNNING)}"
    stuck = f"({running_age}) > $stuck_after"

    grid.row("At a glance")
    grid.add(
        4,
        4,
        stat(
            "Jobs waiting for import",
            "Completed jobs in the look-back window whose import has not started.",
            "short",
            targets((f"sum({selector('cts_import_jobs', extra=WAITING)})", "waiting")),
        ),
        stat(
            "Imports running",
            "Completed jobs whose import has started and not yet finished.",
            "short",
            targets((f"sum({selector('cts_import_jobs', extra=RUNNING)})", "running")),
        ),
        stat(
            "Stuck imports",
            "Imports running for longer than the 'Stuck after' choice: the CSE probably died "
            "between starting and finishing them, and they need reprocessing by hand.",
            "short",
            targets((f"count({stuck}) or vector(0)", "stuck")),
            steps=[(1, "red")],
        ),
        stat(
            "Failed imports",
            "Completed jobs in the look-back window whose last import attempt failed "
            "(cse_event_processing_error). An operator reprocesses them by hand.",
            "short",
            targets((f"sum({selector('cts_import_jobs', extra=ERROR)})", "error")),
            steps=[(1, "red")],
        ),
        stat(
            "Import lag",
            "Time since completion of the oldest job whose import has not finished (waiting "
            "or running); 0 when every import is done. Colours are hints: yellow at 15 "
            "minutes, red at 1 hour.",
            "s",
            targets((f"max({selector('cts_import_lag_seconds')})", "lag")),
            steps=[(900, "yellow"), (3600, "red")],
        ),
        stat(
            "Exporter scanning",
            "Whether the exporter's last scan of the CTS succeeded. When it fails, every "
            "other panel shows the last successful scan.",
            "none",
            targets((f"min({selector('cts_exporter_last_scan_success')})", "scan")),
            names={0: ("failing", "red"), 1: ("ok", "green")},
        ),
    )

    grid.row("Over time")
    grid.add(
        12,
        8,
        timeseries(
            "Import lag",
            "Lag: time since completion of the oldest unfinished import. Oldest waiting: "
            "since the oldest waiting job completed. Oldest running: since the oldest "
            "running import started.",
            "s",
            targets(
                (f"max by (instance) ({selector('cts_import_lag_seconds')})", "lag {{instance}}"),
                (
                    "max by (instance, status) (time() - "
                    f"{selector('cts_import_oldest_pending_timestamp_seconds')})",
                    "oldest {{status}} {{instance}}",
                ),
            ),
        ),
        timeseries(
            "Import latency",
            "Quantiles of the time from a job's completion to its import finishing, over "
            "imports that finished in each interval.",
            "s",
            targets(*quantile_targets("cts_import_latency_seconds")),
        ),
        timeseries(
            "Imports finished per hour by outcome",
            "Rate of imports seen to finish, by outcome, scaled to an hour.",
            "suffix:/h",
            targets(
                (
                    "sum by (status) "
                    f"(rate({selector('cts_imports_total')}[$__rate_interval])) * 3600",
                    "{{status}}",
                )
            ),
            stacked=True,
        ),
        timeseries(
            "Import duration",
            "Quantiles of the time from an import's start to its finish, over imports "
            "that finished in each interval.",
            "s",
            targets(*quantile_targets("cts_import_duration_seconds")),
        ),
        timeseries(
            "Completed jobs by import status",
            "Completed jobs in the look-back window, by import status.",
            "short",
            targets((f"sum by (status) ({selector('cts_import_jobs')})", "{{status}}")),
            stacked=True,
        ),
        timeseries(
            "Jobs by CTS state",
            "Jobs in the look-back window by CTS state; states with no job are left out.",
            "short",
            targets((f"sum by (state) ({selector('cts_jobs')}) > 0", "{{state}}")),
            stacked=True,
        ),
    )

    grid.row("Jobs that need attention")
    problems = (
        f"(time() - {selector('cts_import_job_status_timestamp_seconds', extra=PROBLEM)})"
        f' or label_replace({stuck}, "status", "stuck", "status", "running")'
    )
    grid.add(
        24,
        10,
        table(
            "Failed, stuck and waiting imports",
            "Each job whose import failed, is stuck (running longer than 'Stuck after') or "
            "is waiting, with the time since it entered that status. The job id opens the "
            "job in the CTS (admin token needed); the user opens the My jobs dashboard.",
            [target(problems, ref="A", table=True)],
            columns=[
                column("job_id", "Job id", links=[cts_job_link()]),
                column("user", "User", links=[my_jobs_link()]),
                column("image", "Image"),
                column("cluster", "Cluster"),
                column("status", "Import status"),
                column("Value", "Age in status", unit="s"),
            ],
            order=["job_id", "user", "image", "cluster", "status", "Value"],
            sort_by="Age in status",
        ),
    )

    grid.row("Exporter health")
    last_success = selector("cts_exporter_last_scan_success_timestamp_seconds")
    grid.add(
        4,
        4,
        stat(
            "Last successful scan",
            "Time since the exporter last finished a scan of the CTS without error.",
            "s",
            targets((f"time() - max({last_success} > 0)", "age")),
            steps=[(120, "yellow"), (600, "red")],
        ),
        stat(
            "Jobs scanned",
            "Jobs the last successful scan listed, in any state.",
            "short",
            targets((f"sum({selector('cts_exporter_scanned_jobs')})", "jobs")),
        ),
        stat(
            "List requests per scan",
            "Pages of the CTS job list the last successful scan requested.",
            "short",
            targets((f"max({selector('cts_exporter_scan_pages')})", "pages")),
        ),
        stat(
            "Scan scope",
            "Whether the exporter's token is a CTS admin's (all users' jobs) or a user's "
            "(that user's jobs only).",
            "none",
            targets((f"min({selector('cts_exporter_admin_mode')})", "admin")),
            names={0: ("own jobs only", "yellow"), 1: ("all users", "green")},
        ),
        stat(
            "Scan cut short",
            "Whether the job cap stopped the last scan before the end of the look-back "
            "window; if so, the oldest jobs are missing.",
            "none",
            targets((f"max({selector('cts_exporter_scan_truncated')})", "truncated")),
            names={0: ("no", "green"), 1: ("yes", "red")},
        ),
        stat(
            "Per-job series dropped",
            "Per-job series left out of the last render by the series cap; problem jobs "
            "are kept first.",
            "short",
            targets((f"sum({selector('cts_exporter_job_series_dropped')})", "dropped")),
            steps=[(1, "orange")],
        ),
    )
    grid.add(
        6,
        4,
        stat(
            "Jobs with unreadable CSE metadata",
            "Completed jobs whose CSE keys are not valid times; they are counted, not classified.",
            "short",
            targets((f"sum({selector('cts_import_invalid_metadata_jobs')})", "invalid")),
            steps=[(1, "orange")],
        ),
        stat(
            "Jobs with CSE clock skew",
            "Completed jobs with a CSE time earlier than the event it follows; the CSE and "
            "CTS clocks disagree and those differences count as 0.",
            "short",
            targets((f"sum({selector('cts_import_clock_skew_jobs')})", "skewed")),
            steps=[(1, "orange")],
        ),
        stat(
            "Exporter version",
            "Version of each running exporter.",
            "none",
            targets((f"max by (version) ({selector('cts_exporter_build_info')})", "{{version}}")),
            text_mode="name",
        ),
        stat(
            "CTS version",
            "CTS version and git hash seen at the last successful contact.",
            "none",
            targets(
                (
                    f"max by (version, git_hash) ({selector('cts_info')})",
                    "{{version}} ({{git_hash}})",
                )
            ),
            text_mode="name",
        ),
    )
    scan_errors = selector("cts_exporter_scan_errors_total")
    scans = selector("cts_exporter_scans_total")
    grid.add(
        6,
        8,
        timeseries(
            "Scan duration",
            "How long the last scan of the CTS took, successful or not.",
            "s",
            targets(
                (
                    f"max by (instance) ({selector('cts_exporter_last_scan_duration_seconds')})",
                    "{{instance}}",
                )
            ),
        ),
        timeseries(
            "CTS request latency (90th percentile)",
            "90th percentile of the exporter's requests to the CTS, by endpoint.",
            "s",
            targets(
                (
                    quantile(0.9, "cts_exporter_request_duration_seconds", "le, endpoint"),
                    "{{endpoint}}",
                )
            ),
        ),
        timeseries(
            "Scans and scan errors",
            "Scans attempted and failed scans by reason, per minute.",
            "cpm",
            targets(
                (f"sum(rate({scans}[$__rate_interval])) * 60", "scans"),
                (
                    f"sum by (reason) (rate({scan_errors}[$__rate_interval])) * 60",
                    "error: {{reason}}",
                ),
            ),
        ),
        timeseries(
            "Clock skew",
            "Exporter clock minus the CTS server_time; large values distort ages and lags.",
            "s",
            targets((selector("cts_exporter_clock_skew_seconds"), "{{instance}}")),
        ),
    )

    variables = [
        *scope_variables(),
        custom_variable(
            "stuck_after",
            "Stuck after",
            [("15m", "900"), ("30m", "1800"), ("1h", "3600"), ("2h", "7200"), ("6h", "21600")],
            # The same two hours after which the CtsImportStuck alert fires.
            "2h",
        ),
        textbox_variable("cts_url", "CTS URL", DEFAULT_CTS_URL),
    ]
    return dashboard(
        OVERVIEW_UID,
        "CTS imports: overview",
        "Whether the CSE imports completed CTS jobs in time, which jobs need attention, and "
        "whether the exporter can scan the CTS.",
        variables,
        grid,
    )


def quantile_targets(histogram: str) -> list[tuple[str, str]]:
    """Median, 90th and 99th percentile of a histogram, as (expression, legend) pairs."""
    return [(quantile(q, histogram), f"p{round(q * 100)}") for q in (0.5, 0.9, 0.99)]


def cts_job_link() -> Json:
    """A data link from a job id to the job in the CTS admin API."""
    return {
        "targetBlank": True,
        "title": "Open the job in the CTS",
        "url": "${cts_url}/admin/jobs/${__value.raw}",
    }


def my_jobs_link() -> Json:
    """A data link from a user to the My jobs dashboard for that user, same scope and time."""
    return {
        "title": "Show this user's jobs",
        "url": f"/d/{MY_JOBS_UID}?var-user=${{__value.raw}}&${{datasource:queryparam}}"
        "&${job:queryparam}&${instance:queryparam}&${__url_time_range}",
    }


# --- my jobs ----------------------------------------------------------------------------


def my_jobs() -> Json:
    """Users: where are my jobs, and have their outputs been imported yet."""
    grid = Grid()
    lag = selector("cts_import_job_lag_seconds", MY_SCOPE)
    transitions = selector("cts_job_last_transition_timestamp_seconds", MY_SCOPE)
    status_names = {
        "waiting": ("Waiting for import", "Completed jobs whose import has not started."),
        "running": ("Import running", "Completed jobs whose import has started."),
        "complete": ("Imported", "Completed jobs whose output was imported."),
        "no_operation": ("Nothing to import", "Completed jobs with no importer for the image."),
        "error": ("Import failed", "Completed jobs whose import failed; ask an operator."),
    }

    grid.add(
        4,
        4,
        stat(
            "Jobs in the window",
            "The user's jobs in the look-back window, in any CTS state.",
            "short",
            targets((f"count({transitions}) or vector(0)", "jobs")),
        ),
    )
    for status in IMPORT_STATUSES:
        title, description = status_names[status]
        status_lag = selector("cts_import_job_lag_seconds", MY_SCOPE, f'status="{status}"')
        grid.add(
            4,
            4,
            stat(
                title,
                description,
                "short",
                targets((f"count({status_lag}) or vector(0)", status)),
                steps=[(1, "red")] if status == "error" else (),
            ),
        )

    grid.add(
        24,
        12,
        table(
            "Recent jobs",
            "Each of the user's jobs in the look-back window, newest state change first: CTS "
            "state, import status (completed jobs only) and import lag (to the import's "
            "finish, or until now while it is unfinished).",
            [
                target(f"{transitions} * 1000", ref="A", table=True),
                target(lag, ref="B", table=True),
            ],
            columns=[
                column("job_id", "Job id"),
                column("state", "CTS state"),
                column("status", "Import status"),
                column("Value #B", "Import lag", unit="s"),
                column("Value #A", "Last state change", unit="dateTimeAsIso"),
                column("cluster", "Cluster"),
                column("image", "Image"),
            ],
            order=["job_id", "state", "status", "Value #B", "Value #A", "cluster", "image"],
            sort_by="Last state change",
            merge=True,
        ),
    )
    unfinished = selector("cts_import_job_lag_seconds", MY_SCOPE, 'status=~"waiting|running"')
    grid.add(
        12,
        8,
        timeseries(
            "Lag of unfinished imports",
            "For each completed job whose import is waiting or running: time since the "
            "job completed.",
            "s",
            targets((unfinished, "{{job_id}} ({{status}})")),
        ),
        timeseries(
            "Jobs by CTS state",
            "The user's jobs in the look-back window by CTS state.",
            "short",
            targets((f"count by (state) ({transitions})", "{{state}}")),
            stacked=True,
        ),
    )

    variables = [
        *scope_variables(),
        query_variable(
            "user",
            "User",
            f"label_values({selector('cts_job_last_transition_timestamp_seconds')}, user)",
            include_all=False,
        ),
        textbox_variable("job_id", "Job id (regex, empty for all)", ""),
    ]
    return dashboard(
        MY_JOBS_UID,
        "CTS imports: my jobs",
        "One user's recent CTS jobs: their state, whether their output was imported, and "
        "how long the import took or has been waiting.",
        variables,
        grid,
    )


# --- output -----------------------------------------------------------------------------


def build() -> dict[str, str]:
    """Every dashboard's file name and JSON text."""
    return {
        f"{board['uid']}.json": json.dumps(board, indent=2) + "\n"
        for board in (overview(), my_jobs())
    }


def stale_files(directory: Path) -> list[str]:
    """Names of dashboard files that differ from what `build` makes, or should not exist."""
    wanted = build()
    present = {path.name for path in directory.glob("*.json")}
    stale = [
        name
        for name, text in wanted.items()
        if name not in present or (directory / name).read_text() != text
    ]
    return sorted(stale + sorted(present - wanted.keys()))


def main(argv: list[str] | None = None) -> int:
    """Write the dashboards, or with --check report whether the committed ones are current."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="change nothing; exit 1 if the JSON is out of date"
    )
    parser.add_argument(
        "--output", type=Path, default=DASHBOARD_DIR, help="directory of the dashboard JSON"
    )
    args = parser.parse_args(argv)

    if args.check:
        stale = stale_files(args.output)
        for name in stale:
            print(f"out of date: {args.output / name}", file=sys.stderr)
        if stale:
            print("run: python grafana/generate.py", file=sys.stderr)
        return 1 if stale else 0

    args.output.mkdir(parents=True, exist_ok=True)
    for name, text in build().items():
        (args.output / name).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The shipped alert rules and Alertmanager routing, checked with promtool and amtool."""

import re
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.promstack import start_alertmanager, wait_until

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "alerts"
RULE_FILES = sorted(ALERTS.glob("*.rules.yml"))
RULE_TESTS = sorted((ALERTS / "tests").glob("*.test.yml"))
ALERTMANAGER_CONFIG = ALERTS / "alertmanager.example.yml"
JOB_SELECTOR = 'job="cts-import-exporter"'
DASHBOARD_BASE = "https://grafana.example.org/d/"
RUNBOOK_BASE = "https://runbooks.example.org/cts-import-exporter/alerts/runbooks.md#"


def rules(kind: str) -> list[dict[str, Any]]:
    """Every rule of ``kind`` ("alert" or "record") in the shipped rule files."""
    found = []
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            found += [rule for rule in group["rules"] if kind in rule]
    return found


ALERT_RULES = rules("alert")
ALERT_NAMES = [rule["alert"] for rule in ALERT_RULES]


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False)


def test_rule_files_pass_promtool_check() -> None:
    result = run("promtool", "check", "rules", *map(str, RULE_FILES))

    assert result.returncode == 0, result.stdout + result.stderr


def test_rule_unit_tests_pass() -> None:
    assert RULE_TESTS
    result = run("promtool", "test", "rules", *map(str, RULE_TESTS))

    assert result.returncode == 0, result.stdout + result.stderr


def test_the_required_alerts_exist() -> None:
    assert {
        "CtsImportFailed",
        "CtsImportWaitingTooLong",
        "CtsImportStuck",
        "CtsImportLatencyHigh",
        "CtsExporterScanFailing",
        "CtsExporterAuthFailing",
        "CtsExporterDown",
        "CtsExporterAbsent",
    } <= set(ALERT_NAMES)
    assert len(ALERT_NAMES) == len(set(ALERT_NAMES))


def unit_test_cases() -> list[dict[str, Any]]:
    cases = []
    for path in RULE_TESTS:
        for test in yaml.safe_load(path.read_text())["tests"]:
            cases += test.get("alert_rule_test", [])
    return cases


@pytest.mark.parametrize("alertname", ALERT_NAMES)
def test_every_alert_has_unit_tests_that_see_it_quiet_and_firing(alertname: str) -> None:
    cases = [case for case in unit_test_cases() if case["alertname"] == alertname]

    assert any(case["exp_alerts"] for case in cases), "no test sees it fire"
    assert any(not case["exp_alerts"] for case in cases), "no test sees it quiet"
    for case in cases:
        for alert in case["exp_alerts"]:
            assert set(alert["exp_annotations"]) >= {"summary", "description", "runbook_url"}


@pytest.mark.parametrize("rule", ALERT_RULES, ids=ALERT_NAMES)
def test_every_alert_follows_the_mixin_conventions(rule: dict[str, Any]) -> None:
    assert re.fullmatch(r"Cts(Import|Exporter)([A-Z][a-z0-9]+)+", rule["alert"])
    assert rule["labels"]["severity"] in {"critical", "warning"}
    assert re.fullmatch(r"[1-9][0-9]*[smh]", rule["for"])
    assert set(rule["annotations"]) == {"summary", "description", "runbook_url", "dashboard_url"}
    assert JOB_SELECTOR in rule["expr"]


@pytest.mark.parametrize("rule", ALERT_RULES, ids=ALERT_NAMES)
def test_every_alert_links_its_runbook_section_and_a_dashboard(rule: dict[str, Any]) -> None:
    headings = re.findall(r"^## (\S+)$", (ALERTS / "runbooks.md").read_text(), re.MULTILINE)
    annotations = rule["annotations"]

    assert rule["alert"] in headings
    assert annotations["runbook_url"] == RUNBOOK_BASE + rule["alert"].lower()
    assert re.match(
        re.escape(DASHBOARD_BASE) + r"(cts-import-overview|cts-import-my-jobs)\b",
        annotations["dashboard_url"],
    )


@pytest.mark.parametrize("rule", ALERT_RULES, ids=ALERT_NAMES)
def test_alerts_about_one_job_name_it(rule: dict[str, Any]) -> None:
    text = rule["annotations"]["summary"] + rule["annotations"]["description"]
    if "cts_import_job_" not in rule["expr"]:
        assert "$labels.job_id" not in text
        return

    for label in ("job_id", "user", "image"):
        assert "{{ $labels." + label + " }}" in rule["annotations"]["description"]


def documented_metrics() -> set[str]:
    text = (ROOT / "docs" / "metrics.md").read_text()
    names = set(re.findall(r"^\| `([a-z_]+)[{`]", text, re.MULTILINE))
    histograms = set(re.findall(r"^\| `([a-z_]+)` \| histogram", text, re.MULTILINE))
    return names | {f"{name}_{suffix}" for name in histograms for suffix in ("bucket", "count")}


def test_rules_read_only_documented_metrics_up_and_the_thresholds() -> None:
    documented = documented_metrics()
    recorded = {rule["record"] for rule in rules("record")}

    for rule in ALERT_RULES:
        used = set(re.findall(r"\b((?:cts_[a-z_]+|up)(?::[a-z0-9_]+)*)\s*[{)\[]", rule["expr"]))
        used |= set(re.findall(r"\bcts_[a-z_]+:[a-z0-9_:]+", rule["expr"]))
        assert used, rule["alert"]
        assert used <= documented | recorded | {"up"}, rule["alert"]


def test_every_threshold_is_a_constant_that_an_alert_reads() -> None:
    expressions = " ".join(rule["expr"] for rule in ALERT_RULES)

    for rule in rules("record"):
        assert re.fullmatch(r"cts_(import|exporter):[a-z0-9_]+_threshold_seconds", rule["record"])
        assert re.fullmatch(r"vector\([0-9]+\)", rule["expr"])
        assert f"scalar({rule['record']})" in expressions


def test_per_job_alerts_aggregate_away_the_replica() -> None:
    for rule in ALERT_RULES:
        if rule["alert"].startswith("CtsImport"):
            assert "without (instance, pod)" in rule["expr"], rule["alert"]


def test_alertmanager_config_passes_amtool_check() -> None:
    result = run("amtool", "check-config", str(ALERTMANAGER_CONFIG))

    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (["severity=critical", "alertname=CtsImportFailed"], "cts-import-pager"),
        (["severity=critical", "alertname=CtsExporterDown"], "cts-import-pager"),
        (["severity=warning", "alertname=CtsImportStuck"], "cts-import-ticket"),
        (["alertname=SomethingWithoutSeverity"], "cts-import-ticket"),
    ],
)
def test_each_severity_reaches_its_receiver(labels: list[str], receiver: str) -> None:
    result = run(
        "amtool",
        "config",
        "routes",
        "test",
        f"--config.file={ALERTMANAGER_CONFIG}",
        f"--verify.receivers={receiver}",
        *labels,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.split() == [receiver]


def test_every_severity_used_by_the_rules_has_its_own_receiver() -> None:
    routes = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())["route"]["routes"]
    routed = {route["matchers"][0]: route["receiver"] for route in routes}

    for severity in {rule["labels"]["severity"] for rule in ALERT_RULES}:
        assert f'severity="{severity}"' in routed


def test_a_burst_of_failed_jobs_is_one_notification() -> None:
    route = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())["route"]

    assert "alertname" in route["group_by"]
    assert "job_id" not in route["group_by"]
    assert all("group_by" not in child for child in route["routes"])


def test_exporter_alerts_inhibit_every_import_alert() -> None:
    inhibitions = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())["inhibit_rules"]
    pairs = []
    for rule in inhibitions:
        source = re.fullmatch(r'alertname=~?"(.+)"', rule["source_matchers"][0])
        target = re.fullmatch(r'alertname=~?"(.+)"', rule["target_matchers"][0])
        assert source and target
        pairs.append((source.group(1), target.group(1)))

    for source_name in [name for name in ALERT_NAMES if name.startswith("CtsExporter")]:
        for target_name in [name for name in ALERT_NAMES if name.startswith("CtsImport")]:
            assert any(
                re.fullmatch(source, source_name) and re.fullmatch(target, target_name)
                for source, target in pairs
            ), (source_name, target_name)


def firing(alertname: str, **labels: str) -> dict[str, Any]:
    return {"labels": {"alertname": alertname, "job": "cts-import-exporter", **labels}}


def test_alertmanager_holds_back_import_alerts_while_the_exporter_cannot_scan() -> None:
    with start_alertmanager(ALERTMANAGER_CONFIG.read_text()) as alertmanager:
        posted = [
            firing("CtsImportFailed", severity="critical", job_id="f0c24820"),
            firing("CtsExporterAuthFailing", severity="critical", instance="10.0.0.1:9853"),
            firing("CtsExporterScanFailing", severity="critical", instance="10.0.0.1:9853"),
        ]
        httpx.post(alertmanager.url + "/api/v2/alerts", json=posted, timeout=10)

        def states() -> dict[str, str]:
            alerts = alertmanager.alerts()
            return {alert["labels"]["alertname"]: alert["status"]["state"] for alert in alerts}

        # Inhibitions are computed as alerts arrive; poll until all three are known.
        wait_until(lambda: len(states()) == 3, 10, "Alertmanager to hold the posted alerts")
        wait_until(
            lambda: states()["CtsImportFailed"] == "suppressed", 10, "the import alert to be held"
        )
        assert states() == {
            "CtsImportFailed": "suppressed",
            "CtsExporterScanFailing": "suppressed",
            "CtsExporterAuthFailing": "active",
        }

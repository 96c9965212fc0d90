"""The example Kubernetes manifests: they parse, fit together, and carry the rules in alerts/."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
KUBERNETES = ROOT / "deploy" / "kubernetes"
GENERATE = KUBERNETES / "generate.py"
EXPORTER_PORT = 9853


def manifest(name: str) -> dict[str, Any]:
    """One manifest file, parsed."""
    document: dict[str, Any] = yaml.safe_load((KUBERNETES / name).read_text())
    return document


def exporter_container() -> dict[str, Any]:
    """The exporter container of the Deployment."""
    [container] = manifest("deployment.yaml")["spec"]["template"]["spec"]["containers"]
    exporter: dict[str, Any] = container
    return exporter


def generate(*args: str) -> subprocess.CompletedProcess[str]:
    """Run deploy/kubernetes/generate.py."""
    return subprocess.run(
        [sys.executable, str(GENERATE), *args], capture_output=True, text=True, check=False
    )


def test_kustomization_lists_every_manifest_and_each_exists() -> None:
    listed = manifest("kustomization.yaml")["resources"]
    on_disk = {path.name for path in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(listed) == sorted(on_disk)
    for name in listed:
        assert manifest(name)["kind"]


def test_deployment_runs_non_root_with_a_read_only_root_filesystem() -> None:
    pod = manifest("deployment.yaml")["spec"]["template"]["spec"]
    container = exporter_container()

    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]


def test_deployment_probes_healthz_on_the_metrics_port() -> None:
    container = exporter_container()
    [port] = container["ports"]

    assert port["containerPort"] == EXPORTER_PORT
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": port["name"]}


def test_token_comes_from_a_secret_file_the_exporter_is_pointed_at() -> None:
    pod = manifest("deployment.yaml")["spec"]["template"]["spec"]
    container = exporter_container()
    environment = {entry["name"]: entry.get("value") for entry in container["env"]}
    token_file = Path(environment["CTS_EXPORTER_CTS_TOKEN_FILE"])

    [mount] = [m for m in container["volumeMounts"] if Path(m["mountPath"]) == token_file.parent]
    [volume] = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert mount["readOnly"] is True
    assert token_file.name in [item["path"] for item in volume["secret"]["items"]]
    assert "CTS_EXPORTER_CTS_TOKEN" not in environment
    assert not any("token" in arg for arg in container.get("args", []))


def test_service_selects_the_deployment_pods_and_exposes_the_metrics_port() -> None:
    deployment = manifest("deployment.yaml")
    service = manifest("service.yaml")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]

    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    [port] = service["spec"]["ports"]
    assert port["targetPort"] == exporter_container()["ports"][0]["name"]
    assert port["port"] == EXPORTER_PORT


def test_service_monitor_scrapes_the_service_under_the_job_name_the_alerts_select() -> None:
    service = manifest("service.yaml")
    monitor = manifest("servicemonitor.yaml")

    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert [endpoint["port"] for endpoint in monitor["spec"]["endpoints"]] == [
        service["spec"]["ports"][0]["name"]
    ]
    # Without a jobLabel, the Prometheus Operator names the job after the Service.
    assert "jobLabel" not in monitor["spec"]
    assert service["metadata"]["name"] == "cts-import-exporter"


def test_prometheus_rule_holds_exactly_the_groups_of_alerts_rules_files() -> None:
    rule = manifest("prometheusrule.yaml")
    expected = [
        group
        for path in sorted((ROOT / "alerts").glob("*.rules.yml"))
        for group in yaml.safe_load(path.read_text())["groups"]
    ]
    assert expected
    assert rule["kind"] == "PrometheusRule"
    assert rule["spec"]["groups"] == expected


def test_generator_check_passes_on_the_committed_prometheus_rule() -> None:
    result = generate("--check")
    assert result.returncode == 0, result.stderr


def test_generator_check_fails_when_a_rule_changes_on_one_side_only(tmp_path: Path) -> None:
    alerts = tmp_path / "alerts"
    shutil.copytree(ROOT / "alerts", alerts)
    rules_file = next(
        path for path in sorted(alerts.glob("*.rules.yml")) if "for: " in path.read_text()
    )
    rules_file.write_text(rules_file.read_text().replace("for: ", "for: 1", 1))

    result = generate("--check", "--alerts", str(alerts))

    assert result.returncode == 1
    assert "out of date" in result.stderr


def test_generator_writes_what_check_then_accepts(tmp_path: Path) -> None:
    output = tmp_path / "prometheusrule.yaml"

    assert generate("--output", str(output)).returncode == 0
    assert generate("--check", "--output", str(output)).returncode == 0
    assert output.read_text() == (KUBERNETES / "prometheusrule.yaml").read_text()

"""The local stack in compose.yaml: it parses, its services agree, and what it mounts is valid.

Prometheus and Alertmanager configs are checked by the real promtool and amtool, on a copy of the
files laid out where compose mounts them, so a path that is right on the host but wrong in the
container fails here too.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
OUR_IMAGE_SERVICES = ("cts", "exporter")
EXPORTER_PORT = 9853


def flags(service: str) -> dict[str, str]:
    """The ``--name=value`` arguments of a service's command."""
    pairs = (arg.removeprefix("--").split("=", 1) for arg in SERVICES[service]["command"])
    return {pair[0]: pair[1] for pair in pairs if len(pair) == 2}


def bind_mounts(service: str) -> dict[PurePosixPath, Path]:
    """Container path to host path for a service's bind mounts (sources starting with ./)."""
    mounts = {}
    for volume in SERVICES[service].get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("./"):
            mounts[PurePosixPath(target)] = ROOT / source
    return mounts


def named_volume_target(service: str, volume: str) -> PurePosixPath:
    """Where a service mounts a named volume."""
    for entry in SERVICES[service].get("volumes", []):
        source, target = entry.split(":")[:2]
        if source == volume:
            return PurePosixPath(target)
    raise AssertionError(f"{service} does not mount the volume {volume}")


def lay_out_mounts(service: str, root: Path) -> Path:
    """Copy a service's bind mounts under ``root`` at their container paths; returns ``root``."""
    for target, source in bind_mounts(service).items():
        destination = root / target.relative_to("/")
        destination.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, destination)
        else:
            shutil.copy(source, destination)
    return root


def in_container(root: Path, path: str) -> Path:
    """A container path under the laid-out ``root``."""
    return root / PurePosixPath(path).relative_to("/")


def provisioned(root: Path, kind: str) -> list[dict[str, Any]]:
    """The entries (providers, datasources) of Grafana's provisioning files of one kind."""
    key = "providers" if kind == "dashboards" else kind
    directory = in_container(root, f"/etc/grafana/provisioning/{kind}")
    return [
        entry
        for path in sorted(directory.glob("*.y*ml"))
        for entry in yaml.safe_load(path.read_text())[key]
    ]


def test_every_bind_mount_and_build_context_exists_in_the_repository() -> None:
    sources = [source for name in SERVICES for source in bind_mounts(name).values()]
    assert sources, "the stack mounts no configuration"
    missing = [str(source.relative_to(ROOT)) for source in sources if not source.exists()]
    assert missing == []
    contexts = [ROOT / service["build"] for service in SERVICES.values() if "build" in service]
    assert contexts and all((context / "Dockerfile").is_file() for context in contexts)


def test_named_volumes_are_declared() -> None:
    used = {
        entry.split(":")[0]
        for service in SERVICES.values()
        for entry in service.get("volumes", [])
        if not entry.startswith(("./", "/"))
    }
    assert used <= set(COMPOSE["volumes"])


def test_services_running_the_project_image_have_a_read_only_root_filesystem() -> None:
    images = {SERVICES[name]["image"] for name in OUR_IMAGE_SERVICES}
    assert len(images) == 1
    assert all(SERVICES[name]["read_only"] is True for name in OUR_IMAGE_SERVICES)


def test_exporter_reads_the_token_the_simulator_writes_on_the_shared_volume() -> None:
    token_path = PurePosixPath(flags("cts")["admin-token-file"])
    exporter_token = PurePosixPath(
        SERVICES["exporter"]["environment"]["CTS_EXPORTER_CTS_TOKEN_FILE"]
    )
    assert exporter_token == token_path
    for name in OUR_IMAGE_SERVICES:
        assert token_path.parent == named_volume_target(name, "shared")
    assert "CTS_EXPORTER_CTS_TOKEN" not in SERVICES["exporter"]["environment"]


def test_exporter_scans_the_simulated_cts_service_on_its_listen_port() -> None:
    cts_url = urlsplit(flags("exporter")["cts-url"])
    simulator_port = int(flags("cts")["listen-address"].rsplit(":", 1)[1])
    assert (cts_url.hostname, cts_url.port) == ("cts", simulator_port)
    assert SERVICES["exporter"]["depends_on"]["cts"]["condition"] == "service_healthy"
    assert f":{simulator_port}/" in " ".join(SERVICES["cts"]["healthcheck"]["test"])


def test_prometheus_config_passes_promtool_and_loads_every_alert_rules_file(
    tmp_path: Path,
) -> None:
    root = lay_out_mounts("prometheus", tmp_path)
    config = in_container(root, flags("prometheus")["config.file"])

    result = subprocess.run(
        ["promtool", "check", "config", str(config)], capture_output=True, text=True, check=False
    )

    assert result.returncode == 0, result.stdout + result.stderr
    rules_files = sorted(path.name for path in (ROOT / "alerts").glob("*.rules.yml"))
    assert rules_files
    checked = sorted(Path(line).name for line in re.findall(r"Checking (\S+)", result.stdout))
    assert checked == sorted([config.name, *rules_files])


def test_prometheus_scrapes_the_exporter_under_the_job_name_the_alerts_select() -> None:
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    [job] = config["scrape_configs"]
    targets = [target for entry in job["static_configs"] for target in entry["targets"]]

    assert job["job_name"] == "cts-import-exporter"
    assert targets == [f"exporter:{EXPORTER_PORT}"]
    rules = "".join(path.read_text() for path in (ROOT / "alerts").glob("*.rules.yml"))
    assert 'job="cts-import-exporter"' in rules
    assert f"127.0.0.1:{EXPORTER_PORT}:{EXPORTER_PORT}" in SERVICES["exporter"]["ports"]


def test_prometheus_sends_alerts_to_the_alertmanager_service() -> None:
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    targets = [
        target
        for manager in config["alerting"]["alertmanagers"]
        for entry in manager["static_configs"]
        for target in entry["targets"]
    ]
    assert targets == ["alertmanager:9093"]
    assert "alertmanager" in SERVICES


def test_alertmanager_config_passes_amtool(tmp_path: Path) -> None:
    root = lay_out_mounts("alertmanager", tmp_path)
    config = in_container(root, flags("alertmanager")["config.file"])

    result = subprocess.run(
        ["amtool", "check-config", str(config)], capture_output=True, text=True, check=False
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_grafana_loads_the_dashboards_from_where_compose_mounts_them(tmp_path: Path) -> None:
    root = lay_out_mounts("grafana", tmp_path)
    providers = provisioned(root, "dashboards")
    assert providers
    for provider in providers:
        dashboards = in_container(root, provider["options"]["path"])
        assert sorted(dashboards.glob("*.json")), f"no dashboards at {provider['options']['path']}"

    home = SERVICES["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert in_container(root, home).is_file()


def test_grafana_queries_the_prometheus_service(tmp_path: Path) -> None:
    root = lay_out_mounts("grafana", tmp_path)
    datasources = [
        source for source in provisioned(root, "datasources") if source["type"] == "prometheus"
    ]
    assert datasources
    port = int(flags("prometheus").get("web.listen-address", ":9090").rsplit(":", 1)[1])
    assert {urlsplit(source["url"]).netloc for source in datasources} == {f"prometheus:{port}"}


@pytest.mark.parametrize("service", ["prometheus", "alertmanager", "grafana"])
def test_third_party_images_are_pinned_to_a_version(service: str) -> None:
    image = SERVICES[service]["image"]
    name, _, tag = image.rpartition(":")
    assert name and tag and tag != "latest"

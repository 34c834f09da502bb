"""Compose, Prometheus and Grafana configuration: promtool and docker-compose accept them, the alert rules
pass their unit tests, and the pieces point at each other (service name, port, datasource, dashboard)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

# What an operator watches; each must have a panel (issue: request rate, latency percentiles, batch size,
# queue depth, errors by status).
REQUIRED_PANELS = ("Request rate", "Latency percentiles", "Batch size", "Queue depth", "Errors by status")


@pytest.fixture(scope="module")
def compose_dir(kit: Any) -> Path:
    """deploy/compose."""
    return kit.deploy / "compose"


@pytest.fixture(scope="module")
def dashboard(compose_dir: Path) -> dict[str, Any]:
    """The provisioned Grafana dashboard."""
    return json.loads((compose_dir / "grafana" / "dashboards" / "trainserve.json").read_text())


def test_promtool_accepts_the_config_and_rules(kit: Any, compose_dir: Path) -> None:
    """`promtool check config` (which also checks the rule files it names) passes."""
    out = kit.run(kit.tool("promtool"), "check", "config", str(compose_dir / "prometheus" / "prometheus.yml"))
    assert "SUCCESS" in out.stdout


def test_alert_rules_pass_their_unit_tests(kit: Any, compose_dir: Path) -> None:
    """`promtool test rules`: each alert fires on the series it is meant for and stays quiet otherwise."""
    kit.run(kit.tool("promtool"), "test", "rules", "alerts_test.yml", cwd=compose_dir / "prometheus")


@pytest.mark.parametrize("files", [("compose.yaml",), ("compose.yaml", "compose.gpu.yaml")])
def test_docker_compose_accepts_the_files(kit: Any, compose_dir: Path, files: tuple[str, ...]) -> None:
    """docker-compose validates the files against the Compose schema (no daemon needed)."""
    argv = [kit.tool("docker-compose")]
    for name in files:
        argv += ["-f", str(compose_dir / name)]
    kit.run(*argv, "config", "--quiet", cwd=compose_dir)


def test_prometheus_scrapes_the_compose_service(kit: Any, compose_dir: Path) -> None:
    """The scrape target is the compose service on the port the image exposes, only on 127.0.0.1 outside."""
    compose = yaml.safe_load((compose_dir / "compose.yaml").read_text())
    config = yaml.safe_load((compose_dir / "prometheus" / "prometheus.yml").read_text())
    targets = [t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    exposed = re.search(r"^EXPOSE (\d+)\b", (kit.repo / "Dockerfile").read_text(), re.MULTILINE)  # HTTP first
    assert exposed and targets == [f"trainserve:{exposed.group(1)}"]
    assert "trainserve" in compose["services"]
    for service in compose["services"].values():
        assert all(str(p).startswith("127.0.0.1:") for p in service.get("ports", []))


def test_dashboard_is_provisioned_against_the_provisioned_datasource(compose_dir: Path,
                                                                    dashboard: dict[str, Any]) -> None:
    """Every panel and query uses the datasource uid Grafana is given; the provider loads the folder the
    compose file mounts."""
    grafana = compose_dir / "grafana"
    sources = yaml.safe_load((grafana / "provisioning" / "datasources" / "prometheus.yaml").read_text())
    uid = sources["datasources"][0]["uid"]
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == uid, panel["title"]
        assert all(t["datasource"]["uid"] == uid for t in panel["targets"]), panel["title"]
    provider = yaml.safe_load((grafana / "provisioning" / "dashboards" / "trainserve.yaml").read_text())
    folder = provider["providers"][0]["options"]["path"]
    compose = yaml.safe_load((compose_dir / "compose.yaml").read_text())["services"]["grafana"]
    assert f"./grafana/dashboards:{folder}:ro" in compose["volumes"]
    home = compose["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{folder}/trainserve.json"


def test_dashboard_has_the_panels_operators_need(dashboard: dict[str, Any]) -> None:
    """Request rate, latency percentiles, batch size, queue depth and errors by status, each with a query;
    panels do not overlap."""
    titles = [p["title"] for p in dashboard["panels"]]
    assert set(REQUIRED_PANELS) <= set(titles)
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(set(ids)) == len(ids)
    cells: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        assert panel["targets"] and all(t["expr"] for t in panel["targets"]), panel["title"]
        pos = panel["gridPos"]
        mine = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"])
                for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not cells & mine, f"{panel['title']} overlaps another panel"
        cells |= mine

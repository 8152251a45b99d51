"""The provisioned Grafana: its datasource and dashboard files are what the container will load, and every
panel's PromQL is valid (promtool parses it, Grafana's variables substituted as Grafana would)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from tests.compose.stack import (
    DASHBOARD,
    GRAFANA_PROVISIONING,
    GRAFANA_VARIABLES,
    compose_stack,
    dashboard,
    dashboard_expressions,
    dashboard_panels,
    load_yaml,
    run_promtool,
)

GRID_WIDTH = 24
# What the issue asks the dashboard to show: a panel title matching each.
ASKED_FOR = {
    "request rate": r"requests/s",
    "latency percentiles": r"latency \(p50, p95, p99\)",
    "errors": r"errors|5xx",
    "time to first token": r"time to first token",
    "tokens": r"tokens",
    "cost": r"cost",
    "open streams": r"streams",
    "breaker state": r"circuit",
    "pool usage": r"database connections",
}


def provisioned_datasource() -> dict:
    (datasource,) = load_yaml(GRAFANA_PROVISIONING / "datasources" / "prometheus.yml")["datasources"]
    return datasource


def container_path_of(host_path: Path) -> str:
    """Where compose mounts ``host_path`` into the grafana container."""
    for volume in compose_stack()["services"]["grafana"]["volumes"]:
        source, target, *_ = volume.split(":")
        if (DASHBOARD.parents[2] / source).resolve() == host_path.resolve():
            return target
    raise AssertionError(f"{host_path} is not mounted into grafana")


def test_datasource_points_at_the_stacks_prometheus() -> None:
    datasource = provisioned_datasource()
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    assert "prometheus" in compose_stack()["services"]


def test_dashboard_provider_reads_the_mounted_dashboards() -> None:
    (provider,) = load_yaml(GRAFANA_PROVISIONING / "dashboards" / "agentctl.yml")["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == container_path_of(DASHBOARD.parent)
    assert container_path_of(GRAFANA_PROVISIONING) == "/etc/grafana/provisioning"
    home = compose_stack()["services"]["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{provider['options']['path']}/{DASHBOARD.name}"


def test_dashboard_is_a_grafana_model_whose_panels_query_the_provisioned_datasource() -> None:
    model = dashboard()
    assert model["uid"]
    assert model["title"]
    assert isinstance(model["schemaVersion"], int)
    panels = list(dashboard_panels(model))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    uid = provisioned_datasource()["uid"]
    graphs = [panel for panel in panels if panel["type"] != "row"]
    assert graphs
    for panel in graphs:
        assert panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": uid}, panel["title"]
        assert panel["targets"], f"{panel['title']} has no query"
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert target.get("datasource", panel["datasource"]) == panel["datasource"]
    for variable in model["templating"]["list"]:
        assert variable["datasource"]["uid"] == uid


def test_panels_fit_the_grid_without_overlapping() -> None:
    taken: dict[tuple[int, int], str] = {}
    for panel in dashboard_panels():
        grid = panel["gridPos"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= GRID_WIDTH, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in taken, f"{panel['title']} overlaps {taken[(x, y)]}"
                taken[(x, y)] = panel["title"]


def test_dashboard_shows_what_the_issue_asks_for() -> None:
    titles = " | ".join(panel["title"].lower() for panel in dashboard_panels())
    missing = [what for what, pattern in ASKED_FOR.items() if not re.search(pattern, titles)]
    assert missing == []


def test_every_panel_query_is_valid_promql(tmp_path: Path) -> None:
    """promtool parses recording rules: one per query makes it parse every expression of the dashboard."""
    rules = []
    for number, expression in enumerate(dashboard_expressions()):
        if expression.startswith("label_values("):
            # A Grafana function, not PromQL: its first argument is a metric name (or a selector).
            expression = re.fullmatch(r"label_values\((.+),\s*\w+\)", expression)[1]
        for variable, value in GRAFANA_VARIABLES.items():
            expression = expression.replace(variable, value)
        assert "$" not in expression, f"a Grafana variable promtool cannot resolve: {expression}"
        rules.append({"record": f"dashboard:query_{number}", "expr": expression})
    rules_file = tmp_path / "dashboard_queries.yml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    checked = run_promtool("check", "rules", str(rules_file))
    assert checked.returncode == 0, checked.stdout + checked.stderr

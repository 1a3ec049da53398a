"""docker/grafana: the "OLSS latency" dashboard is well formed, its queries parse, and the
provisioning files reach it and the compose stack's Prometheus."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.deploy_files import (
    DASHBOARD,
    GRAFANA_PROVISIONING,
    all_panels,
    dashboard_queries,
    host_path,
    load_dashboard,
    load_yaml,
    promtool,
    published_ports,
    run_tool,
    template_variables,
    with_grafana_variables_filled,
)

GRID_COLUMNS = 24
PANEL_TYPES = {"timeseries", "stat", "gauge", "bargauge", "table", "text", "row", "heatmap"}
QUANTILES = ("0.5", "0.9", "0.99")


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return load_dashboard()


@pytest.fixture(scope="module")
def grafana_service(gpu_stack: dict[str, Any]) -> dict[str, Any]:
    return gpu_stack["services"]["grafana"]


def datasource() -> dict[str, Any]:
    files = sorted((GRAFANA_PROVISIONING / "datasources").glob("*.y*ml"))
    (source,) = [d for f in files for d in load_yaml(f)["datasources"]]
    return source


def query_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in all_panels(dashboard) if p["type"] not in {"row", "text"}]


def test_dashboard_is_olss_latency(dashboard: dict[str, Any]) -> None:
    assert dashboard["title"] == "OLSS latency"
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,40}", dashboard["uid"])
    assert isinstance(dashboard["schemaVersion"], int) and dashboard["schemaVersion"] >= 30
    assert dashboard["panels"] and dashboard["time"]["from"].startswith("now-")


def test_panel_ids_are_unique_integers(dashboard: dict[str, Any]) -> None:
    ids = [panel["id"] for panel in all_panels(dashboard)]
    assert all(isinstance(i, int) for i in ids) and len(ids) == len(set(ids))


def test_panels_fit_the_grid_without_overlapping(dashboard: dict[str, Any]) -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in all_panels(dashboard):
        assert panel["type"] in PANEL_TYPES, panel["title"]
        grid = panel["gridPos"]
        assert all(isinstance(grid[k], int) for k in ("x", "y", "w", "h")), panel["title"]
        assert grid["x"] >= 0 and grid["y"] >= 0 and grid["w"] > 0 and grid["h"] > 0
        assert grid["x"] + grid["w"] <= GRID_COLUMNS, f"{panel['title']} is wider than the grid"
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def test_every_panel_queries_the_provisioned_prometheus(dashboard: dict[str, Any]) -> None:
    uid = datasource()["uid"]
    for panel in query_panels(dashboard):
        assert panel["title"].strip()
        assert panel["datasource"] == {"type": "prometheus", "uid": uid}, panel["title"]
        targets = panel["targets"]
        assert targets, f"{panel['title']} has no targets"
        ref_ids = [t["refId"] for t in targets]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in targets:
            assert target["expr"].strip(), panel["title"]
            assert target.get("datasource", panel["datasource"]) == panel["datasource"]


def test_dashboard_queries_parse_as_promql(tmp_path: Path) -> None:
    queries = dashboard_queries(load_dashboard())
    rules = [
        {"record": f"dashboard:query_{n}", "expr": with_grafana_variables_filled(q)}
        for n, q in enumerate(queries)
    ]
    rule_file = tmp_path / "dashboard_rules.yml"
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run_tool(promtool(), "check", "rules", rule_file)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(queries)} rules found" in result.stdout


def panel_queries(dashboard: dict[str, Any], metric: str) -> list[str]:
    return [q for q in dashboard_queries(dashboard) if metric in q]


@pytest.mark.parametrize(
    ("histogram", "grouping"),
    [
        ("olss_job_e2e_seconds", "le"),
        ("olss_job_queue_wait_seconds", "le"),
        ("olss_job_inference_seconds", "le, stage"),
    ],
)
def test_latency_quantiles_come_from_summed_bucket_rates(
    dashboard: dict[str, Any], histogram: str, grouping: str
) -> None:
    queries = panel_queries(dashboard, f"{histogram}_bucket")
    for quantile in QUANTILES:
        wanted = re.compile(
            rf"histogram_quantile\({re.escape(quantile)}, sum by \({grouping}\) "
            rf"\(rate\({histogram}_bucket(\{{[^{{}}]*\}})?\[\$__rate_interval\]\)\)\)"
        )
        assert any(wanted.search(q) for q in queries), f"no p{quantile} of {histogram}"


def test_dashboard_shows_throughput_queue_workers_batches_errors_and_the_slo(
    dashboard: dict[str, Any],
) -> None:
    queries = dashboard_queries(dashboard)
    joined = "\n".join(queries)
    assert "rate(olss_jobs_total" in joined
    assert "olss_queue_depth" in joined and "olss_workers" in joined
    assert "olss_batch_size_bucket" in joined or "olss_batch_size_sum" in joined
    assert any("by (status)" in q and "olss_request_duration_seconds_count" in q for q in queries)
    slo = [q for q in queries if re.search(r'olss_job_e2e_seconds_bucket\{le=~?"[^"]*"[,}]', q)]
    assert slo and all("olss_job_e2e_seconds_count" in q for q in slo)


def test_datasource_points_at_the_compose_prometheus(gpu_stack: dict[str, Any]) -> None:
    source = datasource()
    stack = gpu_stack["services"]
    assert source["type"] == "prometheus" and source["isDefault"] is True
    host, port = re.fullmatch(r"http://([\w-]+):(\d+)", source["url"]).groups()
    assert host in stack and int(port) in published_ports(stack[host])


def test_provisioning_and_home_dashboard_reach_the_json(grafana_service: dict[str, Any]) -> None:
    assert host_path(grafana_service, "/etc/grafana/provisioning") == GRAFANA_PROVISIONING
    providers = [
        p for f in sorted((GRAFANA_PROVISIONING / "dashboards").glob("*.y*ml"))
        for p in load_yaml(f)["providers"]
    ]
    assert providers
    for provider in providers:
        assert provider["type"] == "file"
        assert host_path(grafana_service, provider["options"]["path"]) == DASHBOARD.parent
    home = grafana_service["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert host_path(grafana_service, home) == DASHBOARD


# Series each worker exports with a model label, and the gateway's per-model gauges.
WORKER_SERIES = re.compile(
    r"olss_(job_\w+_seconds|batch_size|jobs_total|images_total|jobs_in_flight|worker_state"
    r"|device_memory_used_bytes)\w*"
)
GATEWAY_MODEL_SERIES = re.compile(r"olss_(queue_depth|queue_lag|workers|fleet_workers)\b")


def test_the_model_and_instance_variables_come_from_exported_series(
    dashboard: dict[str, Any],
) -> None:
    variables = {v.name: v for v in template_variables(dashboard)}
    assert set(variables) == {"model", "instance"}
    assert (variables["model"].label, variables["instance"].label) == ("model", "instance")
    assert "$model" in variables["instance"].selector  # the workers of the chosen models
    assert all(v.all_value == ".*" for v in variables.values())


def test_every_panel_follows_the_variables(dashboard: dict[str, Any]) -> None:
    """A worker series is filtered by model and instance, a per-model gauge by model, in every
    selector of every panel query."""
    for query in dashboard_queries(dashboard):
        for match in re.finditer(r"(olss_\w+)(\{[^{}]*\})?", query):
            name, selector = match.group(1), match.group(2) or ""
            if WORKER_SERIES.fullmatch(name):
                assert 'model=~"$model"' in selector and 'instance=~"$instance"' in selector, (
                    f"{name} in: {query}"
                )
            elif GATEWAY_MODEL_SERIES.fullmatch(name):
                assert 'model=~"$model"' in selector, f"{name} in: {query}"


def test_the_fleet_panels_show_states_lag_images_in_flight_memory_and_releases(
    dashboard: dict[str, Any],
) -> None:
    joined = "\n".join(dashboard_queries(dashboard))
    for series in ("olss_fleet_workers", "olss_queue_lag", "olss_images_total",
                   "olss_jobs_in_flight", "olss_device_memory_used_bytes", "olss_build_info"):
        assert series in joined, series

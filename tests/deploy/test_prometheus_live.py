"""A real Prometheus checks the dashboard and the alerts against a live gateway and worker.

Debian's ``prometheus`` server scrapes a gateway and a tiny-model worker on loopback every
second, with the alert rules of docker/prometheus/alerts.yml loaded. After some traffic, the
dashboard's variables must list the live model and worker (as Grafana's ``label_values`` asks
Prometheus's series API), every panel query must return data through Prometheus's HTTP API with
the variables at "All" and at that model and worker, every alert rule must evaluate without
error, and every series an alert reads must exist.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from tests.deploy.deploy_files import (
    ALERT_RULES,
    alert_rules,
    dashboard_queries,
    load_dashboard,
    series_names,
    template_variables,
    with_grafana_variables_filled,
)
from tests.support.ports import free_port
from tests.support.processes import service_env, start_gateway, start_worker
from tests.support.redis_db import clean_db, redis_url

pytestmark = pytest.mark.e2e

LIVE_DB = 8
SCRAPE_S = 1
START_TIMEOUT_S = 60


def prometheus_binary() -> str:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("the prometheus server is not installed (make deploy-tools installs it)")
    return binary


def query(prometheus: str, expr: str) -> list[dict]:
    response = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10)
    body = response.json()
    assert body["status"] == "success", f"{expr}: {body}"
    return body["data"]["result"]


@dataclass(frozen=True)
class Live:
    """The Prometheus's URL, and the values the dashboard's variables can take: the served
    model and the worker's scrape target."""

    url: str
    values: dict[str, str]


@pytest.fixture(scope="module")
def live(tiny_pipeline_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """A Prometheus scraping a live gateway and worker that have served a few jobs."""
    tmp = tmp_path_factory.mktemp("prometheus-live")
    with clean_db(LIVE_DB):
        env = service_env(redis_url(LIVE_DB), schedule_dir=tmp / "schedules",
                          model=tiny_pipeline_dir, cache_dir=tmp / "cache", log_level="warning")
        with start_worker(env) as worker, start_gateway(env) as gateway:
            shutil.copy(ALERT_RULES, tmp / "alerts.yml")
            worker_target = worker.metrics_url.removeprefix("http://").split("/")[0]
            config = {
                "global": {"scrape_interval": f"{SCRAPE_S}s",
                           "evaluation_interval": f"{SCRAPE_S}s"},
                "rule_files": ["alerts.yml"],
                "scrape_configs": [
                    {"job_name": "gateway",
                     "static_configs": [{"targets": [gateway.url.removeprefix("http://")]}]},
                    {"job_name": "worker", "static_configs": [{"targets": [worker_target]}]},
                ],
            }
            (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
            port = free_port()
            server = subprocess.Popen(
                [prometheus_binary(), f"--config.file={tmp / 'prometheus.yml'}",
                 f"--storage.tsdb.path={tmp / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            url = f"http://127.0.0.1:{port}"
            try:
                with httpx.Client(base_url=gateway.url, timeout=120) as http:
                    for n in range(4):
                        body = {"prompt": f"live {n}", "seed": n, "scheduler": "ddim", "steps": 2}
                        assert http.post("/generate", json=body).status_code == 200
                    http.get("/jobs/0123456789-" + "0" * 32)  # a 404, so status labels vary
                deadline = time.monotonic() + START_TIMEOUT_S
                while not all(t["health"] == "up" for t in _targets(url)):
                    assert time.monotonic() < deadline, "Prometheus never scraped both targets"
                    time.sleep(0.5)
                time.sleep(5 * SCRAPE_S)  # rate() needs several samples in its window
                yield Live(url, {"model": worker.info.model_key, "instance": worker_target})
            finally:
                server.terminate()
                server.wait(timeout=30)


def _targets(url: str) -> list[dict]:
    try:
        active = httpx.get(f"{url}/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
    except (httpx.TransportError, ValueError):
        return [{"health": "unknown"}]
    return active or [{"health": "unknown"}]


def label_values(url: str, selector: str, label: str) -> set[str]:
    """What Grafana's ``label_values(selector, label)`` lists: the label's values on the
    series the selector matches (Prometheus's series API)."""
    response = httpx.get(f"{url}/api/v1/series", params={"match[]": selector}, timeout=10)
    body = response.json()
    assert body["status"] == "success", f"{selector}: {body}"
    return {series[label] for series in body["data"] if label in series}


def test_the_variables_list_the_live_model_and_worker(live: Live) -> None:
    for variable in template_variables(load_dashboard()):
        selector = with_grafana_variables_filled(variable.selector)
        listed = label_values(live.url, selector, variable.label)
        assert listed == {live.values[variable.name]}, (variable.name, listed)


@pytest.mark.parametrize("expr", dashboard_queries(load_dashboard()))
def test_every_dashboard_query_returns_data(live: Live, expr: str) -> None:
    assert query(live.url, with_grafana_variables_filled(expr)), f"no data at All: {expr}"
    chosen = with_grafana_variables_filled(expr, live.values)
    assert query(live.url, chosen), f"no data for {live.values}: {chosen}"


def test_a_model_that_is_not_served_selects_nothing(live: Live) -> None:
    """The variables filter: another model's value empties the per-model panels."""
    expr = 'max by (model) (olss_workers{model=~"$model"})'
    assert query(live.url, with_grafana_variables_filled(expr, {"model": "not-served"})) == []


def test_every_alert_rule_evaluates_and_reads_existing_series(live: Live) -> None:
    prometheus = live.url
    rules = httpx.get(f"{prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
    loaded = {rule["name"]: rule for group in rules for rule in group["rules"]}
    for rule in alert_rules():
        evaluated = loaded[rule["alert"]]
        assert evaluated["health"] == "ok", (rule["alert"], evaluated.get("lastError"))
        for series in series_names(rule["expr"]):
            assert query(prometheus, f"count({series})"), f"{rule['alert']}: no {series}"

"""Every series the dashboard and the alerts query is one the gateway and a worker export.

Starts a private Redis, ``olss gateway`` restricted to the gateway image's packages (stdlib, the
gateway's code and the project's ``gateway`` extra with its dependencies: what the slim image
holds)
and ``olss worker`` on the tiny pipeline, runs one job through them, then reads both /metrics.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib.metadata import packages_distributions
from pathlib import Path

import httpx
import pytest
from packaging.utils import canonicalize_name
from prometheus_client.parser import text_string_to_metric_families

from olss_cli.dev_redis import start_local_redis
from olss_core import __version__
from tests.deploy.deploy_files import (
    alert_rules,
    dashboard_queries,
    gateway_requirements,
    grouping_labels,
    label_matchers,
    load_dashboard,
    requirement_closure,
    series_names,
)
from tests.support.ports import free_port
from tests.support.processes import service_env, start_gateway, start_worker

pytestmark = pytest.mark.e2e

# The project packages docker/gateway.Dockerfile copies (workers/ needs torch: not there).
PROJECT_PACKAGES = {"olss_core", "olss_cli", "app"}
# Series Prometheus adds itself, and labels it attaches to every scraped series.
PROMETHEUS_SERIES = {"up"}
TARGET_LABELS = {"job", "instance", "__name__"}
SERIES_SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("", "_sum", "_count"),
}

# A sitecustomize module for the gateway process: it makes the top-level modules of every
# installed distribution that the gateway image does not hold unimportable, as in the image.
GATEWAY_IMAGE_SITECUSTOMIZE = """
import importlib.abc, os, sys

with open(os.environ["GATEWAY_IMAGE_ABSENT_MODULES"]) as file:
    ABSENT = set(file.read().split())


class GatewayImage(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ABSENT:
            raise ModuleNotFoundError(f"No module named {name!r} in the gateway image", name=name)
        return None


sys.meta_path.insert(0, GatewayImage())
with open(os.environ["GATEWAY_IMAGE_ABSENT_MODULES"] + ".loaded", "w") as file:
    file.write(str(os.getpid()))
"""


def gateway_image_modules() -> set[str]:
    """Top-level modules of the distributions the gateway image installs, and the project's."""
    wanted = requirement_closure(gateway_requirements())
    modules = {
        module for module, dists in packages_distributions().items()
        if any(canonicalize_name(d) in wanted for d in dists)
    }
    return modules | PROJECT_PACKAGES


def modules_absent_from_the_gateway_image() -> set[str]:
    """Top-level modules of every installed distribution the gateway image does not hold."""
    return set(packages_distributions()) - gateway_image_modules()


@dataclass(frozen=True)
class Stack:
    gateway_url: str
    worker_metrics_url: str
    model: str
    gateway_pid: int
    gateway_restricted_pid: int | None


def gateway_image_env(env: dict[str, str], folder: Path) -> dict[str, str]:
    """``env`` for a gateway process that can import only what the gateway image installs."""
    (folder / "sitecustomize.py").write_text(GATEWAY_IMAGE_SITECUSTOMIZE)
    absent = folder / "absent-modules.txt"
    absent.write_text("\n".join(sorted(modules_absent_from_the_gateway_image())))
    return {
        **env,
        "PYTHONPATH": os.pathsep.join([str(folder), env["PYTHONPATH"]]),
        "GATEWAY_IMAGE_ABSENT_MODULES": str(absent),
    }


@pytest.fixture(scope="module")
def stack(tiny_pipeline_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A private Redis, a tiny-model worker and a gateway limited to its image; one job run."""
    tmp = tmp_path_factory.mktemp("deploy-stack")
    redis_url = f"redis://127.0.0.1:{free_port()}/0"
    redis_server = start_local_redis(redis_url, daemonize=False)
    env = service_env(
        redis_url, schedule_dir=tmp / "schedules", model=tiny_pipeline_dir,
        cache_dir=tmp / "cache", device="cpu", log_level="warning",
    )
    try:
        with start_worker(env) as worker, start_gateway(gateway_image_env(env, tmp)) as gateway:
            wait_until_ready(gateway.url)
            response = httpx.post(
                f"{gateway.url}/generate",
                json={"prompt": "a deploy check", "steps": 2, "scheduler": "ddim", "seed": 1},
                headers={"Accept": "image/png"}, timeout=120,
            )
            assert response.status_code == 200, (
                f"{response.text}\n--- gateway ---\n{gateway.log()}\n--- worker ---\n{worker.log()}"
            )
            assert response.content.startswith(b"\x89PNG")
            marker = tmp / "absent-modules.txt.loaded"
            restricted_pid = int(marker.read_text()) if marker.exists() else None
            yield Stack(gateway.url, worker.metrics_url, worker.info.model_key,
                        gateway.process.pid, restricted_pid)
    finally:
        if redis_server is not None:
            redis_server.terminate()
            redis_server.wait(timeout=10)


def wait_until_ready(gateway_url: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while httpx.get(f"{gateway_url}/readyz", timeout=5).status_code != 200:
        assert time.monotonic() < deadline, f"{gateway_url}/readyz not ready in {timeout_s} s"
        time.sleep(0.2)


@dataclass
class Exported:
    """What one or more /metrics pages declare: series names, their label names and values."""

    series: set[str] = field(default_factory=set)
    labels: dict[str, set[str]] = field(default_factory=dict)
    values: dict[tuple[str, str], set[str]] = field(default_factory=dict)

    def add(self, text: str) -> None:
        for family in text_string_to_metric_families(text):
            self.series |= {family.name + s for s in SERIES_SUFFIXES.get(family.type, ("",))}
            for sample in family.samples:
                self.series.add(sample.name)
                self.labels.setdefault(sample.name, set()).update(sample.labels)
                for label, value in sample.labels.items():
                    self.values.setdefault((sample.name, label), set()).add(value)


@pytest.fixture(scope="module")
def pages(stack: Stack) -> dict[str, str]:
    """The /metrics text of the gateway and of the worker."""
    texts = {}
    for name, url in (("gateway", f"{stack.gateway_url}/metrics"),
                      ("worker", stack.worker_metrics_url)):
        response = httpx.get(url, timeout=10)
        assert response.status_code == 200, url
        texts[name] = response.text
    return texts


@pytest.fixture(scope="module")
def exported(pages: dict[str, str]) -> Exported:
    found = Exported()
    for text in pages.values():
        found.add(text)
    return found


def monitoring_queries() -> dict[str, str]:
    """``{where: query}`` for every dashboard target and alert rule."""
    queries = {f"dashboard query {n}": q for n, q in enumerate(dashboard_queries(load_dashboard()))}
    queries.update({f"alert {rule['alert']}": rule["expr"] for rule in alert_rules()})
    return queries


def missing_series(queries: dict[str, str], exported: Exported) -> dict[str, set[str]]:
    missing = {}
    for where, query in queries.items():
        unknown = series_names(query) - exported.series - PROMETHEUS_SERIES
        if unknown:
            missing[where] = unknown
    return missing


def test_the_gateway_image_holds_no_torch() -> None:
    absent = modules_absent_from_the_gateway_image()
    assert {"torch", "diffusers", "transformers"} <= absent
    assert not {"fastapi", "uvicorn", "redis", "prometheus_client", "app"} & absent
    assert "workers" in absent


def test_the_gateway_served_a_job_with_only_its_image_packages(stack: Stack) -> None:
    assert stack.gateway_restricted_pid == stack.gateway_pid


def test_every_queried_series_is_exported(exported: Exported) -> None:
    assert missing_series(monitoring_queries(), exported) == {}


def test_a_query_for_an_unknown_series_is_reported(exported: Exported) -> None:
    queries = {"typo": "sum(rate(olss_job_e2e_second_bucket[5m]))", "ok": "max(olss_workers)"}
    assert missing_series(queries, exported) == {"typo": {"olss_job_e2e_second_bucket"}}


def test_queried_labels_exist_on_their_series(exported: Exported) -> None:
    for where, query in monitoring_queries().items():
        for matcher in label_matchers(query):
            if matcher.series in PROMETHEUS_SERIES or matcher.label in TARGET_LABELS:
                continue
            assert matcher.label in exported.labels.get(matcher.series, set()), (
                f"{where}: {matcher.series} has no label {matcher.label}"
            )
        used = series_names(query) - PROMETHEUS_SERIES
        labels = set().union(*(exported.labels.get(name, set()) for name in used))
        assert grouping_labels(query) - TARGET_LABELS <= labels, f"{where}: {query}"


def test_bucket_selectors_match_an_exported_bucket(exported: Exported) -> None:
    """``le="1"`` matches nothing when the client writes ``le="1.0"``; the SLO panel must match."""
    checked = 0
    for where, query in monitoring_queries().items():
        for matcher in label_matchers(query):
            if matcher.label == "le" and matcher.op in {"=", "=~"}:
                values = exported.values.get((matcher.series, "le"), set())
                assert any(matcher.matches(v) for v in values), f"{where}: {matcher} in {values}"
                checked += 1
    assert checked, "no query selects a histogram bucket (the SLO panel uses le=1)"


def test_status_labels_are_http_codes_for_the_5xx_queries(exported: Exported) -> None:
    statuses = exported.values[("olss_request_duration_seconds_count", "status")]
    assert statuses and all(s.isdigit() and len(s) == 3 for s in statuses), statuses


def test_workers_export_every_inference_stage(exported: Exported) -> None:
    stages = exported.values[("olss_job_inference_seconds_bucket", "stage")]
    assert {"encode", "denoise", "decode", "total"} <= stages


def test_no_created_series_are_exported(pages: dict[str, str]) -> None:
    for name, text in pages.items():
        assert "_created" not in text, name


def test_worker_series_carry_the_served_model_only(stack: Stack, pages: dict[str, str]) -> None:
    worker = Exported()
    worker.add(pages["worker"])
    for series, labels in worker.labels.items():
        if series == "olss_build_info":
            continue
        assert "model" in labels, series
        assert worker.values[(series, "model")] == {stack.model}, series


def test_fleet_series_are_exported_per_model_and_state(
    stack: Stack, exported: Exported
) -> None:
    for series in ("olss_queue_depth", "olss_queue_lag", "olss_workers"):
        assert exported.values[(series, "model")] == {stack.model}, series
    assert exported.values[("olss_fleet_workers", "state")] == {
        "loading", "calibrating", "ready", "draining", "stalled"
    }
    states = exported.values[("olss_worker_state", "state")]
    assert states == exported.values[("olss_fleet_workers", "state")]
    for series in ("olss_images_total", "olss_jobs_in_flight", "olss_device_memory_used_bytes"):
        assert series in exported.series, series
    assert exported.values[("olss_build_info", "version")] == {__version__}

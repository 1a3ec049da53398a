"""A real gateway and worker on a real three-node Redis Cluster (``OLSS_REDIS_CLUSTER``).

Every path of a job crosses the cluster: enqueue (Lua), the sync wait (the finish notice on one
node's pub/sub), the worker's start (one script per batch), progress and events (the SSE hub's
XREAD), the stored result (MULTI), images, a cancel while running, a failure that is
dead-lettered, and the per-model metrics and readiness.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from olss_core.keys import dead_stream
from olss_core.redis_clients import sync_client
from tests.support.jobs import submit, wait_for, wait_status
from tests.support.processes import Gateway, Worker, service_env, spawn_gateway, spawn_worker
from tests.support.redis_cluster import redis_cluster

pytestmark = pytest.mark.e2e

FAIL_MARKER = "[[fail on the cluster]]"
JOB = {"scheduler": "ddim", "steps": 3}
SLOW = {"scheduler": "ddim", "steps": 150}


@dataclass(frozen=True)
class ClusterStack:
    gateway: Gateway
    worker: Worker
    http: httpx.Client


@pytest.fixture(scope="module")
def cluster_stack(
    tiny_pipeline_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ClusterStack]:
    with redis_cluster() as nodes:
        env = service_env(
            nodes.url, schedule_dir=tmp_path_factory.mktemp("sched"), model=tiny_pipeline_dir,
            cache_dir=tmp_path_factory.mktemp("cache"), redis_cluster=True, max_attempts=1,
            test_step_delay_ms=20, test_fail_prompt=FAIL_MARKER, log_level="warning",
        )
        worker, gateway = spawn_worker(env), spawn_gateway(env)
        try:
            worker.wait_ready()
            gateway.wait_ready()
            with httpx.Client(base_url=gateway.url, timeout=60) as http:
                yield ClusterStack(gateway, worker, http)
        finally:
            gateway.stop()
            worker.stop()


def test_a_sync_request_is_answered_through_the_cluster(cluster_stack: ClusterStack) -> None:
    http = cluster_stack.http
    assert http.get("/readyz").status_code == 200
    response = http.post("/generate", json={"prompt": "sync on a cluster", "seed": 3, **JOB},
                         headers={"Accept": "image/png"})
    assert response.status_code == 200, cluster_stack.gateway.log()[-3000:]
    assert response.content.startswith(b"\x89PNG")
    assert "finish notices unavailable" not in cluster_stack.gateway.log()  # woken, not polled


def test_an_async_job_runs_streams_its_events_and_serves_its_images(
    cluster_stack: ClusterStack,
) -> None:
    http = cluster_stack.http
    job_id = submit(http, prompt="async on a cluster", num_images=2, **JOB)
    with http.stream("GET", f"/jobs/{job_id}/events") as events:
        text = "".join(events.iter_text())
    kinds = [line.removeprefix("event: ") for line in text.splitlines()
             if line.startswith("event: ")]
    assert kinds[0] == "queued" and kinds[-1] == "finished" and "step" in kinds, kinds
    view = wait_status(http, job_id, "succeeded")
    assert view["progress"]["step"] == JOB["steps"]
    for index in range(2):
        image = http.get(f"/jobs/{job_id}/images/{index}")
        assert image.status_code == 200 and image.content.startswith(b"\x89PNG")


def test_a_running_job_is_canceled_and_a_failing_one_dead_lettered(
    cluster_stack: ClusterStack,
) -> None:
    http = cluster_stack.http
    running = submit(http, prompt="long on a cluster", **SLOW)
    wait_for(lambda: http.get(f"/jobs/{running}").json()["progress"]["step"] >= 2,
             what="the job to make progress")
    assert http.delete(f"/jobs/{running}").status_code == 202
    assert wait_status(http, running, "canceled", timeout_s=30)["progress"]["step"] < 150

    failing = submit(http, prompt=f"fails {FAIL_MARKER}", **JOB)
    assert wait_status(http, failing, "failed")["error_type"] == "dead_lettered"
    redis = sync_client(cluster_stack.worker.redis)
    try:
        model = cluster_stack.worker.info.model_key
        assert failing in {fields["job_id"] for _, fields in redis.xrange(dead_stream(model))}
    finally:
        redis.close()


def test_metrics_and_readiness_count_the_models_ready_worker(
    cluster_stack: ClusterStack,
) -> None:
    model = cluster_stack.worker.info.model_key
    text = cluster_stack.http.get("/metrics").text
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    assert samples[("olss_workers", (("model", model),))] == 1
    assert samples[("olss_queue_depth", (("model", model),))] == 0
    assert samples[("olss_fleet_workers", (("model", model), ("state", "ready")))] == 1

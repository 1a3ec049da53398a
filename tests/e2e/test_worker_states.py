"""A worker's states as the gateway sees them, with a real gateway, worker and Redis.

The heartbeat starts before the model loads (``loading``: not ready, not counted as serving),
says ``ready`` once warmed up, ``stalled`` while its queue cannot be read and ``draining`` after
SIGTERM. A Redis that comes back empty (``FLUSHDB``: the consumer group is gone) does not stop
the worker: it makes the group again and the next job runs.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from olss_core.keys import jobs_stream
from olss_core.protocol import WorkerState
from tests.support.jobs import submit, wait_for, wait_status
from tests.support.processes import Gateway, Worker, service_env, spawn_gateway, spawn_worker
from tests.support.redis_db import clean_db, redis_url

pytestmark = pytest.mark.e2e

STATES_DB = 6
JOB = {"scheduler": "ddim", "steps": 2}
SETTINGS = {"lease_ms": 1500, "heartbeat_ttl_s": 3, "sync_timeout_s": 20,
            "test_step_delay_ms": 20, "log_level": "warning"}


@dataclass
class StartUp:
    """What was seen while the worker started: heartbeat states, /readyz codes, and
    ``olss_workers`` / ``olss_fleet_workers{state="loading"}`` while it was loading."""

    states: list[WorkerState] = field(default_factory=list)
    readyz_while_loading: set[int] = field(default_factory=set)
    worker_readyz_while_loading: set[int] = field(default_factory=set)
    metrics_while_loading: set[tuple[float, float]] = field(default_factory=set)


@dataclass
class States:
    gateway: Gateway
    worker: Worker
    db: redis.Redis
    http: httpx.Client
    start_up: StartUp


def gauges(http: httpx.Client, model: str) -> dict[str, float]:
    """``olss_workers`` and each ``olss_fleet_workers`` state of ``model`` (by state name)."""
    values = {}
    for family in text_string_to_metric_families(http.get("/metrics").text):
        for sample in family.samples:
            if sample.labels.get("model") != model:
                continue
            if sample.name == "olss_workers":
                values["ready workers"] = sample.value
            elif sample.name == "olss_fleet_workers":
                values[sample.labels["state"]] = sample.value
    return values


def worker_probe(metrics_port: int) -> httpx.Response:
    """The worker's own ``/readyz`` (what a Kubernetes readiness probe asks)."""
    return httpx.get(f"http://127.0.0.1:{metrics_port}/readyz", timeout=5)


def watch_start_up(worker: Worker, http: httpx.Client) -> StartUp:
    seen = StartUp()
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert worker.alive(), worker.log()[-3000:]
        info = worker.heartbeat()
        if info is not None:
            if not seen.states or seen.states[-1] is not info.state:
                seen.states.append(info.state)
            if info.state is WorkerState.READY:
                worker.wait_ready(timeout_s=1)
                return seen
            readyz = http.get("/readyz").status_code
            worker_readyz = worker_probe(info.metrics_port).status_code
            values = gauges(http, info.model_key)
            after = worker.heartbeat()
            if after is not None and after.state is WorkerState.LOADING:  # throughout
                seen.readyz_while_loading.add(readyz)
                seen.worker_readyz_while_loading.add(worker_readyz)
                seen.metrics_while_loading.add(
                    (values.get("ready workers", -1), values.get("loading", -1))
                )
        time.sleep(0.01)
    raise AssertionError("the worker never said ready")


@pytest.fixture(scope="module")
def states(tiny_pipeline_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[States]:
    with clean_db(STATES_DB) as db:
        env = service_env(redis_url(STATES_DB), schedule_dir=tmp_path_factory.mktemp("sched"),
                          model=tiny_pipeline_dir, cache_dir=tmp_path_factory.mktemp("cache"),
                          **SETTINGS)
        gateway = spawn_gateway(env).wait_ready()
        worker = spawn_worker(env)
        try:
            with httpx.Client(base_url=gateway.url, timeout=60) as http:
                yield States(gateway, worker, db, http, watch_start_up(worker, http))
        finally:
            worker.stop()
            gateway.stop()


def test_a_loading_worker_beats_but_is_not_ready(states: States) -> None:
    start_up = states.start_up
    assert start_up.states == [WorkerState.LOADING, WorkerState.READY]
    assert start_up.readyz_while_loading == {503}
    assert start_up.worker_readyz_while_loading == {503}
    assert (0.0, 1.0) in start_up.metrics_while_loading  # no ready worker, one loading
    assert states.http.get("/readyz").status_code == 200
    assert gauges(states.http, states.worker.info.model_key)["ready workers"] == 1
    assert worker_probe(states.worker.info.metrics_port).json() == {"status": "ready"}


def sync_job(http: httpx.Client, prompt: str) -> httpx.Response:
    return http.post("/generate", json={"prompt": prompt, **JOB},
                     headers={"Accept": "image/png"})


def test_a_worker_serves_again_after_redis_comes_back_empty(states: States) -> None:
    assert sync_job(states.http, "before the flush").status_code == 200
    states.db.flushdb()  # as a restart without persistence: the stream and its group are gone
    wait_for(lambda: states.http.get("/readyz").status_code == 200, timeout_s=10,
             what="the next heartbeat")
    response = sync_job(states.http, "after the flush")
    assert response.status_code == 200, (response.status_code, states.worker.log()[-2000:])
    assert "creating it again" in states.worker.log()


def test_a_worker_that_cannot_read_its_queue_is_not_ready(states: States) -> None:
    model = states.worker.info.model_key
    stream = jobs_stream(model)
    states.db.delete(stream)
    states.db.set(stream, "not a stream")  # every read of the queue now fails (WRONGTYPE)
    wait_for(lambda: (i := states.worker.heartbeat()) and i.state is WorkerState.STALLED
             and "WRONGTYPE" in (i.queue_error or ""), timeout_s=30, what="a stalled heartbeat")
    assert states.http.get("/readyz").status_code == 503
    probe = worker_probe(states.worker.info.metrics_port)
    assert (probe.status_code, probe.json()) == (503, {"status": "stalled"})
    values = gauges(states.http, model)
    assert (values["ready workers"], values["stalled"]) == (0, 1)
    states.db.delete(stream)  # readable again: the group is made anew and the worker serves
    wait_for(lambda: states.http.get("/readyz").status_code == 200, timeout_s=30,
             what="the worker to be ready again")
    assert sync_job(states.http, "after the stall").status_code == 200


def test_a_stopping_worker_says_draining_and_finishes_its_job(states: States) -> None:
    http = states.http
    job_id = submit(http, prompt="finish me", scheduler="ddim", steps=40)
    wait_status(http, job_id, "running")
    states.worker.process.send_signal(signal.SIGTERM)
    wait_for(lambda: (i := states.worker.heartbeat()) and i.state is WorkerState.DRAINING,
             timeout_s=10, what="a draining heartbeat")
    assert http.get("/readyz").status_code == 503
    assert wait_status(http, job_id, "succeeded", "failed", "queued")["status"] == "succeeded"
    assert states.worker.process.wait(timeout=30) == 0
    assert states.worker.heartbeat() is None

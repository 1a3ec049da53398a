"""A fleet: two gateways behind one Redis, two models with two workers each.

Jobs route to their model's workers whichever gateway took them, and killing a worker or a
gateway with SIGKILL while jobs are queued and running loses none of them.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis

from olss_core.keys import job_key
from olss_core.protocol import JobRecord
from tests.support.jobs import submit, wait_for, wait_status
from tests.support.processes import Gateway, Worker, service_env, spawn_gateway, spawn_worker
from tests.support.redis_db import clean_db, redis_url

pytestmark = pytest.mark.e2e

FLEET_DB = 9
MODELS = ("tiny-a", "tiny-b")
JOB = {"scheduler": "ddim", "steps": 6}
SETTINGS = {"lease_ms": 1500, "heartbeat_ttl_s": 3, "max_attempts": 3, "test_step_delay_ms": 40,
            "max_batch_size": 2, "max_batch_wait_ms": 20}


@dataclass
class Fleet:
    gateways: list[Gateway]
    workers: dict[str, list[Worker]]
    db: redis.Redis

    def model_of_worker(self, worker_id: str) -> str:
        return next(
            model for model, workers in self.workers.items()
            if any(worker.worker_id == worker_id for worker in workers)
        )


@pytest.fixture(scope="module")
def fleet(tiny_pipeline_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """Two copies of the tiny pipeline under different names are two models."""
    models = tmp_path_factory.mktemp("fleet-models")
    with clean_db(FLEET_DB) as db:
        base = service_env(redis_url(FLEET_DB), schedule_dir=tmp_path_factory.mktemp("sched"),
                           cache_dir=tmp_path_factory.mktemp("cache"), **SETTINGS)
        workers = {}
        for name in MODELS:
            folder = shutil.copytree(tiny_pipeline_dir, models / name)
            workers[name] = [spawn_worker(base, model=str(folder)) for _ in range(2)]
        gateways = [spawn_gateway(base) for _ in range(2)]
        try:
            for worker in (w for ws in workers.values() for w in ws):
                worker.wait_ready()
            for gateway in gateways:
                gateway.wait_ready()
            yield Fleet(gateways, workers, db)
        finally:
            for process in [*gateways, *(w for ws in workers.values() for w in ws)]:
                process.stop()


def record(db: redis.Redis, job_id: str) -> JobRecord:
    return JobRecord.from_hash(db.hgetall(job_key(job_id)))


def test_jobs_route_to_their_models_workers_and_survive_sigkill(fleet: Fleet) -> None:
    first, second = (httpx.Client(base_url=g.url, timeout=30) for g in fleet.gateways)
    jobs: dict[str, str] = {}
    for n in range(12):
        model = MODELS[n % 2]
        gateway = first if n % 3 else second
        jobs[submit(gateway, prompt=f"fleet job {n}", model=model, **JOB)] = model
    victim_id = wait_for(
        lambda: next((record(fleet.db, j).worker for j, m in jobs.items()
                      if m == MODELS[0] and record(fleet.db, j).status == "running"), None),
        what="a running job of the first model",
    )
    victim = next(w for w in fleet.workers[MODELS[0]] if w.worker_id == victim_id)
    victim.kill()
    fleet.gateways[0].kill()
    first.close()
    for job_id, model in jobs.items():
        view = wait_status(second, job_id, "succeeded", "failed", timeout_s=120)
        assert view["status"] == "succeeded", view
        assert view["model"] == model
        done = record(fleet.db, job_id)
        assert fleet.model_of_worker(done.worker or "") == model, (job_id, done.worker)
        assert done.worker != victim_id
    second.close()

"""Coordination-layer scaling: how the queue, the gateway and Redis scale with worker processes.

Compute-bound workers cannot show scaling on a small machine, so each job's work is a sleep:
``OLSS_TEST_STEP_DELAY_MS`` per denoising step on the tiny pipeline, one image per batch
(``OLSS_MAX_BATCH_SIZE=1``), so a worker's rate is about ``1 / (steps * delay)`` jobs/s and any
shortfall at N workers is the coordination layer's. Three measurements, all on one private
``redis-server`` and one gateway process:

1. **Workers**: for N in ``--workers``, N ``olss worker`` processes drain ``N * --jobs-per-worker``
   async jobs submitted through the gateway; throughput is jobs over the span from the first
   submit to the last finish notice (``olss:finished`` pub/sub). Efficiency is throughput over
   N times the one-worker throughput of the same run.
2. **Redis cost per job**: ``INFO commandstats`` calls and ``INFO cpu`` seconds, before and after
   each level, divided by its jobs: the commands and the Redis CPU one job costs end to end.
3. **Gateway intake**: ``--intake-clients`` concurrent clients submit async jobs as fast as the
   gateway accepts them while the only worker is stalled on one job (a step delay of an hour), so
   the jobs stay queued; jobs/s accepted by one gateway process, with the Redis CPU it used, so
   where one gateway and one Redis saturate can be read off.

    python -m bench.fleet_scaling                          # 1 2 4 8 16 workers
    python -m bench.fleet_scaling --workers 1 4 --jobs-per-worker 8 --intake-jobs 500   # quick

Everything is loopback and offline. Results go to docs/BENCHMARKS.md and docs/SCALING.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import redis

from devtools.tiny_pipeline import save_tiny_pipeline
from olss_core.keys import FINISHED_CHANNEL
from tests.support.processes import Gateway, Worker, service_env, spawn_gateway, spawn_worker
from tests.support.redis_db import clean_db, redis_url

BENCH_DB = 11
JOB_BODY = {"prompt": "a scaling job", "scheduler": "ddim"}
STALL_MS = 3_600_000


@dataclass(frozen=True)
class RedisCost:
    """Redis work between two ``INFO`` snapshots."""

    calls: int
    cpu_s: float

    @classmethod
    def snapshot(cls, client: redis.Redis) -> RedisCost:
        stats = client.info("commandstats")
        calls = sum(int(v["calls"]) for k, v in stats.items() if k.startswith("cmdstat_"))
        cpu = client.info("cpu")
        return cls(calls, float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"]))

    def __sub__(self, other: RedisCost) -> RedisCost:
        return RedisCost(self.calls - other.calls, self.cpu_s - other.cpu_s)


@dataclass(frozen=True)
class WorkerLevel:
    workers: int
    jobs: int
    wall_s: float
    redis_calls_per_job: float
    redis_cpu_ms_per_job: float

    @property
    def jobs_per_s(self) -> float:
        return self.jobs / self.wall_s


@dataclass(frozen=True)
class Intake:
    clients: int
    jobs: int
    wall_s: float
    redis_calls_per_job: float
    redis_cpu_ms_per_job: float

    @property
    def jobs_per_s(self) -> float:
        return self.jobs / self.wall_s


async def _submit(http: httpx.AsyncClient, count: int) -> list[str]:
    ids = []
    for _ in range(count):
        response = await http.post("/generate", json=JOB_BODY,
                                   headers={"Prefer": "respond-async"})
        response.raise_for_status()
        ids.append(response.json()["id"])
    return ids


async def submit_all(url: str, jobs: int, clients: int, steps: int) -> tuple[list[str], float]:
    """Submit ``jobs`` async jobs with ``clients`` concurrent clients; ids and seconds taken."""
    JOB_BODY["steps"] = steps
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
        shares = [jobs // clients + (1 if c < jobs % clients else 0) for c in range(clients)]
        start = time.perf_counter()
        parts = await asyncio.gather(*(_submit(http, share) for share in shares if share))
        return [job for part in parts for job in part], time.perf_counter() - start


def wait_finished(pubsub: redis.client.PubSub, job_ids: set[str], timeout_s: float) -> float:
    """Block until every job in ``job_ids`` published its finish notice; the monotonic time."""
    left = set(job_ids)
    deadline = time.monotonic() + timeout_s
    while left:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(left)} jobs did not finish within {timeout_s} s")
        message = pubsub.get_message(timeout=1.0)
        if message and message["type"] == "message":
            left.discard(message["data"])
    return time.monotonic()


def run_workers(url: str, env: dict[str, str], db: redis.Redis, workers: int, jobs: int,
                steps: int) -> WorkerLevel:
    fleet: list[Worker] = [spawn_worker(env) for _ in range(workers)]
    try:
        for worker in fleet:
            worker.wait_ready(timeout_s=600)
        pubsub = db.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(FINISHED_CHANNEL)
        before = RedisCost.snapshot(db)
        start = time.monotonic()
        ids, _ = asyncio.run(submit_all(url, jobs, min(jobs, 32), steps))
        end = wait_finished(pubsub, set(ids), timeout_s=600)
        cost = RedisCost.snapshot(db) - before
        pubsub.close()
    finally:
        for worker in fleet:
            worker.stop()
    return WorkerLevel(workers, jobs, end - start, cost.calls / jobs, cost.cpu_s * 1000 / jobs)


def run_intake(url: str, env: dict[str, str], db: redis.Redis, jobs: int, clients: int) -> Intake:
    stalled = spawn_worker({**env, "OLSS_TEST_STEP_DELAY_MS": str(STALL_MS)})
    try:
        stalled.wait_ready(timeout_s=600)
        before = RedisCost.snapshot(db)
        _, wall = asyncio.run(submit_all(url, jobs, clients, steps=2))
        cost = RedisCost.snapshot(db) - before
    finally:
        stalled.kill()
    return Intake(clients, jobs, wall, cost.calls / jobs, cost.cpu_s * 1000 / jobs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--jobs-per-worker", type=int, default=16)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--step-delay-ms", type=int, default=100)
    parser.add_argument("--intake-jobs", type=int, default=2000)
    parser.add_argument("--intake-clients", type=int, default=32)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="olss-fleet-"))
    model = save_tiny_pipeline(work / "tiny-sd")
    levels: list[WorkerLevel] = []
    with clean_db(BENCH_DB) as db:
        env = service_env(
            redis_url(BENCH_DB), schedule_dir=work / "schedules", model=model,
            cache_dir=work / "cache", max_batch_size=1, max_batch_wait_ms=0,
            test_step_delay_ms=args.step_delay_ms, max_queue_depth=100_000, log_level="warning",
        )
        gateway: Gateway = spawn_gateway(env)
        try:
            gateway.wait_ready()
            for workers in args.workers:
                level = run_workers(gateway.url, env, db, workers,
                                    workers * args.jobs_per_worker, args.steps)
                levels.append(level)
                print(f"{workers} workers: {level.jobs_per_s:.2f} jobs/s, "
                      f"{level.redis_calls_per_job:.1f} Redis calls/job", flush=True)
                db.flushdb()
            intake = run_intake(gateway.url, env, db, args.intake_jobs, args.intake_clients)
        finally:
            gateway.stop()

    base = levels[0].jobs_per_s / levels[0].workers
    print(f"\nmachine: {platform.node()}, {os.cpu_count()} CPUs; {args.steps} steps x "
          f"{args.step_delay_ms} ms per job (ideal {1000 / (args.steps * args.step_delay_ms):.2f} "
          "jobs/s per worker)\n")
    print("| workers | jobs | jobs/s | efficiency vs N x one worker | Redis calls/job | "
          "Redis CPU ms/job |\n|---|---|---|---|---|---|")
    for level in levels:
        efficiency = level.jobs_per_s / (level.workers * base)
        print(f"| {level.workers} | {level.jobs} | {level.jobs_per_s:.2f} | {efficiency:.2f} | "
              f"{level.redis_calls_per_job:.1f} | {level.redis_cpu_ms_per_job:.2f} |")
    print(f"\ngateway intake ({intake.clients} clients, {intake.jobs} async jobs, worker stalled): "
          f"{intake.jobs_per_s:.0f} jobs/s; {intake.redis_calls_per_job:.1f} Redis calls/job, "
          f"{intake.redis_cpu_ms_per_job:.3f} Redis CPU ms/job")
    if args.out:
        args.out.write_text(json.dumps(
            {"levels": [asdict(level) | {"jobs_per_s": level.jobs_per_s} for level in levels],
             "intake": asdict(intake) | {"jobs_per_s": intake.jobs_per_s},
             "config": vars(args) | {"out": str(args.out)}}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Coordination-layer scaling: how the queue, the gateway and Redis scale with worker processes.

Compute-bound workers cannot show scaling on a small machine, so each job's work is a sleep:
``OLSS_TEST_STEP_DELAY_MS`` per denoising step on the tiny pipeline, one image per batch
(``OLSS_MAX_BATCH_SIZE=1``), so a worker's rate is about ``1 / (steps * delay)`` jobs/s and any
shortfall at N workers is the coordination layer's. Four measurements, all on one private
``redis-server`` (or, with ``--cluster``, a private three-node Redis Cluster) and one gateway
process:

1. **Workers**: for N in ``--workers``, N ``olss worker`` processes drain ``N * --jobs-per-worker``
   async jobs submitted through the gateway; throughput is jobs over the span from the first
   submit to the last finish notice (``olss:finished`` pub/sub). Efficiency is throughput over
   N times the one-worker throughput of the same run.
2. **Redis cost per job**: ``INFO commandstats`` calls (by command) and ``INFO cpu`` seconds of
   every node, before and after each level, divided by its jobs: the commands and the Redis CPU
   one job costs end to end (on a cluster also the busiest node's: the shard holding the
   model's slot).
3. **Footprint**: the bytes one finished job leaves in Redis (``MEMORY USAGE`` of its record,
   events and image) and their TTLs.
4. **Gateway intake**: ``--intake-clients`` concurrent clients submit async jobs as fast as the
   gateway accepts them while the only worker is stalled on one job (a step delay of an hour), so
   the jobs stay queued; jobs/s accepted by one gateway process, with the Redis CPU it used, so
   where one gateway and one Redis saturate can be read off.

    python -m bench.fleet_scaling                          # 1 2 4 8 16 workers
    python -m bench.fleet_scaling --cluster --workers 1 4  # on a Redis Cluster
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
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import redis

from devtools.tiny_pipeline import save_tiny_pipeline
from olss_core.keys import FINISHED_CHANNEL, events_key, finished_ids, image_key, job_key
from olss_core.redis_clients import RedisTarget, SyncRedis, sync_client
from tests.support.processes import Gateway, Worker, service_env, spawn_gateway, spawn_worker
from tests.support.redis_cluster import redis_cluster
from tests.support.redis_db import clean_db, redis_url

BENCH_DB = 11
JOB_BODY = {"prompt": "a scaling job", "scheduler": "ddim"}
STALL_MS = 3_600_000
TOP_COMMANDS = 12


@dataclass(frozen=True)
class NodeCost:
    """One Redis node's work so far: calls by command and CPU seconds."""

    calls: Counter[str]
    cpu_s: float

    @classmethod
    def snapshot(cls, client: redis.Redis) -> NodeCost:
        stats = client.info("commandstats")
        calls = Counter({k.removeprefix("cmdstat_"): int(v["calls"])
                         for k, v in stats.items() if k.startswith("cmdstat_")})
        cpu = client.info("cpu")
        return cls(calls, float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"]))

    def __sub__(self, other: NodeCost) -> NodeCost:
        return NodeCost(self.calls - other.calls, self.cpu_s - other.cpu_s)


@dataclass(frozen=True)
class RedisCost:
    """The work of every node between two snapshots."""

    nodes: tuple[NodeCost, ...]

    @classmethod
    def snapshot(cls, nodes: list[redis.Redis]) -> RedisCost:
        return cls(tuple(NodeCost.snapshot(node) for node in nodes))

    def __sub__(self, other: RedisCost) -> RedisCost:
        return RedisCost(tuple(a - b for a, b in zip(self.nodes, other.nodes, strict=True)))

    @property
    def calls(self) -> Counter[str]:
        return sum((node.calls for node in self.nodes), Counter())

    def per_job(self, jobs: int) -> RedisPerJob:
        busiest = max(node.cpu_s for node in self.nodes)
        calls = self.calls
        return RedisPerJob(
            calls=sum(calls.values()) / jobs,
            cpu_ms=sum(node.cpu_s for node in self.nodes) * 1000 / jobs,
            busiest_node_cpu_ms=busiest * 1000 / jobs,
            by_command={name: n / jobs for name, n in calls.most_common(TOP_COMMANDS)},
        )


@dataclass(frozen=True)
class RedisPerJob:
    calls: float
    cpu_ms: float
    busiest_node_cpu_ms: float
    by_command: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class WorkerLevel:
    workers: int
    jobs: int
    wall_s: float
    redis: RedisPerJob

    @property
    def jobs_per_s(self) -> float:
        return self.jobs / self.wall_s


@dataclass(frozen=True)
class Intake:
    clients: int
    jobs: int
    wall_s: float
    redis: RedisPerJob

    @property
    def jobs_per_s(self) -> float:
        return self.jobs / self.wall_s


@dataclass(frozen=True)
class Footprint:
    """What one finished one-image job leaves in Redis: bytes and seconds to live by key."""

    bytes: dict[str, int]
    ttl_s: dict[str, int]


@dataclass(frozen=True)
class Topology:
    """The Redis under test: the services' URL and settings, a client, one client per node."""

    url: str
    settings: dict[str, object]
    client: SyncRedis
    nodes: list[redis.Redis]

    def flush(self) -> None:
        for node in self.nodes:
            node.flushdb()

    def close(self) -> None:
        self.client.close()
        for node in self.nodes:
            node.close()


@contextmanager
def topology(cluster: bool) -> Iterator[Topology]:
    """A private server's bench database, or a private three-node Redis Cluster."""
    if not cluster:
        with clean_db(BENCH_DB):
            url = redis_url(BENCH_DB)
            under_test = Topology(url, {}, sync_client(url), [redis.Redis.from_url(url)])
            try:
                yield under_test
            finally:
                under_test.close()
        return
    with redis_cluster() as nodes:
        under_test = Topology(
            nodes.url, {"redis_cluster": True}, sync_client(RedisTarget(nodes.url, cluster=True)),
            [redis.Redis(port=port) for port in nodes.ports],
        )
        try:
            yield under_test
        finally:
            under_test.close()


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
            left.difference_update(finished_ids(message["data"].decode()))
    return time.monotonic()


def footprint(client: SyncRedis, job_id: str) -> Footprint:
    keys = {"record": job_key(job_id), "events": events_key(job_id),
            "image": image_key(job_id, 0)}
    return Footprint(
        bytes={name: int(client.memory_usage(key) or 0) for name, key in keys.items()},
        ttl_s={name: int(client.ttl(key)) for name, key in keys.items()},
    )


def run_workers(url: str, env: dict[str, str], redis_under_test: Topology, workers: int,
                jobs: int, steps: int) -> tuple[WorkerLevel, str]:
    """One level; the level and the id of one of its finished jobs."""
    fleet: list[Worker] = [spawn_worker(env) for _ in range(workers)]
    try:
        for worker in fleet:
            worker.wait_ready(timeout_s=600)
        pubsub = redis_under_test.nodes[0].pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(FINISHED_CHANNEL)
        before = RedisCost.snapshot(redis_under_test.nodes)
        start = time.monotonic()
        ids, _ = asyncio.run(submit_all(url, jobs, min(jobs, 32), steps))
        end = wait_finished(pubsub, set(ids), timeout_s=600)
        cost = RedisCost.snapshot(redis_under_test.nodes) - before
        pubsub.close()
    finally:
        for worker in fleet:
            worker.stop()
    return WorkerLevel(workers, jobs, end - start, cost.per_job(jobs)), ids[-1]


def run_intake(url: str, env: dict[str, str], redis_under_test: Topology, jobs: int,
               clients: int) -> Intake:
    stalled = spawn_worker({**env, "OLSS_TEST_STEP_DELAY_MS": str(STALL_MS)})
    try:
        stalled.wait_ready(timeout_s=600)
        before = RedisCost.snapshot(redis_under_test.nodes)
        _, wall = asyncio.run(submit_all(url, jobs, clients, steps=2))
        cost = RedisCost.snapshot(redis_under_test.nodes) - before
    finally:
        stalled.kill()
    return Intake(clients, jobs, wall, cost.per_job(jobs))


def report(args: argparse.Namespace, levels: list[WorkerLevel], intake: Intake,
           job: Footprint, load: tuple[tuple[float, ...], tuple[float, ...]]) -> None:
    base = levels[0].jobs_per_s / levels[0].workers
    where = "a three-node Redis Cluster" if args.cluster else "one redis-server"
    print(f"\nmachine: {platform.node()}, {os.cpu_count()} CPUs, {where}; load average "
          f"{load[0][0]:.2f} before, {load[1][0]:.2f} after; {args.steps} steps x "
          f"{args.step_delay_ms} ms per job (ideal {1000 / (args.steps * args.step_delay_ms):.2f}"
          " jobs/s per worker)\n")
    print("| workers | jobs | jobs/s | efficiency vs N x one worker | Redis calls/job | "
          "Redis CPU ms/job | busiest node CPU ms/job |\n|---|---|---|---|---|---|---|")
    for level in levels:
        efficiency = level.jobs_per_s / (level.workers * base)
        print(f"| {level.workers} | {level.jobs} | {level.jobs_per_s:.2f} | {efficiency:.2f} | "
              f"{level.redis.calls:.1f} | {level.redis.cpu_ms:.3f} | "
              f"{level.redis.busiest_node_cpu_ms:.3f} |")
    last = levels[-1].redis.by_command
    print(f"\ncommands per job at {levels[-1].workers} workers: "
          + ", ".join(f"{name} {n:.2f}" for name, n in last.items()))
    print(f"\ngateway intake ({intake.clients} clients, {intake.jobs} async jobs, worker stalled): "
          f"{intake.jobs_per_s:.0f} jobs/s; {intake.redis.calls:.1f} Redis calls/job, "
          f"{intake.redis.cpu_ms:.3f} Redis CPU ms/job "
          f"(busiest node {intake.redis.busiest_node_cpu_ms:.3f})")
    print(f"\none finished job in Redis: bytes {job.bytes}, TTL s {job.ttl_s}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--jobs-per-worker", type=int, default=16)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--step-delay-ms", type=int, default=100)
    parser.add_argument("--intake-jobs", type=int, default=2000)
    parser.add_argument("--intake-clients", type=int, default=32)
    parser.add_argument("--cluster", action="store_true", help="on a three-node Redis Cluster")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="olss-fleet-"))
    model = save_tiny_pipeline(work / "tiny-sd")
    levels: list[WorkerLevel] = []
    load_before = os.getloadavg()
    with topology(args.cluster) as under_test:
        env = service_env(
            under_test.url, schedule_dir=work / "schedules", model=model,
            cache_dir=work / "cache", max_batch_size=1, max_batch_wait_ms=0,
            test_step_delay_ms=args.step_delay_ms, max_queue_depth=100_000, log_level="warning",
            **under_test.settings,
        )
        gateway: Gateway = spawn_gateway(env)
        try:
            gateway.wait_ready()
            job: Footprint | None = None
            for workers in args.workers:
                level, finished = run_workers(gateway.url, env, under_test, workers,
                                              workers * args.jobs_per_worker, args.steps)
                levels.append(level)
                job = job or footprint(under_test.client, finished)
                print(f"{workers} workers: {level.jobs_per_s:.2f} jobs/s, "
                      f"{level.redis.calls:.1f} Redis calls/job", flush=True)
                under_test.flush()
            intake = run_intake(gateway.url, env, under_test, args.intake_jobs,
                                args.intake_clients)
        finally:
            gateway.stop()
    assert job is not None
    load = (load_before, os.getloadavg())
    report(args, levels, intake, job, load)
    if args.out:
        args.out.write_text(json.dumps(
            {"levels": [asdict(level) | {"jobs_per_s": level.jobs_per_s} for level in levels],
             "intake": asdict(intake) | {"jobs_per_s": intake.jobs_per_s},
             "footprint": asdict(job), "load_average": load,
             "config": vars(args) | {"out": str(args.out)}}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

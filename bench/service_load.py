"""Service load benchmark: N concurrent clients against a real gateway and worker.

Starts Redis-backed ``olss gateway`` and ``olss worker`` processes for the tiny offline
pipeline (with 4/5-step OLSS schedules calibrated at start), then runs closed-loop clients that
each send sync ``POST /generate`` requests (JSON reply, the default 5-step OLSS schedule) one
after another. Per request it records the end-to-end time seen by the client and the worker's
own timings from the reply, so the service overhead
(end-to-end minus inference) comes from the same run. Finally it restarts the worker with
``OLSS_MAX_BATCH_SIZE=1`` and repeats the largest client count: batched vs unbatched.

    .venv/bin/python -m bench.service_load                 # 1, 8, 32 clients
    .venv/bin/python -m bench.service_load --clients 1 8 --requests 64

Loopback only; Redis database 12 by default (flushed).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from devtools.tiny_pipeline import save_tiny_pipeline
from tests.support.processes import Gateway, Worker, service_env, spawn_gateway, spawn_worker
from tests.support.redis_db import clean_db, redis_url
from tests.support.schedules import calibrate_test_schedules

SYNC_TIMEOUT_S = 600


@dataclass(frozen=True)
class Sample:
    """One request: client-side end-to-end and the worker's timings, in milliseconds."""

    e2e_ms: float
    inference_ms: float
    queue_ms: float
    batch_size: int


@dataclass(frozen=True)
class LevelResult:
    clients: int
    max_batch_size: int
    samples: list[Sample]
    wall_s: float

    @property
    def throughput(self) -> float:
        return len(self.samples) / self.wall_s

    def percentile(self, values: list[float], q: float) -> float:
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    def row(self) -> str:
        e2e = [s.e2e_ms for s in self.samples]
        overhead = [s.e2e_ms - s.inference_ms for s in self.samples]
        transport = [s.e2e_ms - s.inference_ms - s.queue_ms for s in self.samples]
        batch = statistics.mean(s.batch_size for s in self.samples)
        p = self.percentile
        return (
            f"| {self.clients} | {self.max_batch_size} | {len(self.samples)} | "
            f"{self.throughput:.1f} | {p(e2e, 0.5):.0f} | {p(e2e, 0.99):.0f} | "
            f"{p(overhead, 0.5):.1f} | {p(overhead, 0.99):.1f} | {p(transport, 0.5):.1f} | "
            f"{p(transport, 0.99):.1f} | {batch:.1f} |"
        )


HEADER = (
    "| clients | max batch | requests | throughput (img/s) | e2e p50 (ms) | e2e p99 (ms) | "
    "overhead p50 (ms) | overhead p99 (ms) | overhead − queue p50 (ms) | "
    "overhead − queue p99 (ms) | mean batch |\n|" + "---|" * 11
)


async def _client(http: httpx.AsyncClient, client_id: int, requests: int) -> list[Sample]:
    samples = []
    for n in range(requests):
        seed = (client_id + 1) * 1000 + n
        body = {"prompt": f"bench client {client_id} request {n}", "seed": seed}
        start = time.perf_counter()
        response = await http.post("/generate", json=body)
        e2e_ms = (time.perf_counter() - start) * 1000
        response.raise_for_status()
        timings = response.json()["timings"]
        samples.append(Sample(e2e_ms, timings["inference"] * 1000, timings["queue"] * 1000,
                              timings["batch_size"]))
    return samples


async def run_level(url: str, clients: int, requests: int, max_batch: int) -> LevelResult:
    """``clients`` closed-loop clients sharing ``requests`` requests (at least one each)."""
    per_client = max(1, requests // clients)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
        await _client(http, -1, 2)  # warm the connection path
        start = time.perf_counter()
        parts = await asyncio.gather(*(_client(http, c, per_client) for c in range(clients)))
        wall = time.perf_counter() - start
    return LevelResult(clients, max_batch, [s for part in parts for s in part], wall)


def _start_worker(env: dict[str, str]) -> Worker:
    return spawn_worker(env).wait_ready()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=128,
                        help="requests per client count (split across its clients)")
    parser.add_argument("--db", type=int, default=12, help="Redis database (flushed)")
    parser.add_argument("--torch-threads", default="1", help="OMP_NUM_THREADS for the worker")
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--max-batch-wait-ms", type=int, default=10)
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="olss-bench-"))
    model = save_tiny_pipeline(work / "tiny-sd")
    calibrate_test_schedules(model, work / "schedules")
    results: list[LevelResult] = []
    with clean_db(args.db):
        base = service_env(redis_url(args.db), schedule_dir=work / "schedules", model=model,
                           cache_dir=work / "cache")
        base["OMP_NUM_THREADS"] = args.torch_threads
        base["OLSS_MAX_BATCH_WAIT_MS"] = str(args.max_batch_wait_ms)
        base["OLSS_SYNC_TIMEOUT_S"] = str(SYNC_TIMEOUT_S)  # every request gets its image
        gateway: Gateway = spawn_gateway(base)
        try:
            gateway.wait_ready()
            for max_batch, levels in ((args.max_batch_size, args.clients),
                                      (1, [max(args.clients)])):
                worker = _start_worker({**base, "OLSS_MAX_BATCH_SIZE": str(max_batch)})
                try:
                    for clients in levels:
                        result = asyncio.run(
                            run_level(gateway.url, clients, args.requests, max_batch)
                        )
                        results.append(result)
                        print(result.row(), flush=True)
                finally:
                    worker.stop()
        finally:
            gateway.stop()

    print(f"\nmachine: {platform.node()}, {os.cpu_count()} CPUs, {platform.processor() or 'cpu'}; "
          f"OLSS_MAX_BATCH_WAIT_MS={args.max_batch_wait_ms}, OMP_NUM_THREADS={args.torch_threads}")
    print(HEADER)
    for result in results:
        print(result.row())
    top = max(args.clients)
    batched = next(r for r in results if r.clients == top and r.max_batch_size > 1)
    unbatched = next(r for r in results if r.clients == top and r.max_batch_size == 1)
    print(f"\nbatched / unbatched throughput at {top} clients: "
          f"{batched.throughput / unbatched.throughput:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

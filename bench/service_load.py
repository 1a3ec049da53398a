"""Service load benchmark: N concurrent clients against a real gateway and worker, and the
worker's own engine at the same batch size, in one run.

Starts Redis-backed ``olss gateway`` and ``olss worker`` processes for the tiny offline pipeline
(with 4/5-step OLSS schedules calibrated at start), then runs closed-loop clients that each send
sync ``POST /generate`` requests (JSON reply, the default 5-step OLSS schedule) one after
another. Per request it records the client's end-to-end time and the worker's own timings from
the reply, so the service overhead (end-to-end minus the inference of the request's batch) comes
from the same run. The engine's own throughput is measured in this process with the worker's
loading and settings (``workers.startup.load_model``), batches of ``--max-batch-size`` jobs back
to back, between the client levels, while the service is idle. ``--ablate`` restarts the worker
with each of its serving switches off (``OLSS_ADAPTIVE_BATCH_WAIT``, ``OLSS_OVERLAP_RESULTS``,
``OLSS_OVERLAP_START``) and with ``OLSS_MAX_BATCH_SIZE=1`` and repeats the levels named by
``--ablate-clients``. After each level with an overhead target, the floor
(``bench/service_floor.py``: the same shape with none of olss's code, the level's median
inference time as its worker's sleep) runs at the same client count, so each overhead has a
baseline measured beside it (``--no-floor`` skips it).

    .venv/bin/python -m bench.service_load                 # 1, 8, 32 clients
    .venv/bin/python -m bench.service_load --clients 1 8 --requests 64 --ablate

Targets (issue 10, on this 2-core machine): overhead p50 at most 5 ms at 1 client and at most
10 ms at 8 clients; at 32 clients, service throughput at least 90% of the engine's at the same
batch size. Loopback only; a private Redis for the run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from bench.load_client import (
    CLIENTS,
    HEADER,
    SYNC_TIMEOUT_S,
    TARGET_OVERHEAD_MS,
    LevelResult,
    load_average,
    run_level,
)
from bench.service_floor import floor_level
from tests.support.processes import Gateway, Worker, service_env, spawn_gateway, spawn_worker
from tests.support.redis_db import clean_db, redis_url

TARGET_THROUGHPUT_SHARE = 0.9
BENCH_DB = 12


@dataclass
class Service:
    """A gateway on a private Redis, and one worker at a time with given settings."""

    env: dict[str, str]
    gateway: Gateway
    cold_starts_s: list[float] = field(default_factory=list)
    client: str = CLIENTS[0]

    @contextmanager
    def worker(self, **settings: object) -> Iterator[Worker]:
        """A worker with ``settings`` (``OLSS_`` names without the prefix) on top of the
        service's; its spawn-to-ready time goes to ``cold_starts_s``."""
        env = {**self.env, **{f"OLSS_{k.upper()}": str(v) for k, v in settings.items()}}
        started = time.perf_counter()
        worker = spawn_worker(env).wait_ready(timeout_s=SYNC_TIMEOUT_S)
        self.cold_starts_s.append(time.perf_counter() - started)
        try:
            yield worker
        finally:
            worker.stop()

    def level(
        self, config: str, clients: int, requests: int, max_batch: int, body: dict | None = None
    ) -> LevelResult:
        return asyncio.run(run_level(self.gateway.url, config, clients, requests, max_batch, body,
                                     self.client))


@contextmanager
def service(
    model: Path, schedule_dir: Path, cache_dir: Path, threads: str, **settings: object
) -> Iterator[Service]:
    """A gateway (and the environment for workers) serving ``model`` on a private Redis."""
    with clean_db(BENCH_DB):
        env = service_env(redis_url(BENCH_DB), schedule_dir=schedule_dir, model=model,
                          cache_dir=cache_dir, **settings)
        env["OMP_NUM_THREADS"] = threads
        env["OLSS_SYNC_TIMEOUT_S"] = str(SYNC_TIMEOUT_S)  # every request gets its image
        gateway = spawn_gateway(env)
        try:
            gateway.wait_ready()
            yield Service(env, gateway)
        finally:
            gateway.stop()


@dataclass(frozen=True)
class EngineRate:
    """The worker's engine alone: batches of ``batch`` one-image jobs back to back."""

    batch: int
    batches: int
    seconds: float

    @property
    def images_per_s(self) -> float:
        return self.batch * self.batches / self.seconds


def engine_throughput(
    model: Path, schedule_dir: Path, cache_dir: Path, batch: int, batches: int, **settings: object
) -> EngineRate:
    """Load ``model`` with the worker's own start-up and settings, warm it up, then time
    ``batches`` batches of ``batch`` default-schedule jobs (what the service batches)."""
    from olss_core.protocol import JobSpec
    from olss_core.samplers import OLSS
    from olss_core.settings import load_settings
    from workers.startup import load_model
    from workers.warm_up import warm_up

    config = load_settings(model=str(model), schedule_dir=schedule_dir, cache_dir=cache_dir,
                           max_batch_size=batch, **settings)
    loaded = load_model(config, str(model))
    engine = loaded.engine
    warm_up(engine, loaded.key, engine.bank.schedules, loaded.warm_batch_sizes)
    loaded.finish_warm_up()
    default = engine.bank.default_schedule(7.5)
    assert default is not None, f"no OLSS schedule for {loaded.key}"
    width, height = engine.native_size
    specs = [
        JobSpec(model=loaded.key, prompt=f"engine request {n}", width=width, height=height,
                steps=default.steps, guidance_scale=default.guidance_scale, seed=n,
                scheduler=OLSS)
        for n in range(batch)
    ]
    engine.generate(specs)
    start = time.perf_counter()
    for _ in range(batches):
        engine.generate(specs)
    return EngineRate(batch, batches, time.perf_counter() - start)


def targets(results: list[LevelResult], engine: EngineRate | None,
            floors: Mapping[int, LevelResult] | None = None) -> list[str]:
    """The issue's targets, judged on the default worker's levels of this run; each overhead
    also against the floor's (``bench/service_floor.py``) measured beside it."""
    lines = []
    default = {r.clients: r for r in results if r.config == "default"}
    floors = floors or {}
    for clients, limit in TARGET_OVERHEAD_MS.items():
        if clients in default:
            p50 = default[clients].overhead_p(0.5)
            verdict = "met" if p50 <= limit else "not met"
            floor = floors.get(clients)
            beside = (f"; the floor's {floor.overhead_p(0.5):.1f} ms in the same run, "
                      f"{p50 / floor.overhead_p(0.5):.2f}x" if floor else "")
            lines.append(f"overhead p50 at {clients} client(s): {p50:.1f} ms "
                         f"(target <= {limit:g} ms): {verdict}{beside}")
    top = max(default) if default else None
    if top is not None and engine is not None:
        share = default[top].throughput / engine.images_per_s
        verdict = "met" if share >= TARGET_THROUGHPUT_SHARE else "not met"
        level = default[top]
        lines.append(
            f"throughput at {top} clients: {level.throughput:.2f} img/s = {share:.0%} of "
            f"the engine's {engine.images_per_s:.2f} img/s at batch {engine.batch} "
            f"(target >= {TARGET_THROUGHPUT_SHARE:.0%}): {verdict}; the worker was generating "
            f"{level.generating_s / level.wall_s:.0%} of the time, at "
            f"{len(level.samples) / level.generating_s:.2f} img/s while it was"
        )
    return lines


ABLATIONS = {
    "adaptive wait off": {"adaptive_batch_wait": "false"},
    "overlap off": {"overlap_results": "false"},
    "start overlap off": {"overlap_start": "false"},
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=128,
                        help="requests per client count (split across its clients)")
    parser.add_argument("--torch-threads", default="1", help="OMP_NUM_THREADS for the worker")
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--max-batch-wait-ms", type=int, default=50)
    parser.add_argument("--engine-batches", type=int, default=12,
                        help="batches timed for the engine's own throughput")
    parser.add_argument("--ablate", action="store_true",
                        help="also run with each serving switch off, and unbatched")
    parser.add_argument("--ablate-clients", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--client", choices=CLIENTS, default=CLIENTS[0],
                        help="HTTP client library of the load")
    parser.add_argument("--no-floor", dest="floor", action="store_false",
                        help="skip the floor (bench/service_floor.py) after each target level")
    args = parser.parse_args(argv)

    from devtools.tiny_pipeline import save_tiny_pipeline
    from tests.support.schedules import calibrate_test_schedules

    work = Path(tempfile.mkdtemp(prefix="olss-bench-"))
    model = save_tiny_pipeline(work / "tiny-sd")
    schedules = work / "schedules"
    calibrate_test_schedules(model, schedules)
    cache = work / "cache"
    results: list[LevelResult] = []
    engine: EngineRate | None = None
    cold_starts: list[float] = []
    floors: dict[int, LevelResult] = {}
    started_load = load_average()
    with service(model, schedules, cache, args.torch_threads,
                 max_batch_wait_ms=args.max_batch_wait_ms) as svc:
        svc.client = args.client
        runs: list[tuple[str, dict[str, object], list[int], int]] = [
            ("default", {}, args.clients, args.max_batch_size)
        ]
        if args.ablate:
            runs += [(name, extra, args.ablate_clients, args.max_batch_size)
                     for name, extra in ABLATIONS.items()]
            runs.append(("unbatched", {}, [max(args.clients)], 1))
        for config, extra, levels, max_batch in runs:
            with svc.worker(max_batch_size=max_batch, **extra):
                for clients in levels:
                    results.append(svc.level(config, clients, args.requests, max_batch))
                    print(results[-1].row(), flush=True)
                    if config == "default" and args.floor and clients in TARGET_OVERHEAD_MS:
                        floors[clients] = floor_level(clients, args.requests,
                                                      results[-1].inference_p50)
                        print(floors[clients].row(), flush=True)
                if config == "default":
                    import torch

                    torch.set_num_threads(int(args.torch_threads))
                    engine = engine_throughput(model, schedules, cache, args.max_batch_size,
                                               args.engine_batches)
                    print(f"engine alone: {engine.images_per_s:.2f} img/s", flush=True)
        cold_starts = svc.cold_starts_s

    print(f"\nmachine: {platform.node()}, {os.cpu_count()} CPUs, {platform.processor() or 'cpu'}; "
          f"load average {started_load:.1f} at the start, {load_average():.1f} at the end; "
          f"OLSS_MAX_BATCH_WAIT_MS={args.max_batch_wait_ms}, "
          f"OMP_NUM_THREADS={args.torch_threads}, client {args.client}")
    print(HEADER)
    for result in results:
        print(result.row())
        if result.config == "default" and result.clients in floors:
            print(floors[result.clients].row())
    if engine is not None:
        print(f"\nengine alone (in this process, the worker's load_model and settings, "
              f"{engine.batches} batches of {engine.batch}): {engine.images_per_s:.2f} img/s")
    print("worker start to ready (spawn to first heartbeat): "
          + ", ".join(f"{seconds:.1f} s" for seconds in cold_starts))
    for line in targets(results, engine, floors):
        print(line)
    top = max(args.clients)
    batched = next((r for r in results if r.clients == top and r.config == "default"), None)
    unbatched = next((r for r in results if r.config == "unbatched"), None)
    if batched and unbatched:
        print(f"batched / unbatched throughput at {top} clients: "
              f"{batched.throughput / unbatched.throughput:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

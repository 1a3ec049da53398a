"""The closed-loop HTTP load of the service benchmarks, and what one level of it measured.

``run_level`` sends sync ``POST /generate`` requests from N clients, one after another each, and
keeps per request the client's end-to-end time and the worker's timings from the reply
(``bench/service_load.py`` runs it against the real gateway and worker, ``bench/service_floor.py``
against the floor).
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx

SYNC_TIMEOUT_S = 600
TARGET_OVERHEAD_MS = {1: 5.0, 8: 10.0}
"""Issue 10's overhead targets on the 2-core dev machine: p50 per client count."""


@dataclass(frozen=True)
class Sample:
    """One request: client-side end-to-end and the worker's timings, in milliseconds.

    ``total_ms`` is enqueue to stored; so ``e2e - total`` is the gateway and the wire (request
    in, result out), ``queue`` is enqueue to start and ``total - queue - inference`` the
    worker's time outside the batch's inference (start, store).
    """

    e2e_ms: float
    inference_ms: float
    queue_ms: float
    total_ms: float
    batch_size: int


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@dataclass(frozen=True)
class LevelResult:
    """One client count against one worker configuration."""

    config: str
    clients: int
    max_batch_size: int
    samples: list[Sample]
    wall_s: float
    load_before: float
    load_after: float

    @property
    def throughput(self) -> float:
        return len(self.samples) / self.wall_s

    @property
    def generating_s(self) -> float:
        """Seconds the worker spent generating this level's batches (each batch's inference,
        shared by its jobs)."""
        return sum(s.inference_ms / 1000 / s.batch_size for s in self.samples)

    def overhead_p(self, q: float) -> float:
        return percentile([s.e2e_ms - s.inference_ms for s in self.samples], q)

    @property
    def inference_p50(self) -> float:
        return percentile([s.inference_ms for s in self.samples], 0.5)

    def e2e_p(self, q: float) -> float:
        return percentile([s.e2e_ms for s in self.samples], q)

    def row(self) -> str:
        samples = self.samples
        gateway = percentile([s.e2e_ms - s.total_ms for s in samples], 0.5)
        queue = percentile([s.queue_ms for s in samples], 0.5)
        worker = percentile([s.total_ms - s.queue_ms - s.inference_ms for s in samples], 0.5)
        batch = statistics.mean(s.batch_size for s in samples)
        return (
            f"| {self.config} | {self.clients} | {self.max_batch_size} | {len(samples)} | "
            f"{self.throughput:.1f} | {self.e2e_p(0.5):.0f} / {self.e2e_p(0.99):.0f} | "
            f"{self.overhead_p(0.5):.1f} / {self.overhead_p(0.99):.1f} | {gateway:.1f} | "
            f"{queue:.1f} | {worker:.1f} | {batch:.1f} | "
            f"{self.load_before:.1f}-{self.load_after:.1f} |"
        )


HEADER = (
    "| worker | clients | max batch | requests | throughput (img/s) | e2e p50 / p99 (ms) | "
    "overhead p50 / p99 (ms) | gateway and wire p50 | queue p50 | worker outside inference "
    "p50 | mean batch | load avg |\n|" + "---|" * 12
)


def load_average() -> float:
    return os.getloadavg()[0]


CLIENTS = ("aiohttp", "httpx")
"""HTTP client libraries the load can be sent with. aiohttp is the default: its own cost per
request is a fraction of httpx's (measured in docs/BENCHMARKS.md), and a client's own time is
not the service's overhead; ``--client httpx`` shows what a heavier client adds."""

Post = Callable[[dict], Awaitable[bytes]]
"""``await post(body)``: one sync ``POST /generate``; the reply's body, read in full (raises on a
non-2xx)."""


async def _client(post: Post, client_id: int, requests: int, body: dict) -> list[Sample]:
    samples = []
    for n in range(requests):
        seed = (client_id + 1) * 1000 + n
        payload = {**body, "prompt": f"bench client {client_id} request {n}", "seed": seed}
        start = time.perf_counter()
        reply = await post(payload)
        e2e_ms = (time.perf_counter() - start) * 1000
        timings = json.loads(reply)["timings"]
        samples.append(Sample(e2e_ms, timings["inference"] * 1000, timings["queue"] * 1000,
                              timings["total"] * 1000, timings["batch_size"]))
    return samples


@asynccontextmanager
async def http_client(library: str, url: str, connections: int) -> AsyncIterator[Post]:
    """A ``Post`` on a pool of ``connections`` keep-alive connections to ``url``: the timed
    call reads the whole reply; its JSON is parsed after the clock stops."""
    if library == "aiohttp":
        import aiohttp

        connector = aiohttp.TCPConnector(limit=connections)
        timeout = aiohttp.ClientTimeout(total=SYNC_TIMEOUT_S)
        async with aiohttp.ClientSession(url, connector=connector, timeout=timeout) as session:

            async def post_aiohttp(payload: dict) -> bytes:
                async with session.post("/generate", json=payload) as response:
                    response.raise_for_status()
                    return await response.read()

            yield post_aiohttp
    elif library == "httpx":
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        async with httpx.AsyncClient(base_url=url, timeout=SYNC_TIMEOUT_S, limits=limits) as http:

            async def post_httpx(payload: dict) -> bytes:
                response = await http.post("/generate", json=payload)
                response.raise_for_status()
                return response.content

            yield post_httpx
    else:
        raise ValueError(f"client: one of {CLIENTS}, not {library!r}")


async def run_level(
    url: str, config: str, clients: int, requests: int, max_batch: int, body: dict | None = None,
    library: str = CLIENTS[0],
) -> LevelResult:
    """``clients`` closed-loop clients sharing ``requests`` requests (at least two each)."""
    per_client = max(2, requests // clients)
    body = body or {}
    async with http_client(library, url, clients) as post:
        await _client(post, -1, 2, body)  # warm the connection path
        load_before = load_average()
        start = time.perf_counter()
        parts = await asyncio.gather(
            *(_client(post, c, per_client, body) for c in range(clients))
        )
        wall = time.perf_counter() - start
    samples = [s for part in parts for s in part]
    return LevelResult(config, clients, max_batch, samples, wall, load_before, load_average())

"""Item 12: polite clients against a full queue retry as often as the queue drains, not every
second. ``Retry-After`` is the queue's drain time: depth over the throughput the model's workers
report (here 1 image/s, so 8 s for 8 queued jobs)."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable

import httpx

from tests.reliability.conftest import RedisServer, async_client
from tests.support.processes import Gateway

CLIENTS = 50
DEPTH = 8
RATE = 1.0
WINDOW_S = 12.0
ASYNC = {"Prefer": "respond-async"}


async def polite(http: httpx.AsyncClient, until: float, attempts: list[int]) -> None:
    """POST until ``until``, sleeping what each 429's Retry-After says."""
    while time.monotonic() < until:
        response = await http.post("/generate", json={"prompt": "x"}, headers=ASYNC)
        attempts.append(response.status_code)
        if response.status_code != 429:
            return
        await asyncio.sleep(int(response.headers["retry-after"]))


def test_fifty_polite_clients_retry_at_the_drain_rate(
    redis_server: RedisServer, idle_worker: Callable, gateway: Callable[..., Gateway]
) -> None:
    idle_worker(images_per_s=RATE)
    server = gateway(max_queue_depth=DEPTH)

    async def scenario() -> tuple[list[int], str]:
        async with async_client(server, CLIENTS) as http:
            for n in range(DEPTH):
                await http.post("/generate", json={"prompt": f"{n}"}, headers=ASYNC)
            first = await http.post("/generate", json={"prompt": "x"}, headers=ASYNC)
            attempts: list[int] = []
            until = time.monotonic() + WINDOW_S
            await asyncio.gather(*(polite(http, until, attempts) for _ in range(CLIENTS)))
            return attempts, first.headers["retry-after"]

    attempts, retry_after = asyncio.run(scenario())
    expected = math.ceil(DEPTH / RATE)
    bound = CLIENTS * (math.ceil(WINDOW_S / expected) + 1)
    print(f"\n{CLIENTS} polite clients over {WINDOW_S:.0f} s: Retry-After {retry_after} s, "
          f"{len(attempts)} requests (at Retry-After 1 s they would send about "
          f"{CLIENTS * int(WINDOW_S)})")
    assert retry_after == str(expected)
    assert set(attempts) == {429}
    assert len(attempts) <= bound

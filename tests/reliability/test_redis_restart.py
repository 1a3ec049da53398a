"""Item 4: Redis restarts under a running gateway. Stale pooled connections are reconnected by
the clients' ``Retry`` (``olss_core.redis_clients``), not turned into 503s; open event streams
survive; no accepted job is lost."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable

import httpx

from olss_core.keys import queued_zset
from olss_core.redis_clients import sync_client
from tests.reliability.conftest import MODEL, RedisServer, async_client, client
from tests.support.processes import Gateway

CONCURRENT = 30
ASYNC = {"Prefer": "respond-async"}


async def concurrent_views(server: Gateway, job_ids: list[str]) -> Counter:
    async with async_client(server, CONCURRENT) as http:
        requests = [http.get(f"/jobs/{job_ids[n % len(job_ids)]}") for n in range(CONCURRENT)]
        requests += [http.post("/generate", json={"prompt": f"{n}"}, headers=ASYNC)
                     for n in range(CONCURRENT)]
        return Counter(response.status_code for response in await asyncio.gather(*requests))


def test_a_redis_restart_costs_no_request_and_no_job(
    redis_server: RedisServer, idle_worker: Callable, gateway: Callable[..., Gateway]
) -> None:
    idle_worker()
    server = gateway(redis_max_connections=CONCURRENT)
    with client(server) as http:
        job_ids = [http.post("/generate", json={"prompt": f"job {n}"}, headers=ASYNC).json()["id"]
                   for n in range(10)]
        streamed: list[str] = []

        def follow() -> None:
            with http.stream("GET", f"/jobs/{job_ids[0]}/events", timeout=60) as response:
                for line in response.iter_lines():
                    if line.startswith("event:"):
                        streamed.append(line)
                    if line == "event: finished":
                        return

        stream = threading.Thread(target=follow)
        stream.start()
        before = asyncio.run(concurrent_views(server, job_ids))  # fills the pools
        down_s = redis_server.restart()
        after = asyncio.run(concurrent_views(server, job_ids))
        canceled = http.delete(f"/jobs/{job_ids[0]}")
        stream.join(timeout=30)
        views = [http.get(f"/jobs/{job_id}").json()["status"] for job_id in job_ids]
    queued = sync_client(redis_server.url()).zcard(queued_zset(MODEL))
    print(f"\nRedis down {down_s:.2f} s; {2 * CONCURRENT} concurrent requests before: "
          f"{dict(before)}, after: {dict(after)}; stream: {streamed}; queued after: {queued}")
    assert after == {200: CONCURRENT, 202: CONCURRENT}
    assert canceled.status_code == 200
    assert streamed == ["event: queued", "event: finished"]
    assert views == ["canceled"] + ["queued"] * 9
    assert queued == 9 + 2 * CONCURRENT  # every accepted job is still queued


def test_the_shared_sync_client_reconnects_after_a_restart(redis_server: RedisServer) -> None:
    """The worker's kind of client (``sync_client``): its pooled connection went stale."""
    redis = sync_client(redis_server.url())
    redis.set("k", "v")
    redis_server.restart()
    started = time.monotonic()
    assert redis.get("k") == "v"
    assert time.monotonic() - started < 2


def test_requests_while_redis_is_down_are_503_with_retry_after(
    redis_server: RedisServer, idle_worker: Callable, gateway: Callable[..., Gateway]
) -> None:
    idle_worker()
    server = gateway()
    redis_server.stop()
    try:
        response = httpx.get(f"{server.url}/jobs/{'0' * 10}-{'0' * 32}", timeout=30)
        assert (response.status_code, response.json()["error_type"]) == (503, "redis_unavailable")
        assert response.headers["retry-after"] == "1"
        assert httpx.get(f"{server.url}/healthz").status_code == 200
    finally:
        redis_server.start()
    assert httpx.get(f"{server.url}/v1/info", timeout=30).status_code == 200

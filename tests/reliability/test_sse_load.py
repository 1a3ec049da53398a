"""Items 1 and 2: a thousand SSE clients and a burst of requests on a bounded Redis pool, with no
5xx; an idle stream stays open on keep-alive comments until its job finishes.

Measured numbers are printed (``pytest -s``) and recorded in docs/RELIABILITY.md.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable

import httpx
import redis
from httpx_sse import aconnect_sse

from tests.reliability.conftest import RedisServer, async_client, client
from tests.support.processes import Gateway

JOBS = 100
STREAMS_PER_JOB = 10
BURST = 300
POOL = 16
"""Connections per Redis pool of the gateway under test (two pools): far below the streams."""
ASYNC = {"Prefer": "respond-async"}


async def follow(http: httpx.AsyncClient, job_id: str, ready: asyncio.Queue) -> list[str]:
    """One EventSource client: the event types it saw, until ``finished``.

    httpx-sse hands a keep-alive comment on as an event without data (after the first event it
    remembers the last id); an EventSource dispatches none for it (WHATWG HTML 9.2.6), so it is
    counted here as ``keep-alive``.
    """
    seen = []
    async with aconnect_sse(http, "GET", f"/jobs/{job_id}/events") as source:
        source.response.raise_for_status()
        async for event in source.aiter_sse():
            seen.append(event.event if event.data else "keep-alive")
            if len(seen) == 1:
                ready.put_nowait(job_id)
            if event.event == "finished":
                return seen
    return seen


async def burst(http: httpx.AsyncClient, job_ids: list[str]) -> Counter:
    """``BURST`` requests at once: job views, async generates and info; statuses counted."""
    requests = []
    for n in range(BURST):
        kind = n % 3
        if kind == 0:
            requests.append(http.get(f"/jobs/{job_ids[n % len(job_ids)]}"))
        elif kind == 1:
            requests.append(http.post("/generate", json={"prompt": f"{n}"}, headers=ASYNC))
        else:
            requests.append(http.get("/v1/info"))
    return Counter(response.status_code for response in await asyncio.gather(*requests))


def gateway_connections(server: RedisServer) -> int:
    """Clients connected to the test's Redis, less this probe's own connection."""
    probe = redis.Redis.from_url(server.url())
    try:
        return len(probe.client_list()) - 1
    finally:
        probe.close()


def test_a_thousand_streams_and_a_burst_get_no_5xx(
    redis_server: RedisServer, idle_worker: Callable, gateway: Callable[..., Gateway]
) -> None:
    idle_worker()
    streams = JOBS * STREAMS_PER_JOB
    server = gateway(sse_max_streams=streams, max_queue_depth=2 * streams,
                     redis_max_connections=POOL)

    async def scenario() -> dict:
        # httpx's pool scans its connections per request: many small clients, as many
        # EventSources would be, keep the load generator from being the bottleneck.
        stream_clients = [async_client(server, STREAMS_PER_JOB * 5) for _ in range(JOBS // 5)]
        async with async_client(server, BURST + 10) as http:
            created = [http.post("/generate", json={"prompt": f"job {n}"}, headers=ASYNC)
                       for n in range(JOBS)]
            job_ids = [r.json()["id"] for r in await asyncio.gather(*created)]
            ready: asyncio.Queue[str] = asyncio.Queue()
            started = time.monotonic()
            followers = [
                asyncio.create_task(follow(stream_clients[n // 5], job_id, ready))
                for n, job_id in enumerate(job_ids) for _ in range(STREAMS_PER_JOB)
            ]
            for _ in range(streams):
                await asyncio.wait_for(ready.get(), 120)
            opened_s = time.monotonic() - started
            over_cap = await http.get(f"/jobs/{job_ids[0]}/events")
            connections = gateway_connections(redis_server)
            started = time.monotonic()
            statuses = await burst(http, job_ids)
            burst_s = time.monotonic() - started
            cancels = await asyncio.gather(*(http.delete(f"/jobs/{j}") for j in job_ids))
            seen = await asyncio.wait_for(asyncio.gather(*followers), 120)
        for stream_client in stream_clients:
            await stream_client.aclose()
        return {"opened_s": opened_s, "over_cap": over_cap, "connections": connections,
                "statuses": statuses, "burst_s": burst_s, "cancels": cancels, "seen": seen}

    result = asyncio.run(scenario())
    print(f"\n{streams} streams open in {result['opened_s']:.1f} s; burst of {BURST} in "
          f"{result['burst_s']:.1f} s: {dict(result['statuses'])}; Redis clients while open: "
          f"{result['connections']} (pools of {POOL}); keep-alive comments received: "
          f"{sum(seen.count('keep-alive') for seen in result['seen'])}")
    assert (result["over_cap"].status_code, result["over_cap"].json()["error_type"]) == (
        429, "too_many_streams")
    assert sum(n for status, n in result["statuses"].items() if status >= 500) == 0
    assert set(result["statuses"]) == {200, 202}
    assert {r.status_code for r in result["cancels"]} == {200}
    events = [tuple(t for t in seen if t != "keep-alive") for seen in result["seen"]]
    assert Counter(events) == {("queued", "finished"): streams}
    assert result["connections"] <= 2 * POOL + 2  # two pools, the heartbeat's and the probe


def test_an_idle_stream_gets_keep_alive_comments_and_outlives_the_socket_timeout(
    redis_server: RedisServer, idle_worker: Callable, gateway: Callable[..., Gateway]
) -> None:
    """FastAPI's EventSourceResponse sends ``: ping`` after 15 s without an event; the stream
    then waits on (past the 5 s Redis socket timeout that cut it before) until the job ends."""
    idle_worker()
    server = gateway()
    with client(server) as http:
        job_id = http.post("/generate", json={"prompt": "x"}, headers=ASYNC).json()["id"]
        lines: list[tuple[float, str]] = []
        started = time.monotonic()
        with http.stream("GET", f"/jobs/{job_id}/events", timeout=30) as response:
            for line in response.iter_lines():
                lines.append((time.monotonic() - started, line))
                if line == ": ping":
                    httpx.delete(f"{server.url}/jobs/{job_id}")
                if line == "event: finished":
                    break
    (pinged_at,) = [at for at, line in lines if line == ": ping"]
    print(f"\nfirst keep-alive comment after {pinged_at:.1f} s; stream open "
          f"{lines[-1][0]:.1f} s, ended by the job's finished event")
    assert 14 < pinged_at < 20
    assert lines[-1][1] == "event: finished"

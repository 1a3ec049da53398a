"""The floor under ``bench/service_load.py``'s overhead: the service's shape with none of its code.

The service's overhead (a client's end-to-end time minus the inference of its request's batch)
is spent in the HTTP server, the Redis round trips, the processes' wake-ups and olss's own code.
This benchmark runs the same shape with only the libraries the service runs on, so the
difference between the two is what olss's code (FastAPI included) costs:

- a raw ASGI app on uvicorn with httptools and uvloop (the gateway's server), no FastAPI: per
  ``POST /generate`` it parses the JSON body, adds a stream entry (``XADD``, one round trip),
  waits for a pub/sub notice naming its job (one subscription for the process, as
  ``app.notifier``), reads its reply (``GET``, one round trip) and returns it;
- a worker process (redis-py with hiredis, as the worker) that blocks on ``XREADGROUP``, takes
  what has arrived (waiting for a full batch, see below), marks the batch
  started (one round trip, like ``START``), sleeps ``--inference-ms`` as its inference, then
  stores every reply, acknowledges the entries and publishes one notice naming the batch (one
  pipeline, like ``SUCCEED``);
- the load of ``bench/service_load.py``: closed-loop aiohttp clients (``bench.load_client``).

Its batch window is an oracle: a batch starts once it holds as many jobs as there are clients
(the client count, at most 8), or 20 ms after the last arrival, polling every 0.5 ms. So this
is a lower bound for the service, not a model of it. Loopback only; a private Redis for the run.

    .venv/bin/python -m bench.service_floor                  # 1 and 8 clients
    .venv/bin/python -m bench.service_floor --clients 1 8 --requests 160 --inference-ms 140
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any

import redis
import redis.asyncio as aioredis

from bench.load_client import HEADER, TARGET_OVERHEAD_MS, LevelResult, run_level
from tests.support.ports import free_port
from tests.support.processes import Gateway, ServiceProcess, spawn_module
from tests.support.redis_db import clean_db, redis_url

BENCH_DB = 4
STREAM = "floor:jobs"
GROUP = "floor"
CHANNEL = "floor:finished"
REPLY_TTL_S = 600
WINDOW_GAP_S = 0.02
"""A batch that is not full starts once this long passes without a new entry."""
POLL_S = 0.0005
"""The worker's wait between reads while a batch fills."""
MAX_BATCH = 8
MODULE = "bench.service_floor"

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def reply_key(job_id: str) -> str:
    return f"floor:reply:{job_id}"


class FloorApp:
    """The gateway's request path with nothing but the libraries: parse, enqueue, wait, read."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.waiters: dict[str, asyncio.Future[None]] = {}
        self.redis: Any = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["path"] == "/healthz":
            await self._reply(send, 200, b'{"status":"ok"}')
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        job = json.loads(body)
        job_id = uuid.uuid4().hex
        waiter = asyncio.get_running_loop().create_future()
        self.waiters[job_id] = waiter
        await self.redis.xadd(STREAM, {"id": job_id, "created": repr(time.time()),
                                       "prompt": job.get("prompt", "")})
        try:
            await asyncio.wait_for(waiter, REPLY_TTL_S)
        finally:
            self.waiters.pop(job_id, None)
        await self._reply(send, 200, await self.redis.get(reply_key(job_id)))

    @staticmethod
    async def _reply(send: Send, status: int, body: bytes) -> None:
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        await receive()
        self.redis = aioredis.Redis.from_url(self.url)
        async with self.redis.pubsub() as pubsub:
            await pubsub.subscribe(CHANNEL)  # before the first request: no notice is missed
            listener = asyncio.ensure_future(self._listen(pubsub))
            await send({"type": "lifespan.startup.complete"})
            await receive()
            listener.cancel()
        await self.redis.aclose()
        await send({"type": "lifespan.shutdown.complete"})

    async def _listen(self, pubsub: Any) -> None:
        async for message in pubsub.listen():
            if message["type"] != "message":
                continue
            for job_id in message["data"].decode().split():
                waiter = self.waiters.get(job_id)
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)


def serve_gateway(url: str, port: int) -> None:
    import uvicorn

    uvicorn.run(FloorApp(url), host="127.0.0.1", port=port, http="httptools",
                log_level="warning", access_log=False)


def _read(client: Any, consumer: str, count: int, block_ms: int | None) -> list[tuple]:
    reply = client.xreadgroup(GROUP, consumer, {STREAM: ">"}, count=count, block=block_ms)
    return [entry for _, entries in reply for entry in entries]


def serve_worker(url: str, inference_s: float, max_batch: int) -> None:
    """Batches of what arrives, an ``inference_s`` sleep each, one notice per batch."""
    client = redis.Redis.from_url(url)
    consumer = uuid.uuid4().hex
    try:
        client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    except redis.ResponseError as error:
        if "BUSYGROUP" not in str(error):
            raise
    while True:
        got = _read(client, consumer, max_batch, block_ms=1000)
        last = time.monotonic()
        while got and len(got) < max_batch and time.monotonic() - last < WINDOW_GAP_S:
            more = _read(client, consumer, max_batch - len(got), block_ms=None)
            if more:
                got += more
                last = time.monotonic()
            else:
                time.sleep(POLL_S)
        if not got:
            continue
        started = time.time()
        client.set("floor:started", repr(started))  # the round trip of START
        slept = time.perf_counter()
        time.sleep(inference_s)
        inference = time.perf_counter() - slept  # as the worker times its inference
        stored = time.time()
        ids = []
        with client.pipeline(transaction=False) as pipe:
            for _, fields in got:
                job_id = fields[b"id"].decode()
                created = float(fields[b"created"])
                timings = {"inference": inference, "queue": started - created,
                           "total": stored - created, "batch_size": len(got)}
                pipe.set(reply_key(job_id), json.dumps({"id": job_id, "timings": timings}),
                         ex=REPLY_TTL_S)
                ids.append(job_id)
            pipe.xack(STREAM, GROUP, *(message_id for message_id, _ in got))
            pipe.publish(CHANNEL, " ".join(ids))
            pipe.execute()


@contextmanager
def floor_service(url: str, inference_ms: float, max_batch: int) -> Iterator[str]:
    """The floor's gateway and worker processes on ``url``; yields the gateway's URL."""
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    gateway_args = ["gateway", url, str(port)]
    worker_args = ["worker", url, str(inference_ms), str(max_batch)]
    worker = ServiceProcess(worker_args, *spawn_module(MODULE, worker_args, env, "floor-worker"))
    gateway = Gateway(gateway_args, *spawn_module(MODULE, gateway_args, env, "floor-gateway"),
                      url=f"http://127.0.0.1:{port}")
    try:
        yield gateway.wait_ready().url
    finally:
        gateway.stop()
        worker.stop()


def floor_level(clients: int, requests: int, inference_ms: float) -> LevelResult:
    """``run_level``'s load against fresh floor processes on a private database."""
    batch = min(clients, MAX_BATCH)
    with clean_db(BENCH_DB), floor_service(redis_url(BENCH_DB), inference_ms, batch) as url:
        return asyncio.run(run_level(url, "floor", clients, requests, batch))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["gateway"]:
        serve_gateway(argv[1], int(argv[2]))
        return 0
    if argv[:1] == ["worker"]:
        serve_worker(argv[1], float(argv[2]) / 1000, int(argv[3]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--requests", type=int, default=160,
                        help="requests per client count (split across its clients)")
    parser.add_argument("--inference-ms", type=float, default=140.0,
                        help="the worker's sleep per batch (the tiny model's batch time)")
    args = parser.parse_args(argv)
    print(HEADER)
    for clients in args.clients:
        result = floor_level(clients, args.requests, args.inference_ms)
        print(result.row(), flush=True)
        limit = TARGET_OVERHEAD_MS.get(clients)
        if limit is not None:
            print(f"floor overhead p50 at {clients} client(s): "
                  f"{result.overhead_p(0.5):.1f} ms (the service's target: <= {limit:g} ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

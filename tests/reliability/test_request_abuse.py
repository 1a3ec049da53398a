"""Items 6, 7 and 8 against a real gateway: an Idempotency-Key raced with other bodies, hostile
model names, and sizes far past a model's own; each is a clear 4xx that queues nothing."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable

from olss_core.keys import MODELS_SET, queued_zset
from olss_core.redis_clients import sync_client
from tests.reliability.conftest import MODEL, RedisServer, async_client, client
from tests.support.processes import Gateway

ASYNC = {"Prefer": "respond-async"}
RACERS = 20
HOSTILE_MODELS = [
    "../../etc/passwd", "/etc", "/etc/passwd", "C:\\Windows", "stabilityai/no-such-model",
    "olss-digits/../x", "OLSS-DIGITS", "olss-digits ", "", "%00", "model\x00", "'; DROP --",
    "a" * 300, "{fleet}", "olss:{fleet}:workers", "☃",
]


def queued(server: RedisServer) -> int:
    return sync_client(server.url()).zcard(queued_zset(MODEL))


def test_one_idempotency_key_raced_with_different_bodies_makes_one_job(
    redis_server: RedisServer, idle_worker: Callable, gateway: Callable[..., Gateway]
) -> None:
    idle_worker()
    server = gateway()

    async def race(bodies: list[dict], key: str) -> list:
        async with async_client(server, RACERS) as http:
            headers = {**ASYNC, "Idempotency-Key": key}
            return await asyncio.gather(
                *(http.post("/generate", json=body, headers=headers) for body in bodies))

    same = asyncio.run(race([{"prompt": "one"}] * RACERS, "same-body"))
    different = asyncio.run(race([{"prompt": f"body {n}"} for n in range(RACERS)], "other-bodies"))
    statuses = Counter(r.status_code for r in different)
    print(f"\n{RACERS} racers, same body: {len({r.json()['id'] for r in same})} job; "
          f"different bodies: {dict(statuses)}; queued: {queued(redis_server)}")
    assert {r.status_code for r in same} == {202} and len({r.json()["id"] for r in same}) == 1
    assert statuses == {202: 1, 422: RACERS - 1}
    assert {r.json()["error_type"] for r in different if r.status_code == 422} == {
        "idempotency_conflict"}
    assert queued(redis_server) == 2


def test_hostile_model_names_are_422_listing_the_served_models(
    redis_server: RedisServer, idle_worker: Callable, gateway: Callable[..., Gateway]
) -> None:
    idle_worker()
    server = gateway()
    with client(server) as http:
        answers = [http.post("/generate", json={"prompt": "x", "model": model}, headers=ASYNC)
                   for model in HOSTILE_MODELS]
        sync_client(redis_server.url()).sadd(MODELS_SET, "retired-model")
        time.sleep(0.6)  # past the gateway's fleet cache (app.fleet.FleetView, 0.5 s)
        retired = http.post("/generate", json={"prompt": "x", "model": "retired-model"})
    statuses = Counter(r.status_code for r in answers)
    print(f"\n{len(HOSTILE_MODELS)} hostile model names: {dict(statuses)}; a known model "
          f"without workers: {retired.status_code}")
    assert statuses == {422: len(HOSTILE_MODELS)}
    for answer in answers:
        body = answer.json()
        assert body["error_type"] in ("unknown_model", "validation_error"), body
        if body["error_type"] == "unknown_model":
            assert "'olss-digits'" in body["error"]
    assert (retired.status_code, retired.json()["error_type"]) == (503, "no_worker")
    assert queued(redis_server) == 0


def test_sizes_past_the_models_own_are_refused_at_once(
    redis_server: RedisServer, idle_worker: Callable, gateway: Callable[..., Gateway]
) -> None:
    """olss-digits is 16x16: 512x512 (146 s a step on CPU) never reaches its worker."""
    idle_worker()
    server = gateway()
    with client(server) as http:
        started = time.monotonic()
        refused = http.post("/generate", json={"prompt": "x", "width": 512, "height": 512})
        refused_ms = (time.monotonic() - started) * 1000
        taken = http.post("/generate", json={"prompt": "x", "width": 32, "height": 32},
                          headers=ASYNC)
        (model,) = http.get("/v1/info").json()["models"]
    print(f"\n512x512 on olss-digits: {refused.status_code} in {refused_ms:.0f} ms; 32x32: "
          f"{taken.status_code}; /v1/info max {model['max_width']}x{model['max_height']}")
    assert refused.status_code == 422
    assert refused.json()["error"] == (
        "width: must be between 16 and 32 for model 'olss-digits' (got 512)")
    assert taken.status_code == 202
    assert (model["max_width"], model["max_height"]) == (32, 32)
    assert queued(redis_server) == 1

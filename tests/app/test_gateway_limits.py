"""Per-model size limits, the seed range, idempotency fingerprints, Retry-After from the drain
rate, and image TTLs after delivery: against a real Redis with heartbeat-only workers."""

from __future__ import annotations

import threading

import pytest
import redis
from fastapi.testclient import TestClient

from app.throughput import MAX_RETRY_AFTER_S
from olss_core.keys import idempotency_key, image_key, queued_zset
from olss_core.protocol import WorkerInfo
from tests.support.thread_worker import finish, lifecycle
from workers.heartbeat import Heartbeat

ASYNC = {"Prefer": "respond-async"}
PROMPT = {"prompt": "a seven"}


def beat(db: redis.Redis, info: WorkerInfo, **changes: object) -> WorkerInfo:
    info = info.model_copy(update=changes)
    Heartbeat(db, info, ttl_s=60, period_s=60, on_beat=lambda: None).beat()
    return info


def test_sizes_are_limited_per_model_from_its_native_size(
    client: TestClient, registered_worker: WorkerInfo, db: redis.Redis
) -> None:
    beat(db, registered_worker, width=16, height=16)  # olss-digits' size
    assert client.post("/generate", json={**PROMPT, "width": 32}, headers=ASYNC).status_code == 202
    response = client.post("/generate", json={**PROMPT, "width": 512}, headers=ASYNC)
    assert response.status_code == 422
    assert response.json()["error"] == (
        "width: must be between 16 and 32 for model 'tiny-sd' (got 512)"
    )
    (model,) = client.get("/v1/info").json()["models"]
    assert (model["max_width"], model["max_height"]) == (32, 32)


def test_a_worker_may_report_its_own_size_limits(
    client: TestClient, registered_worker: WorkerInfo, db: redis.Redis
) -> None:
    beat(db, registered_worker, max_width=48, max_height=24)
    assert client.post("/generate", json={**PROMPT, "width": 48}, headers=ASYNC).status_code == 202
    assert client.post("/generate", json={**PROMPT, "height": 32}, headers=ASYNC).status_code == 422
    (model,) = client.get("/v1/info").json()["models"]
    assert (model["max_width"], model["max_height"]) == (48, 24)


def test_info_states_the_retention_limits(make_client, registered_worker: WorkerInfo) -> None:
    client = make_client(job_ttl_s=300, image_ttl_s=900, delivered_image_ttl_s=30)
    limits = client.get("/v1/info").json()["limits"]
    assert (limits["job_ttl_s"], limits["image_ttl_s"], limits["delivered_image_ttl_s"]) == (
        300, 300, 30  # images never outlive their job
    )
    assert limits["max_body_bytes"] == 262_144 and limits["max_size_factor"] == 2.0


def test_seeds_stay_in_the_accepted_range(
    client: TestClient, registered_worker: WorkerInfo
) -> None:
    body = {**PROMPT, "seed": 2**32 - 1, "num_images": 4}
    job_id = client.post("/generate", json=body, headers=ASYNC).json()["id"]
    assert client.get(f"/jobs/{job_id}").json()["seeds"] == [2**32 - 1, 0, 1, 2]


def test_an_idempotency_key_reused_for_another_request_is_422(
    client: TestClient, registered_worker: WorkerInfo, db: redis.Redis
) -> None:
    key = {**ASYNC, "Idempotency-Key": "order-7"}
    first = client.post("/generate", json=PROMPT, headers=key).json()["id"]
    other = client.post("/generate", json={**PROMPT, "seed": 1}, headers=key)
    assert other.status_code == 422
    assert other.json()["error_type"] == "idempotency_conflict"
    assert "'order-7'" in other.json()["error"] and first in other.json()["error"]
    assert client.post("/generate", json=PROMPT, headers=key).json()["id"] == first
    assert db.zcard(queued_zset("tiny-sd")) == 1


def test_a_key_stored_before_fingerprints_still_returns_its_job(
    client: TestClient, registered_worker: WorkerInfo, db: redis.Redis
) -> None:
    first = client.post("/generate", json=PROMPT, headers={**ASYNC, "Idempotency-Key": "k"})
    job_id = first.json()["id"]
    (stored,) = db.keys(idempotency_key("tiny-sd", "*"))
    db.set(stored, job_id)  # the value as the gateway wrote it before fingerprints
    again = client.post("/generate", json={**PROMPT, "seed": 3},
                        headers={**ASYNC, "Idempotency-Key": "k"})
    assert again.json()["id"] == job_id


@pytest.mark.parametrize(
    ("reported", "depth", "retry_after"),
    [(0.5, 8, 16), (4.0, 8, 2), (None, 8, 1), (0.001, 8, MAX_RETRY_AFTER_S)],
)
def test_retry_after_is_the_time_the_queue_takes_to_drain(
    make_client, registered_worker: WorkerInfo, db: redis.Redis,
    reported: float | None, depth: int, retry_after: int,
) -> None:
    """With a reported rate: depth / rate; without one (and no finishes measured): one full
    batch (8) per second per worker."""
    beat(db, registered_worker, images_per_s=reported)
    client = make_client(max_queue_depth=depth)
    for _ in range(depth):
        client.post("/generate", json=PROMPT, headers=ASYNC)
    response = client.post("/generate", json=PROMPT, headers=ASYNC)
    assert response.status_code == 429
    assert response.headers["retry-after"] == str(retry_after)


def test_delivered_images_expire_soon(
    make_client, registered_worker: WorkerInfo, db: redis.Redis
) -> None:
    client = make_client(delivered_image_ttl_s=7)
    thread = threading.Thread(target=finish, args=(lifecycle(db),))
    thread.start()
    response = client.post("/generate", json={**PROMPT, "num_images": 2})
    thread.join()
    job_id = response.json()["id"]
    assert [0 < db.ttl(image_key(job_id, n)) <= 7 for n in (0, 1)] == [True, True]


def test_an_image_get_shortens_that_images_ttl(
    make_client, registered_worker: WorkerInfo, db: redis.Redis
) -> None:
    client = make_client(delivered_image_ttl_s=7, image_ttl_s=600)
    thread = threading.Thread(target=finish, args=(lifecycle(db),))
    thread.start()
    job_id = client.post("/generate", json={**PROMPT, "num_images": 2}, headers=ASYNC).json()["id"]
    thread.join()
    assert 7 < db.ttl(image_key(job_id, 0)) <= 600  # stored by the worker: OLSS_IMAGE_TTL_S
    assert client.get(f"/jobs/{job_id}/images/0").status_code == 200
    assert 0 < db.ttl(image_key(job_id, 0)) <= 7
    assert db.ttl(image_key(job_id, 1)) > 7

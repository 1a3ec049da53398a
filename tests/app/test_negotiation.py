"""Content negotiation: q-values and specificity (RFC 9110 §12.5.1), 406 before any GPU time."""

from __future__ import annotations

import pytest
import redis
from fastapi.testclient import TestClient

from app.negotiation import JSON, best_match, parse_accept, quality
from olss_core.keys import job_key, queued_zset
from olss_core.protocol import JobRecord, WorkerInfo

ASYNC = {"Prefer": "respond-async"}
IMAGES = ["image/png", "image/jpeg", "image/webp"]


@pytest.mark.parametrize(
    ("accept", "offered", "chosen"),
    [
        (None, [JSON, *IMAGES], JSON),
        ("*/*", [JSON, *IMAGES], JSON),
        ("image/png", [JSON, *IMAGES], "image/png"),
        ("image/*", [JSON, *IMAGES], "image/png"),
        ("image/png;q=0", [JSON, *IMAGES], None),
        ("image/png;q=0, */*;q=0.1", [JSON, "image/png"], JSON),
        ("image/*;q=0.5, image/webp", [JSON, *IMAGES], "image/webp"),
        ("image/webp;q=0.4, application/json;q=0.9", [JSON, *IMAGES], JSON),
        ("image/gif", [JSON, *IMAGES], None),
        ("text/html,application/xhtml+xml,*/*;q=0.8", [JSON], JSON),
        ("image/png;q=abc, application/json", [JSON, "image/png"], JSON),
    ],
)
def test_best_match_honours_q_values_and_specificity(
    accept: str | None, offered: list[str], chosen: str | None
) -> None:
    assert best_match(offered, accept) == chosen


def test_the_most_specific_range_decides() -> None:
    ranges = parse_accept("image/*;q=0.2, image/png;q=0.9, */*;q=0.1")
    assert quality("image/png", ranges) == 0.9
    assert quality("image/jpeg", ranges) == 0.2
    assert quality(JSON, ranges) == 0.1


@pytest.mark.parametrize(
    ("body", "accept", "explains"),
    [
        ({}, "image/gif", "application/json or image/png"),
        ({}, "image/png;q=0", "application/json or image/png"),
        ({"num_images": 2}, "image/png", "num_images=2 is answered only as application/json"),
        ({"output_format": "webp"}, "image/png", "output_format=webp is answered as"),
    ],
)
def test_an_unsatisfiable_accept_is_406_and_queues_nothing(
    client: TestClient, registered_worker: WorkerInfo, db: redis.Redis, body: dict,
    accept: str, explains: str,
) -> None:
    response = client.post("/generate", json={"prompt": "x", **body}, headers={"Accept": accept})
    assert response.status_code == 406
    assert response.json()["error_type"] == "not_acceptable"
    assert explains in response.json()["error"]
    assert db.zcard(queued_zset("tiny-sd")) == 0


def test_the_job_format_follows_the_preferred_image_type(
    client: TestClient, registered_worker: WorkerInfo, db: redis.Redis
) -> None:
    response = client.post("/generate", json={"prompt": "x"},
                           headers={**ASYNC, "Accept": "image/png;q=0.5, image/jpeg"})
    assert response.status_code == 202
    spec = JobRecord.from_hash(db.hgetall(job_key(response.json()["id"]))).spec
    assert spec.output_format == "jpeg"


def test_async_requests_are_202_json_whatever_accept_says(
    client: TestClient, registered_worker: WorkerInfo
) -> None:
    response = client.post("/generate", json={"prompt": "x", "num_images": 2},
                           headers={**ASYNC, "Accept": "image/png"})
    assert response.status_code == 202
    assert response.headers["preference-applied"] == "respond-async"


def test_preference_applied_only_answers_a_prefer(
    make_client, registered_worker: WorkerInfo
) -> None:
    client = make_client(sync_timeout_s=0.1)
    timed_out = client.post("/generate", json={"prompt": "x"})
    assert timed_out.status_code == 202
    assert "preference-applied" not in timed_out.headers


def test_json_routes_refuse_an_accept_without_json(
    client: TestClient, registered_worker: WorkerInfo
) -> None:
    job_id = client.post("/generate", json={"prompt": "x"}, headers=ASYNC).json()["id"]
    assert client.get(f"/jobs/{job_id}", headers={"Accept": "image/png"}).status_code == 406
    assert client.get(f"/jobs/{job_id}", headers={"Accept": "application/*"}).status_code == 200
    assert client.get("/v1/info", headers={"Accept": "text/html"}).status_code == 406
    events = client.get(f"/jobs/{job_id}/events", headers={"Accept": "application/json"})
    assert events.status_code == 406

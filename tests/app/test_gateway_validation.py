"""POST /generate: each bad field is a 422 naming the field and the limit; defaults resolve."""

from __future__ import annotations

import pytest
import redis
from fastapi.testclient import TestClient

from olss_core.keys import job_key
from olss_core.protocol import JobRecord, WorkerInfo

ASYNC = {"Prefer": "respond-async"}


@pytest.mark.parametrize(
    ("body", "field", "limit"),
    [
        ({}, "prompt", "required"),
        ({"prompt": ""}, "prompt", "at least 1"),
        ({"prompt": "x" * 1001}, "prompt", "1000"),
        ({"prompt": "x", "negative_prompt": "y" * 1001}, "negative_prompt", "1000"),
        ({"prompt": "x", "width": 36}, "width", "multiple of 8"),
        ({"prompt": "x", "width": 2048}, "width", "64"),
        ({"prompt": "x", "width": 72}, "width", "between 16 and 64 for model 'tiny-sd'"),
        ({"prompt": "x", "width": True}, "width", "valid integer"),
        ({"prompt": "x", "steps": 4.5}, "steps", "valid integer"),
        ({"prompt": "x", "seed": "7"}, "seed", "valid integer"),
        ({"prompt": "x", "height": 8}, "height", "16"),
        ({"prompt": "x", "steps": 0}, "steps", "greater than or equal to 1"),
        ({"prompt": "x", "steps": 151, "scheduler": "ddim"}, "steps", "150"),
        ({"prompt": "x", "guidance_scale": 31}, "guidance_scale", "30"),
        ({"prompt": "x", "guidance_scale": -1}, "guidance_scale", "greater than or equal to 0"),
        ({"prompt": "x", "num_images": 5}, "num_images", "4"),
        ({"prompt": "x", "seed": -1}, "seed", "greater than or equal to 0"),
        ({"prompt": "x", "seed": 2**40}, "seed", "4294967295"),
        ({"prompt": "x", "scheduler": "lms"}, "scheduler", "olss"),
        ({"prompt": "x", "output_format": "gif"}, "output_format", "png"),
        ({"prompt": "x", "colour": "red"}, "colour", "not permitted"),
    ],
)
def test_bad_field_is_422_naming_field_and_limit(
    client: TestClient, registered_worker: WorkerInfo, body: dict, field: str, limit: str
) -> None:
    response = client.post("/generate", json=body, headers=ASYNC)
    assert response.status_code == 422
    error = response.json()
    assert error["error_type"] == "validation_error"
    assert field in error["error"] and limit in error["error"], error


def test_a_body_that_is_not_json_is_422_saying_to_send_json(
    client: TestClient, registered_worker: WorkerInfo
) -> None:
    response = client.post(
        "/generate",
        content=b'{"prompt": "x"}',
        headers={**ASYNC, "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 422
    message = response.json()["error"]
    assert "Content-Type: application/json" in message
    assert "application/x-www-form-urlencoded" in message


@pytest.mark.parametrize(
    ("body", "field"),
    [({"steps": 7}, "steps"), ({"guidance_scale": 20.0}, "guidance_scale"),
     ({"steps": 4, "guidance_scale": 0.5}, "steps and guidance_scale")],
)
def test_olss_without_a_serving_schedule_is_422_listing_the_available_ones(
    client: TestClient, registered_worker: WorkerInfo, body: dict, field: str
) -> None:
    response = client.post("/generate", json={"prompt": "x", **body}, headers=ASYNC)
    assert response.status_code == 422
    message = response.json()["error"]
    assert message.startswith(f"{field}:")
    assert "steps=4 guidance_scale=7.5" in message and "steps=5 guidance_scale=7.5" in message


@pytest.mark.parametrize(("body", "steps"), [({"guidance_scale": 4.4}, 5),
                                            ({"steps": 4, "guidance_scale": 12.0}, 4)])
def test_olss_at_any_served_guidance_is_queued_at_that_guidance(
    client: TestClient, registered_worker: WorkerInfo, db: redis.Redis, body: dict, steps: int
) -> None:
    response = client.post("/generate", json={"prompt": "x", **body}, headers=ASYNC)
    assert response.status_code == 202, response.text
    spec = JobRecord.from_hash(db.hgetall(job_key(response.json()["id"]))).spec
    assert (spec.scheduler, spec.steps, spec.guidance_scale) == ("olss", steps,
                                                                 body["guidance_scale"])


def test_limits_come_from_settings(make_client, registered_worker: WorkerInfo) -> None:
    client = make_client(max_prompt_chars=5, max_num_images=2)
    assert client.post("/generate", json={"prompt": "123456"}, headers=ASYNC).status_code == 422
    response = client.post("/generate", json={"prompt": "x", "num_images": 3}, headers=ASYNC)
    assert "num_images: at most 2" in response.json()["error"]


def test_defaults_are_resolved_before_the_job_is_queued(
    client: TestClient, registered_worker: WorkerInfo, db: redis.Redis
) -> None:
    response = client.post("/generate", json={"prompt": "a cat"}, headers=ASYNC)
    assert response.status_code == 202
    spec = JobRecord.from_hash(db.hgetall(job_key(response.json()["id"]))).spec
    assert (spec.model, spec.width, spec.height) == ("tiny-sd", 32, 32)
    assert (spec.scheduler, spec.steps, spec.guidance_scale) == ("olss", 5, 7.5)
    assert 0 <= spec.seed < 2**32 and spec.output_format == "png"


def test_accept_header_picks_the_output_format(
    client: TestClient, registered_worker: WorkerInfo, db: redis.Redis
) -> None:
    response = client.post(
        "/generate", json={"prompt": "x", "scheduler": "ddim"},
        headers={**ASYNC, "Accept": "image/webp"},
    )
    spec = JobRecord.from_hash(db.hgetall(job_key(response.json()["id"]))).spec
    assert (spec.output_format, spec.steps, spec.guidance_scale) == ("webp", 25, 7.5)

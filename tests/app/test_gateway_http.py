"""The HTTP edge: body limit (413), unparsable bodies (400 naming why), 405 with the full
``Allow``, HEAD probes, out-of-range ``Last-Event-ID`` (422); every error is the error JSON."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from fastapi.testclient import TestClient

from olss_core.keys import queued_zset
from olss_core.protocol import WorkerInfo

JSON = {"Content-Type": "application/json"}
ASYNC = {"Prefer": "respond-async"}


def test_a_declared_oversized_body_is_413_before_it_is_read(
    make_client, registered_worker: WorkerInfo, db: redis.Redis
) -> None:
    client = make_client(max_body_bytes=4096)
    body = b'{"prompt": "' + b"x" * 5000 + b'"}'
    response = client.post("/generate", content=body, headers=JSON)
    assert response.status_code == 413
    assert response.json() == {
        "error": "body: at most 4096 bytes (OLSS_MAX_BODY_BYTES)", "error_type": "body_too_large"
    }
    assert db.zcard(queued_zset("tiny-sd")) == 0


def test_a_chunked_oversized_body_is_413_as_it_arrives(
    make_client, registered_worker: WorkerInfo
) -> None:
    client = make_client(max_body_bytes=4096)

    def chunks() -> Iterator[bytes]:
        yield b'{"prompt": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}'

    response = client.post("/generate", content=chunks(), headers=JSON)
    assert (response.status_code, response.json()["error_type"]) == (413, "body_too_large")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"prompt": "x"', "body: invalid JSON at character 14: Expecting ',' delimiter"),
        (b'{"prompt": "\xff"}', "body: not UTF-8 (byte 0xff at 12)"),
        (b"[" * 100_000 + b"]" * 100_000, "body: JSON nested too deeply"),
    ],
)
def test_a_body_that_is_not_json_is_400_saying_why(
    client: TestClient, registered_worker: WorkerInfo, body: bytes, message: str
) -> None:
    response = client.post("/generate", content=body, headers=JSON)
    assert response.status_code == 400
    assert response.json() == {"error": message, "error_type": "invalid_json"}


def test_405_allows_every_method_of_the_path(client: TestClient) -> None:
    response = client.post("/jobs/0123456789-0123456789abcdef0123456789abcdef")
    assert response.status_code == 405
    assert response.headers["allow"] == "DELETE, GET"
    assert response.json()["error_type"] == "method_not_allowed"


def test_probes_answer_head(client: TestClient, registered_worker: WorkerInfo) -> None:
    assert client.head("/healthz").status_code == 200
    assert client.head("/readyz").status_code == 200


@pytest.mark.parametrize("last_event_id", ["111111111111111111111111111111-1", "1-2-3", "x", "-1"])
def test_an_impossible_last_event_id_is_422_before_the_stream_starts(
    client: TestClient, registered_worker: WorkerInfo, last_event_id: str
) -> None:
    job_id = client.post("/generate", json={"prompt": "x"}, headers=ASYNC).json()["id"]
    response = client.get(f"/jobs/{job_id}/events", headers={"Last-Event-ID": last_event_id})
    assert response.status_code == 422
    assert response.json()["error"].startswith("header.last-event-id:")


def test_unknown_route_is_the_error_json(client: TestClient) -> None:
    response = client.get("/nope")
    assert response.status_code == 404
    assert response.json()["error_type"] == "not_found"

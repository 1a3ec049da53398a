"""Queue and job routes against real Redis with a worker that never consumes."""

from __future__ import annotations

import pytest
import redis
from fastapi.testclient import TestClient

from olss_core.keys import MODELS_SET, jobs_stream, queued_zset
from olss_core.protocol import CalibrationProgress, WorkerInfo, WorkerState
from workers.heartbeat import Heartbeat

ASYNC = {"Prefer": "respond-async"}
PROMPT = {"prompt": "a lighthouse"}


def _submit(client: TestClient, **headers: str) -> str:
    response = client.post("/generate", json=PROMPT, headers={**ASYNC, **headers})
    assert response.status_code == 202, response.text
    return response.json()["id"]


def test_async_returns_202_with_links_and_the_job_is_queued(
    client: TestClient, registered_worker: WorkerInfo, db: redis.Redis
) -> None:
    response = client.post("/generate", json=PROMPT, headers=ASYNC)
    assert response.status_code == 202
    body = response.json()
    job_id = body["id"]
    assert body["status"] == "queued"
    assert body["links"]["events"] == f"/jobs/{job_id}/events"
    assert response.headers["location"] == f"/jobs/{job_id}"
    assert db.xlen(jobs_stream("tiny-sd")) == 1
    second = _submit(client)
    view = client.get(f"/jobs/{second}").json()
    assert (view["status"], view["queue_position"], view["attempts"]) == ("queued", 1, 0)
    assert view["progress"] == {"step": 0, "total": 5}


def test_sync_wait_that_times_out_returns_202_and_the_job_goes_on(
    make_client, registered_worker: WorkerInfo
) -> None:
    client = make_client(sync_timeout_s=0.2)
    response = client.post("/generate", json=PROMPT)
    assert response.status_code == 202
    assert client.get(response.headers["location"]).json()["status"] == "queued"


def test_same_idempotency_key_returns_the_same_job(
    client: TestClient, registered_worker: WorkerInfo, db: redis.Redis
) -> None:
    first = _submit(client, **{"Idempotency-Key": "order-1"})
    assert _submit(client, **{"Idempotency-Key": "order-1"}) == first
    assert _submit(client, **{"Idempotency-Key": "order-2"}) != first
    assert db.zcard(queued_zset("tiny-sd")) == 2


def test_full_queue_is_429_with_retry_after(make_client, registered_worker: WorkerInfo) -> None:
    client = make_client(max_queue_depth=2)
    _submit(client)
    _submit(client)
    response = client.post("/generate", json=PROMPT, headers=ASYNC)
    assert response.status_code == 429
    assert response.json()["error_type"] == "queue_full"
    assert int(response.headers["retry-after"]) >= 1


def test_no_live_worker_is_503(client: TestClient) -> None:
    response = client.post("/generate", json=PROMPT)
    assert response.status_code == 503
    assert response.json()["error_type"] == "no_worker"
    assert client.get("/readyz").status_code == 503


@pytest.mark.parametrize("model", ["sd-xl", "../../etc/passwd", "/etc", "org/no-such-model"])
def test_unknown_model_is_422_naming_what_is_served(
    client: TestClient, registered_worker: WorkerInfo, model: str
) -> None:
    response = client.post("/generate", json={**PROMPT, "model": model})
    assert response.status_code == 422
    body = response.json()
    assert body["error_type"] == "unknown_model"
    assert body["error"].startswith("model:") and "tiny-sd" in body["error"]


def test_a_known_model_whose_workers_are_gone_is_503_with_retry_after(
    client: TestClient, registered_worker: WorkerInfo, db: redis.Redis
) -> None:
    db.sadd(MODELS_SET, "sd-xl")  # it had a worker once (the heartbeat adds it)
    response = client.post("/generate", json={**PROMPT, "model": "sd-xl"})
    assert (response.status_code, response.json()["error_type"]) == (503, "no_worker")
    assert int(response.headers["retry-after"]) >= 1


def test_redis_down_is_503(make_client) -> None:
    client = make_client(redis_url="redis://127.0.0.1:1/0")
    response = client.post("/generate", json=PROMPT)
    assert response.status_code == 503
    assert response.json()["error_type"] == "redis_unavailable"
    assert client.get("/readyz").status_code == 503
    assert client.get("/healthz").status_code == 200


def test_api_keys_are_required_when_configured(make_client, registered_worker: WorkerInfo) -> None:
    client = make_client(api_keys=["k1", "k2"])
    assert client.post("/generate", json=PROMPT, headers=ASYNC).status_code == 401
    wrong = {**ASYNC, "Authorization": "Bearer nope"}
    response = client.post("/generate", json=PROMPT, headers=wrong)
    assert (response.status_code, response.json()["error_type"]) == (401, "unauthorized")
    good = {**ASYNC, "Authorization": "Bearer k2"}
    job_id = client.post("/generate", json=PROMPT, headers=good).json()["id"]
    assert client.get(f"/jobs/{job_id}").status_code == 401
    assert client.get(f"/jobs/{job_id}", headers=good).status_code == 200
    assert client.get("/v1/info").status_code == 401
    assert client.get("/healthz").status_code == 200


def test_unknown_job_and_image_are_404(client: TestClient, registered_worker: WorkerInfo) -> None:
    assert client.get("/jobs/0123456789abcdef0123456789abcdef").status_code == 404
    assert client.delete("/jobs/nope").json()["error_type"] == "not_found"
    job_id = _submit(client)
    assert client.get(f"/jobs/{job_id}/images/0").status_code == 404
    assert client.get(f"/jobs/{job_id}/images/3").status_code == 404


def test_cancel_a_queued_job_removes_it_from_the_queue(
    client: TestClient, registered_worker: WorkerInfo, db: redis.Redis
) -> None:
    job_id = _submit(client)
    response = client.delete(f"/jobs/{job_id}")
    assert (response.status_code, response.json()["status"]) == (200, "canceled")
    assert db.zcard(queued_zset("tiny-sd")) == 0
    assert client.get(f"/jobs/{job_id}").json()["status"] == "canceled"
    again = client.delete(f"/jobs/{job_id}")
    assert (again.status_code, again.json()["error_type"]) == (409, "job_finished")


def test_events_replay_for_a_late_client(client: TestClient, registered_worker: WorkerInfo) -> None:
    job_id = _submit(client)
    client.delete(f"/jobs/{job_id}")
    with client.stream("GET", f"/jobs/{job_id}/events") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        text = response.read().decode()
    assert [line for line in text.splitlines() if line.startswith("event:")] == [
        "event: queued", "event: finished"
    ]
    assert '"status":"canceled"' in text


def test_info_lists_models_schedules_and_limits(
    client: TestClient, registered_worker: WorkerInfo
) -> None:
    info = client.get("/v1/info").json()
    assert info["version"]
    (model,) = info["models"]
    assert model["key"] == "tiny-sd" and model["workers"] == 1
    assert [s["steps"] for s in model["schedules"]] == [4, 5]
    assert info["limits"]["max_num_images"] == 4
    assert client.get("/readyz").json() == {"status": "ready", "workers": 1, "sleeping": []}
    assert client.get("/docs").status_code == 200


def test_readyz_shows_calibration_and_a_generate_is_a_503_not_a_422(
    client: TestClient, registered_worker: WorkerInfo, db: redis.Redis
) -> None:
    """Issue 9: while a model's only worker calibrates, the gateway is not ready and says how
    far it is; a request for the model is a 503 with Retry-After, never a 422."""
    progress = CalibrationProgress(phase="teacher", fraction=0.25, eta_s=42.0, steps=[4, 5])
    calibrating = registered_worker.model_copy(
        update={"state": WorkerState.CALIBRATING, "calibration": progress, "schedules": []})
    Heartbeat(db, calibrating, ttl_s=60, period_s=60, on_beat=lambda: None).beat()
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["status"] == "calibrating"
    assert ready.json()["progress"]["fraction"] == 0.25
    assert ready.headers["retry-after"] == "42"
    refused = client.post("/generate", json={"prompt": "x"}, headers={"Prefer": "respond-async"})
    assert (refused.status_code, refused.json()["error_type"]) == (503, "calibrating")
    assert refused.headers["retry-after"] == "42" and "25% done" in refused.json()["error"]

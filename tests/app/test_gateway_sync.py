"""Sync requests wait for the worker's result; the worker side here is the real lifecycle code
driven by a thread (no pipeline: these tests are about the gateway)."""

from __future__ import annotations

import threading
import time

import redis
from fastapi.testclient import TestClient

from app.notifier import POLL_S
from olss_core.protocol import WorkerInfo
from tests.support.thread_worker import finish, lifecycle, take_one
from workers.results import read_parameters


def test_sync_png_returns_as_soon_as_the_result_is_stored(
    client: TestClient, registered_worker: WorkerInfo, db: redis.Redis
) -> None:
    """The finished notice wakes the request: far sooner than its fallback poll (``POLL_S``).
    The result is stored a moment after the request started waiting, so a request woken by the
    poll alone would answer about ``POLL_S`` after it began, not just after the store."""
    stored_at: list[float] = []
    thread = threading.Thread(target=finish, args=(lifecycle(db), stored_at, 0.2))
    thread.start()
    response = client.post("/generate", json={"prompt": "x", "seed": 3},
                           headers={"Accept": "image/png"})
    answered_at = time.monotonic()
    thread.join()
    assert answered_at - stored_at[0] < POLL_S / 4
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert (response.headers["x-seed"], response.headers["x-schedule"]) == ("3", "sched")
    assert read_parameters(response.content).seed == 3


def test_sync_json_for_several_images(
    client: TestClient, registered_worker: WorkerInfo, db: redis.Redis
) -> None:
    thread = threading.Thread(target=finish, args=(lifecycle(db),))
    thread.start()
    response = client.post("/generate", json={"prompt": "x", "seed": 3, "num_images": 2},
                           headers={"Accept": "image/png, application/json;q=0.5"})
    thread.join()
    body = response.json()
    assert [image["seed"] for image in body["images"]] == [3, 4]
    assert body["timings"]["inference"] == 0.5


def test_cancel_of_a_running_job_asks_its_worker(
    client: TestClient, registered_worker: WorkerInfo, db: redis.Redis
) -> None:
    worker = lifecycle(db)
    job_id = client.post("/generate", json={"prompt": "x"},
                         headers={"Prefer": "respond-async"}).json()["id"]
    job = take_one(worker)
    assert client.get(f"/jobs/{job_id}").json()["status"] == "running"
    response = client.delete(f"/jobs/{job_id}")
    assert (response.status_code, response.json()["status"]) == (202, "running")
    assert worker.after_step([job], 1, 5, send=[job]) == {job_id}

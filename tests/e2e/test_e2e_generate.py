"""Generation through real gateway and worker processes: sync, async, SSE, seeds, metrics."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from tests.support.jobs import submit, wait_for, wait_status
from workers.results import read_parameters

pytestmark = pytest.mark.e2e

PIXEL_TOLERANCE = 2  # of 255: CPU convolutions may differ in the last bits with batch size


def pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def image_bytes(http: httpx.Client, job_id: str, index: int = 0) -> bytes:
    response = http.get(f"/jobs/{job_id}/images/{index}")
    assert response.status_code == 200
    return response.content


def test_sync_png_is_the_image_with_its_parameters(stack) -> None:
    response = stack.http.post(
        "/generate", json={"prompt": "a red fox", "seed": 5}, headers={"Accept": "image/png"}
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    schedule = stack.worker.info.default_schedule
    assert (response.headers["x-seed"], response.headers["x-schedule"]) == ("5", schedule)
    assert "inference;dur=" in response.headers["server-timing"]
    parameters = read_parameters(response.content)
    assert (parameters.seed, parameters.steps, parameters.schedule) == (5, 5, schedule)
    assert parameters.job_id == response.headers["x-job-id"]


def test_sync_json_carries_seeds_schedule_timings_and_base64_images(stack) -> None:
    response = stack.http.post(
        "/generate", json={"prompt": "a lighthouse", "seed": 10, "num_images": 2, "steps": 4}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["status"], body["seeds"], body["steps"]) == ("succeeded", [10, 11], 4)
    assert body["schedule"].startswith("tiny-sd__4steps")
    timings = body["timings"]
    assert timings["total"] >= timings["inference"] > 0 and timings["queue"] >= 0
    for image in body["images"]:
        assert pixels(base64.b64decode(image["data_base64"])).shape == (32, 32, 3)


def test_async_job_can_be_polled_and_its_images_fetched(stack) -> None:
    job_id = submit(stack.http, prompt="a bowl of ramen", num_images=2, output_format="webp",
                    scheduler="unipc", steps=3)
    view = wait_status(stack.http, job_id, "succeeded")
    assert view["queue_position"] is None and view["progress"] == {"step": 3, "total": 3}
    assert view["links"]["images"] == [f"/jobs/{job_id}/images/0", f"/jobs/{job_id}/images/1"]
    response = stack.http.get(f"/jobs/{job_id}/images/1")
    assert response.headers["content-type"] == "image/webp"


def event_names(text: str) -> list[str]:
    return [line.removeprefix("event: ") for line in text.splitlines() if line.startswith("event:")]


def test_events_stream_live_and_replay_for_a_late_client(stack) -> None:
    job_id = submit(stack.http, prompt="a misty forest", scheduler="ddim", steps=4)
    with stack.http.stream("GET", f"/jobs/{job_id}/events") as live:
        live_text = live.read().decode()
    expected = ["queued", "started", "step", "step", "step", "step", "finished"]
    assert event_names(live_text) == expected
    assert '"step":4,"total":4' in live_text and '"status":"succeeded"' in live_text
    late = stack.http.get(f"/jobs/{job_id}/events").text
    assert event_names(late) == expected


def test_a_seed_gives_the_same_image_alone_and_batched(stack) -> None:
    http = stack.http
    alone = submit(http, prompt="a golden retriever", seed=42)
    wait_status(http, alone, "succeeded")
    # A slow job occupies the worker while three jobs queue; it then takes them as one batch.
    blocker = submit(http, prompt="blocker", scheduler="ddim", steps=20)
    wait_status(http, blocker, "running")
    batched = [submit(http, prompt="a golden retriever", seed=40, num_images=2),
               submit(http, prompt="a golden retriever", seed=42),
               submit(http, prompt="a castle", seed=42)]
    views = [wait_status(http, job_id, "succeeded") for job_id in batched]
    assert [v["timings"]["batch_size"] for v in views] == [4, 4, 4]
    reference = pixels(image_bytes(http, alone))
    assert np.abs(pixels(image_bytes(http, batched[1])) - reference).max() <= PIXEL_TOLERANCE
    assert np.abs(pixels(image_bytes(http, batched[2])) - reference).max() > PIXEL_TOLERANCE


def test_num_images_use_consecutive_seeds(stack) -> None:
    http = stack.http
    several = submit(http, prompt="a hummingbird", seed=7, num_images=3)
    single = submit(http, prompt="a hummingbird", seed=9)
    for job_id in (several, single):
        wait_status(http, job_id, "succeeded")
    difference = pixels(image_bytes(http, several, 2)) - pixels(image_bytes(http, single))
    assert np.abs(difference).max() <= PIXEL_TOLERANCE


def test_idempotency_key_returns_the_same_job(stack) -> None:
    """The same key and body is the same job; the same key with another body is a conflict."""
    headers = {"Idempotency-Key": "e2e-1", "Prefer": "respond-async"}
    first = stack.http.post("/generate", json={"prompt": "x"}, headers=headers).json()["id"]
    again = stack.http.post("/generate", json={"prompt": "x"}, headers=headers).json()["id"]
    assert first == again
    other = stack.http.post("/generate", json={"prompt": "y"}, headers=headers)
    assert (other.status_code, other.json()["error_type"]) == (422, "idempotency_conflict")


def samples(exposition: str) -> dict[tuple[str, frozenset], float]:
    """``(name, labels) -> value`` of every sample in a Prometheus text exposition."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    }


def test_both_processes_export_their_metrics(stack) -> None:
    submit(stack.http, prompt="metrics")
    gateway = samples(stack.http.get("/metrics").text)
    ready = {labels: value for (name, labels), value in gateway.items() if name == "olss_workers"}
    assert list(ready.values()) == [1.0], ready  # one model, one ready worker
    (model,) = ready
    assert ("olss_queue_depth", model) in gateway
    assert any(name == "olss_request_duration_seconds_bucket" for name, _ in gateway)
    worker = samples(httpx.get(stack.worker.metrics_url).text)
    assert worker[("olss_jobs_total", model | {("status", "succeeded")})] >= 1
    assert worker[("olss_images_total", model)] >= 1
    denoise = model | {("stage", "denoise"), ("le", "+Inf")}
    assert worker[("olss_job_inference_seconds_bucket", denoise)] >= 1
    for name in ("olss_job_queue_wait_seconds_bucket", "olss_job_e2e_seconds_bucket",
                 "olss_batch_size_bucket"):
        assert any(sample == name for sample, _ in worker), name
    assert stack.http.get("/readyz").json()["status"] == "ready"


def test_the_heartbeat_reports_the_measured_throughput(stack) -> None:
    """Issue 11 item 12: the worker's rate (images per second of generation) rides on its
    heartbeat, which the gateway turns into Retry-After."""
    wait_status(stack.http, submit(stack.http, prompt="throughput"), "succeeded")
    info = wait_for(lambda: (beat := stack.worker.heartbeat()) and beat.images_per_s and beat,
                    timeout_s=30, what="a heartbeat with images_per_s")
    assert 0 < info.images_per_s < 10_000

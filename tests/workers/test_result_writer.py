"""ResultWriter on the real Redis: images, schedule and timings stored, metrics observed; a job
canceled meanwhile is skipped but still counts in the batch size."""

from __future__ import annotations

import io

import pytest
import redis
from PIL import Image

from olss_core.job_states import JobStatus
from olss_core.keys import image_key, job_key
from olss_core.metrics import WorkerMetrics
from olss_core.protocol import JobRecord
from olss_core.settings import Settings
from tests.support.fake_engine import DURATIONS, FakeEngine
from tests.support.queued_jobs import MODEL, enqueue, job_spec
from tests.support.worker_parts import jobs_counted, receive_all
from workers.leases import LeaseTracker
from workers.lifecycle import ClaimedJob, JobLifecycle
from workers.result_writer import ResultWriter
from workers.results import read_parameters


def started(lifecycle: JobLifecycle, leases: LeaseTracker) -> list[ClaimedJob]:
    return [job for _, job in lifecycle.start(receive_all(lifecycle, leases))]


def record(db: redis.Redis, job_id: str) -> JobRecord:
    return JobRecord.from_hash(db.hgetall(job_key(job_id)))


def stored_image(settings: Settings, job_id: str, index: int) -> bytes:
    client = redis.Redis.from_url(settings.redis_url)  # images are bytes, not text
    try:
        return client.get(image_key(job_id, index))
    finally:
        client.close()


def sample(metrics: WorkerMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, {"model": metrics.model, **labels})


def test_results_are_stored_with_their_timings_and_the_metrics_move(
    db: redis.Redis, settings: Settings, lifecycle: JobLifecycle, leases: LeaseTracker,
    metrics: WorkerMetrics,
) -> None:
    png, jpeg = enqueue(settings, [job_spec(seed=7, num_images=2),
                                   job_spec(output_format="jpeg")])
    batch = started(lifecycle, leases)
    generation = FakeEngine().generate([job.spec for job in batch])
    ResultWriter(lifecycle, leases, metrics).store(batch, generation)

    for job_id in (png, jpeg):
        stored = record(db, job_id)
        assert (stored.status, stored.schedule) == (JobStatus.SUCCEEDED, "fake-olss")
        timings = stored.timings
        assert (timings.encode, timings.denoise, timings.decode, timings.inference) == (
            0.01, 0.05, 0.02, 0.09)
        assert timings.batch_size == 3 and timings.total >= timings.queue >= 0
    assert [read_parameters(stored_image(settings, png, n)).seed for n in (0, 1)] == [7, 8]
    with Image.open(io.BytesIO(stored_image(settings, jpeg, 0))) as image:
        assert image.format == "JPEG"

    assert jobs_counted(metrics) == {"succeeded": 2}
    assert sample(metrics, "olss_batch_size_count") == 1
    assert sample(metrics, "olss_batch_size_sum") == 3
    for stage, seconds in DURATIONS.items():
        assert sample(metrics, "olss_job_inference_seconds_count", stage=stage) == 2
        assert sample(metrics, "olss_job_inference_seconds_sum", stage=stage) == pytest.approx(
            2 * seconds)
    assert sample(metrics, "olss_job_queue_wait_seconds_count") == 2
    assert sample(metrics, "olss_job_e2e_seconds_count") == 2
    assert leases.held() == frozenset()


def test_a_job_canceled_meanwhile_is_skipped_but_counts_in_the_batch_size(
    db: redis.Redis, settings: Settings, lifecycle: JobLifecycle, leases: LeaseTracker,
    metrics: WorkerMetrics,
) -> None:
    canceled, kept = enqueue(settings, [job_spec(num_images=2), job_spec()])
    batch = started(lifecycle, leases)
    generation = FakeEngine().generate([job.spec for job in batch])
    ResultWriter(lifecycle, leases, metrics).store(batch, generation, canceled={canceled})
    assert record(db, canceled).status is JobStatus.RUNNING  # left to whoever finished it
    assert not db.exists(image_key(canceled, 0))
    assert record(db, kept).timings.batch_size == 3
    assert jobs_counted(metrics) == {"succeeded": 1}
    assert leases.held() == {batch[0].message_id}


@pytest.mark.parametrize("level", [0, 9])
def test_pngs_are_encoded_at_the_configured_level(
    db: redis.Redis, settings: Settings, metrics: WorkerMetrics, level: int
) -> None:
    configured = settings.model_copy(update={"png_compress_level": level})
    lifecycle = JobLifecycle(db, configured, MODEL, "writer")
    lifecycle.ensure_group()
    leases = LeaseTracker(lifecycle)
    (job_id,) = enqueue(configured, [job_spec(width=64, height=64)])
    batch = started(lifecycle, leases)
    ResultWriter(lifecycle, leases, metrics).store(
        batch, FakeEngine().generate([job.spec for job in batch]))
    data = stored_image(settings, job_id, 0)
    with Image.open(io.BytesIO(data)) as image:
        pixels = image.tobytes()
    assert len(pixels) == 64 * 64 * 3
    stored_raw = len(data) > len(pixels)  # level 0 stores the pixels, with headers around them
    assert stored_raw is (level == 0)

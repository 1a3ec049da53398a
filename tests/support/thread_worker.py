"""A worker without a pipeline: the real lifecycle code (``workers.lifecycle``) driven from a
test thread, storing plain images, for gateway tests about waiting and results."""

from __future__ import annotations

import time

import redis
from PIL import Image

from olss_core.protocol import Timings
from tests.support.redis_db import unit_settings
from workers.lifecycle import ClaimedJob, JobLifecycle, JobResult
from workers.results import ImageParameters, encode_image

TIMINGS = Timings(queue=0.01, inference=0.5, total=0.6, encode=0.1, denoise=0.3, decode=0.1,
                  batch_size=1)


def lifecycle(db: redis.Redis, model: str = "tiny-sd") -> JobLifecycle:
    worker = JobLifecycle(db, unit_settings(), model, "thread-worker")
    worker.ensure_group()
    return worker


def take_one(worker: JobLifecycle) -> ClaimedJob:
    for _ in range(50):
        deliveries = worker.read_new(1, block_ms=200)
        if deliveries:
            ((_, job),) = worker.start(worker.load(deliveries))
            return job
    raise AssertionError("no job arrived")


def finish(worker: JobLifecycle, stored_at: list[float] | None = None, delay_s: float = 0) -> None:
    """Take the next job and store its result after ``delay_s``; note when in ``stored_at``."""
    job = take_one(worker)
    images = [
        encode_image(Image.new("RGB", (job.spec.width, job.spec.height), "green"),
                     job.spec.output_format, ImageParameters.of(job.spec, n, "sched", job.id),
                     worker.settings.png_compress_level)
        for n in range(job.spec.num_images)
    ]
    time.sleep(delay_s)
    worker.succeed([JobResult(job, images, "sched", TIMINGS)])
    if stored_at is not None:
        stored_at.append(time.monotonic())

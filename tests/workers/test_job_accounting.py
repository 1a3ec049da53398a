"""Per-job accounting on the real Redis: the measured throughput (``WorkerInfo.images_per_s``),
one INFO line per finished job without its prompt, and the deadline seen at a step."""

from __future__ import annotations

import logging

import pytest
import redis

from olss_core.job_states import JobStatus
from olss_core.keys import job_key
from olss_core.metrics import Stage, WorkerMetrics
from olss_core.protocol import JobRecord
from olss_core.settings import Settings
from tests.support.fake_engine import DURATIONS, FakeEngine
from tests.support.queued_jobs import enqueue, job_spec
from tests.support.worker_parts import jobs_counted, receive_all
from workers.batch_progress import BatchProgress
from workers.fault_injection import FaultInjection
from workers.job_deadline import Deadline
from workers.leases import LeaseTracker
from workers.lifecycle import ClaimedJob, JobLifecycle
from workers.result_writer import ResultWriter
from workers.throughput import ThroughputMeter

SECRET_PROMPT = "a very private prompt"


def started(lifecycle: JobLifecycle, leases: LeaseTracker) -> list[ClaimedJob]:
    return [job for _, job in lifecycle.start(receive_all(lifecycle, leases))]


def record(db: redis.Redis, job_id: str) -> JobRecord:
    return JobRecord.from_hash(db.hgetall(job_key(job_id)))


def test_the_meter_weighs_batches_by_their_images_and_forgets_slowly() -> None:
    meter = ThroughputMeter(half_life_batches=1.0)
    assert meter.images_per_s is None
    meter.observe(8, 2.0)
    assert meter.images_per_s == pytest.approx(4.0)
    meter.observe(1, 1.0)  # weights 1/2 and 1: (4 + 1) / (1 + 1)
    assert meter.images_per_s == pytest.approx(2.5)
    meter.observe(3, 0.0)  # not a measurement
    meter.observe(3, float("nan"))
    assert meter.images_per_s == pytest.approx(2.5)


def test_stored_batches_feed_the_meter_and_log_one_line_per_job_without_the_prompt(
    settings: Settings, lifecycle: JobLifecycle, leases: LeaseTracker, metrics: WorkerMetrics,
    caplog: pytest.LogCaptureFixture,
) -> None:
    first, second = enqueue(settings, [job_spec(prompt=SECRET_PROMPT, num_images=2),
                                       job_spec(prompt=SECRET_PROMPT)])
    batch = started(lifecycle, leases)
    meter = ThroughputMeter()
    with caplog.at_level(logging.INFO, logger="workers.jobs"):
        ResultWriter(lifecycle, leases, metrics, throughput=meter).store(
            batch, FakeEngine().generate([job.spec for job in batch]))
    assert meter.images_per_s == pytest.approx(3 / DURATIONS[Stage.TOTAL], rel=1e-3)
    lines = [r for r in caplog.records if r.name == "workers.jobs"]
    assert [r.job_id for r in lines] == [first, second]  # type: ignore[attr-defined]
    text = lines[0].getMessage()
    assert text.startswith(f"job {first} succeeded: model=")
    for part in ("scheduler=olss", "schedule=fake-olss", "steps=", "size=", "images=2",
                 "batch_images=3", "attempt=1", "inference_s=", "total_s=", "queue_s="):
        assert part in text, (part, text)
    assert all(SECRET_PROMPT not in r.getMessage() and SECRET_PROMPT not in str(r.__dict__)
               for r in caplog.records)


def test_past_the_deadline_every_job_fails_at_the_next_step_but_not_after_the_last(
    db: redis.Redis, settings: Settings, lifecycle: JobLifecycle, leases: LeaseTracker,
    metrics: WorkerMetrics, caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    deadline = Deadline(2.0, clock=lambda: now[0])
    first, second = enqueue(settings, [job_spec(), job_spec()])
    progress = BatchProgress(started(lifecycle, leases), lifecycle, leases, metrics,
                             FaultInjection(), deadline=deadline)
    assert progress(1, 5) is True
    now[0] = 2.5
    assert progress(5, 5) is True  # only decoding is left: it finishes
    with caplog.at_level(logging.INFO, logger="workers.jobs"):
        assert progress(2, 5) is False
    for job_id in (first, second):
        stored = record(db, job_id)
        assert stored.status is JobStatus.FAILED
        assert "job timeout: ran 2.5 s, past OLSS_JOB_TIMEOUT_S=2 s" in (stored.error or "")
        assert "after step 2 of 5" in (stored.error or "")
    assert progress.timed_out == {first, second} and progress.active() == []
    assert jobs_counted(metrics) == {"failed": 2}
    assert leases.held() == frozenset()
    assert [r.getMessage().split(":")[0] for r in caplog.records if r.name == "workers.jobs"] \
        == [f"job {first} timed_out", f"job {second} timed_out"]

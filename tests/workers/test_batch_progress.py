"""The step hook on the real Redis: progress for running jobs, a cancel seen at a step
finishes that job, and the batch stops once no job is left."""

from __future__ import annotations

import time

import redis

from olss_core.job_states import JobStatus
from olss_core.keys import cancel_key, job_key
from olss_core.metrics import WorkerMetrics
from olss_core.protocol import JobRecord
from olss_core.settings import Settings
from tests.support.queued_jobs import enqueue, job_spec
from tests.support.worker_parts import jobs_counted, receive_all
from workers.batch_progress import BatchProgress
from workers.fault_injection import FaultInjection
from workers.leases import LeaseTracker
from workers.lifecycle import ClaimedJob, JobLifecycle, Start


def running(lifecycle: JobLifecycle, leases: LeaseTracker) -> list[ClaimedJob]:
    decisions = lifecycle.start(receive_all(lifecycle, leases))
    assert all(outcome is Start.RUN for outcome, _ in decisions)
    return [job for _, job in decisions]


def record(db: redis.Redis, job_id: str) -> JobRecord:
    return JobRecord.from_hash(db.hgetall(job_key(job_id)))


def test_a_cancel_seen_at_a_step_finishes_that_job_and_the_batch_stops_when_none_is_left(
    db: redis.Redis, settings: Settings, lifecycle: JobLifecycle, leases: LeaseTracker,
    metrics: WorkerMetrics,
) -> None:
    first, second = enqueue(settings, [job_spec(prompt="a"), job_spec(prompt="b")])
    jobs = running(lifecycle, leases)
    progress = BatchProgress(jobs, lifecycle, leases, metrics, FaultInjection())

    assert progress(1, 5) is True
    assert (record(db, first).step, record(db, second).step) == (1, 1)

    db.set(cancel_key(first), "1")
    assert progress(2, 5) is True
    assert record(db, first).status is JobStatus.CANCELED
    assert (record(db, first).step, record(db, second).step) == (1, 2)
    assert progress.canceled == {first}
    assert [job.id for job in progress.active()] == [second]
    assert leases.held() == {jobs[1].message_id}

    db.set(cancel_key(second), "1")
    assert progress(3, 5) is False
    assert record(db, second).status is JobStatus.CANCELED
    assert jobs_counted(metrics) == {"canceled": 2}
    assert leases.held() == frozenset()


def test_the_step_delay_of_the_tests_applies_at_each_step(
    settings: Settings, lifecycle: JobLifecycle, leases: LeaseTracker, metrics: WorkerMetrics,
) -> None:
    enqueue(settings, [job_spec()])
    progress = BatchProgress(
        running(lifecycle, leases), lifecycle, leases, metrics, FaultInjection(step_delay_s=0.05)
    )
    start = time.monotonic()
    for step in (1, 2):
        progress(step, 2)
    assert time.monotonic() - start >= 0.1

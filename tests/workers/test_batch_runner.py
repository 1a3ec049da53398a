"""BatchRunner with a fake engine on the real Redis: a failed batch splits until only the bad
job fails; a job canceled mid-run is not stored; a job out of attempts never runs; a batch of
first deliveries runs while its ``START`` is in flight, and drops what ``START`` refused."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from olss_core.job_states import JobStatus
from olss_core.keys import cancel_key, events_key, image_key, job_key
from olss_core.metrics import WorkerMetrics
from olss_core.protocol import JobRecord
from olss_core.settings import Settings
from tests.support.fake_engine import FakeEngine
from tests.support.queued_jobs import MODEL, enqueue, job_spec
from tests.support.worker_parts import jobs_counted, receive_all
from workers.batch_runner import BatchRunner
from workers.leases import LeaseTracker
from workers.lifecycle import JobLifecycle
from workers.result_writer import ResultWriter


@pytest.fixture()
def make_runner(
    lifecycle: JobLifecycle, leases: LeaseTracker, metrics: WorkerMetrics
) -> Callable[..., BatchRunner]:
    def make(engine: FakeEngine, **options: object) -> BatchRunner:
        writer = ResultWriter(lifecycle, leases, metrics)
        return BatchRunner(lifecycle, engine, leases, writer, metrics, **options)

    return make


@pytest.fixture()
def starts() -> Iterator[ThreadPoolExecutor]:
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="start")
    yield executor
    executor.shutdown(wait=True)


def event_types(db: redis.Redis, job_id: str) -> list[str]:
    return [fields["type"] for _, fields in db.xrange(events_key(job_id))]


def status(db: redis.Redis, job_id: str) -> JobStatus:
    return JobRecord.from_hash(db.hgetall(job_key(job_id))).status


def test_a_failed_batch_splits_until_only_the_bad_job_fails(
    db: redis.Redis, settings: Settings, lifecycle: JobLifecycle, leases: LeaseTracker,
    metrics: WorkerMetrics, make_runner: Callable[..., BatchRunner],
    caplog: pytest.LogCaptureFixture,
) -> None:
    prompts = ["good 1", "bad", "good 2", "good 3"]
    ids = dict(zip(prompts, enqueue(settings, [job_spec(prompt=p) for p in prompts]), strict=True))
    engine = FakeEngine(fail_prompt="bad")
    splits: list[int] = []
    runner = make_runner(engine, after_failure=lambda: splits.append(1))
    with caplog.at_level(logging.WARNING, logger="workers.batch_runner"):
        runner.run(receive_all(lifecycle, leases))
    assert engine.prompts == [prompts, ["good 1", "bad"], ["good 1"], ["bad"], ["good 2", "good 3"]]
    assert len(splits) == 2
    assert {p: status(db, ids[p]) for p in prompts} == {
        "good 1": JobStatus.SUCCEEDED, "bad": JobStatus.QUEUED,  # retried: attempt 1 of 2
        "good 2": JobStatus.SUCCEEDED, "good 3": JobStatus.SUCCEEDED,
    }
    assert "BadJob" in JobRecord.from_hash(db.hgetall(job_key(ids["bad"]))).error
    assert jobs_counted(metrics) == {"succeeded": 3, "retried": 1}
    split_lines = [r.getMessage() for r in caplog.records if "splitting" in r.getMessage()]
    assert split_lines[0].startswith("batch of 4 failed")
    assert all(job_id in split_lines[0] for job_id in ids.values())
    assert leases.held() == frozenset()

    runner.run(receive_all(lifecycle, leases))  # its last attempt, alone: dead-lettered
    assert status(db, ids["bad"]) is JobStatus.FAILED
    assert jobs_counted(metrics) == {"succeeded": 3, "retried": 1, "failed": 1}


def test_a_job_canceled_mid_run_is_not_stored_and_its_batch_mate_is(
    db: redis.Redis, settings: Settings, lifecycle: JobLifecycle, leases: LeaseTracker,
    metrics: WorkerMetrics, make_runner: Callable[..., BatchRunner],
) -> None:
    canceled, kept = enqueue(settings, [job_spec(prompt="canceled"), job_spec(prompt="kept")])

    def cancel_at_step_2(step: int) -> None:
        if step == 2:
            db.set(cancel_key(canceled), "1")

    engine = FakeEngine(before_step=cancel_at_step_2)
    make_runner(engine).run(receive_all(lifecycle, leases))
    assert len(engine.calls) == 1  # the batch ran on, without a restart
    assert (status(db, canceled), status(db, kept)) == (JobStatus.CANCELED, JobStatus.SUCCEEDED)
    assert not db.exists(image_key(canceled, 0)) and db.exists(image_key(kept, 0))
    assert jobs_counted(metrics) == {"canceled": 1, "succeeded": 1}
    assert leases.held() == frozenset()


def test_a_job_out_of_attempts_is_dead_lettered_without_running(
    db: redis.Redis, settings: Settings, lifecycle: JobLifecycle, leases: LeaseTracker,
    metrics: WorkerMetrics, make_runner: Callable[..., BatchRunner],
) -> None:
    (job_id,) = enqueue(settings, [job_spec()])
    db.hset(job_key(job_id), "attempts", settings.max_attempts)  # its workers all died
    engine = FakeEngine()
    make_runner(engine).run(receive_all(lifecycle, leases))
    assert engine.calls == []
    assert status(db, job_id) is JobStatus.FAILED
    assert jobs_counted(metrics) == {"failed": 1}
    assert leases.held() == frozenset()


def test_a_first_delivery_runs_while_its_start_is_in_flight(
    db: redis.Redis, settings: Settings, lifecycle: JobLifecycle, leases: LeaseTracker,
    metrics: WorkerMetrics, make_runner: Callable[..., BatchRunner], starts: ThreadPoolExecutor,
) -> None:
    (job_id,) = enqueue(settings, [job_spec()])
    generating = threading.Event()
    # START queues behind this on the one start thread: it is sent only once the engine runs.
    held = starts.submit(generating.wait, 5)
    seen_at_first_step: list[JobStatus] = []

    def first_step(step: int) -> None:
        if step == 1:
            seen_at_first_step.append(status(db, job_id))
            generating.set()

    engine = FakeEngine(before_step=first_step)
    make_runner(engine, starts=starts).run(receive_all(lifecycle, leases))
    assert held.result() is True
    assert seen_at_first_step == [JobStatus.QUEUED]  # the engine ran before START was sent
    assert status(db, job_id) is JobStatus.SUCCEEDED
    types = event_types(db, job_id)
    assert types[:3] == ["queued", "started", "step"] and types[-1] == "finished"
    assert JobRecord.from_hash(db.hgetall(job_key(job_id))).attempts == 1
    assert leases.held() == frozenset()


def test_a_first_delivery_canceled_before_its_start_is_dropped(
    db: redis.Redis, settings: Settings, lifecycle: JobLifecycle, leases: LeaseTracker,
    metrics: WorkerMetrics, make_runner: Callable[..., BatchRunner], starts: ThreadPoolExecutor,
) -> None:
    canceled, kept = enqueue(settings, [job_spec(prompt="canceled"), job_spec(prompt="kept")])
    db.set(cancel_key(canceled), "1")
    steps_seen: list[int] = []
    engine = FakeEngine(before_step=steps_seen.append)
    make_runner(engine, starts=starts).run(receive_all(lifecycle, leases))
    assert (status(db, canceled), status(db, kept)) == (JobStatus.CANCELED, JobStatus.SUCCEEDED)
    assert not db.exists(image_key(canceled, 0)) and db.exists(image_key(kept, 0))
    assert "step" not in event_types(db, canceled)
    assert jobs_counted(metrics) == {"succeeded": 1}
    assert leases.held() == frozenset()

    (alone,) = enqueue(settings, [job_spec(prompt="alone")])
    db.set(cancel_key(alone), "1")
    steps_seen.clear()
    make_runner(engine, starts=starts).run(receive_all(lifecycle, leases))
    assert steps_seen == [1]  # nothing left to run: the batch stops at its first step
    assert status(db, alone) is JobStatus.CANCELED
    assert leases.held() == frozenset()


def test_a_redelivered_job_out_of_attempts_never_runs_even_with_a_start_thread(
    db: redis.Redis, settings: Settings, lifecycle: JobLifecycle, leases: LeaseTracker,
    metrics: WorkerMetrics, make_runner: Callable[..., BatchRunner], starts: ThreadPoolExecutor,
) -> None:
    (job_id,) = enqueue(settings, [job_spec()])
    crashed = JobLifecycle(db, settings, MODEL, "crashed-worker")
    crashed.start(crashed.load(crashed.read_new(8, None)))  # ... and it dies (a poison job)
    db.hset(job_key(job_id), "attempts", settings.max_attempts)
    time.sleep(settings.lease_ms * 1.5 / 1000)
    deliveries = lifecycle.reclaim(8)
    leases.hold(deliveries)
    (job,) = lifecycle.load(deliveries)
    assert not job.first_delivery
    engine = FakeEngine()
    make_runner(engine, starts=starts).run([job])
    assert engine.calls == []
    assert status(db, job_id) is JobStatus.FAILED
    assert jobs_counted(metrics) == {"failed": 1}

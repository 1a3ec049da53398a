"""ServeLoop with a fake engine on the real Redis: compatible jobs share a batch, a stopping
loop hands its jobs back, and a Redis outage drops the held leases and backs off."""

from __future__ import annotations

import threading

import redis
from redis.backoff import AbstractBackoff

from olss_core.job_states import JobStatus
from olss_core.keys import job_key
from olss_core.metrics import WorkerMetrics
from olss_core.protocol import JobRecord
from olss_core.redis_clients import sync_client
from olss_core.settings import Settings
from tests.support.fake_engine import FakeEngine
from tests.support.ports import free_port
from tests.support.queued_jobs import MODEL, enqueue, job_spec
from workers.batch_runner import BatchRunner
from workers.batch_window import BatchWindow
from workers.leases import LeaseTracker
from workers.lifecycle import JobLifecycle
from workers.receiver import BatchReceiver
from workers.result_writer import ResultWriter
from workers.serve_loop import OUTAGE_BACKOFF, ServeLoop


def serve_loop(
    lifecycle: JobLifecycle,
    leases: LeaseTracker,
    engine: FakeEngine,
    stopping: threading.Event,
    backoff: AbstractBackoff = OUTAGE_BACKOFF,
) -> ServeLoop:
    metrics = WorkerMetrics.create(lifecycle.model)
    runner = BatchRunner(
        lifecycle, engine, leases, ResultWriter(lifecycle, leases, metrics), metrics
    )
    receiver = BatchReceiver(lifecycle, leases, max_entries=8, window=BatchWindow(8, 0))
    return ServeLoop(receiver, runner, lifecycle, leases, 8, stopping, backoff)


def status(db: redis.Redis, job_id: str) -> JobStatus:
    return JobRecord.from_hash(db.hgetall(job_key(job_id))).status


def test_compatible_jobs_run_as_one_batch_and_others_apart(
    db: redis.Redis, settings: Settings, lifecycle: JobLifecycle, leases: LeaseTracker
) -> None:
    ids = enqueue(settings, [job_spec(prompt="a"), job_spec(prompt="b", steps=4),
                             job_spec(prompt="c")])
    engine = FakeEngine()
    serve_loop(lifecycle, leases, engine, threading.Event()).run_once()
    assert engine.prompts == [["a", "c"], ["b"]]
    assert {status(db, job_id) for job_id in ids} == {JobStatus.SUCCEEDED}


def test_a_stopping_loop_hands_back_what_it_received(
    db: redis.Redis, settings: Settings, lifecycle: JobLifecycle, leases: LeaseTracker
) -> None:
    ids = enqueue(settings, [job_spec(), job_spec(steps=4)])
    stopping = threading.Event()
    stopping.set()
    engine = FakeEngine()
    serve_loop(lifecycle, leases, engine, stopping).run_once()
    assert engine.calls == [] and leases.held() == frozenset()
    other = JobLifecycle(db, settings, MODEL, "another-worker")
    assert sorted(d.job_id for d in other.read_new(8, block_ms=None)) == sorted(ids)
    assert {status(db, job_id) for job_id in ids} == {JobStatus.QUEUED}


class CountingBackoff(AbstractBackoff):
    """Records the error counts it is asked about; sets ``stopping`` at the third."""

    def __init__(self, stopping: threading.Event) -> None:
        self.stopping = stopping
        self.asked: list[int] = []

    def compute(self, failures: int) -> float:
        self.asked.append(failures)
        if failures == 3:
            self.stopping.set()
        return 0.01


def test_a_redis_outage_drops_the_held_leases_and_backs_off_per_error_in_a_row(
    settings: Settings, lifecycle: JobLifecycle, leases: LeaseTracker
) -> None:
    enqueue(settings, [job_spec()])
    leases.hold(lifecycle.read_new(1, block_ms=None))
    down = sync_client(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    stopping = threading.Event()
    backoff = CountingBackoff(stopping)
    serve_loop(JobLifecycle(down, settings, MODEL, "worker-a"), leases, FakeEngine(), stopping,
               backoff).run()
    assert backoff.asked == [1, 2, 3]
    assert leases.held() == frozenset()


def test_the_outage_backoff_grows_from_about_a_second_to_a_cap() -> None:
    first = [OUTAGE_BACKOFF.compute(1) for _ in range(20)]
    late = [OUTAGE_BACKOFF.compute(30) for _ in range(20)]
    assert all(0.5 <= wait <= 1.0 for wait in first)
    assert all(7.5 <= wait <= 15.0 for wait in late)

"""BatchReceiver on the real Redis: expired leases before new entries, a lone job on an idle
worker starts at once, a batch waits for more only while jobs keep arriving (or, with a fixed
window, the whole window), every entry received held, entries without a record dropped."""

from __future__ import annotations

import threading
import time

import redis

from olss_core.keys import GROUP, STREAM_JOB_FIELD, job_key
from olss_core.settings import Settings
from tests.support.queued_jobs import MODEL, enqueue, job_spec
from workers.batch_window import BatchWindow
from workers.leases import LeaseTracker
from workers.lifecycle import JobLifecycle
from workers.receiver import RECLAIM_EVERY_S, BatchReceiver


def test_an_expired_lease_is_taken_before_a_new_entry(
    db: redis.Redis, settings: Settings, lifecycle: JobLifecycle, leases: LeaseTracker
) -> None:
    orphan, new = enqueue(settings, [job_spec(), job_spec()])
    dead = JobLifecycle(db, settings, MODEL, "dead-worker")
    assert [d.job_id for d in dead.read_new(1, block_ms=None)] == [orphan]  # ... and it dies
    time.sleep(settings.lease_ms * 1.5 / 1000)
    receiver = BatchReceiver(lifecycle, leases, max_entries=1, window=BatchWindow(1, 0))
    assert [job.id for job in receiver.receive()] == [orphan]
    assert [job.id for job in receiver.receive()] == [new]


def _receive_with_a_late_job(
    settings: Settings, lifecycle: JobLifecycle, leases: LeaseTracker, window: BatchWindow,
    late_after_s: float,
) -> tuple[list[str], list[str], float]:
    """Queue a job, queue another ``late_after_s`` later, receive once: (ids received, the late
    id, seconds the receive took)."""
    (first,) = enqueue(settings, [job_spec()])
    late: list[str] = []
    later = threading.Timer(late_after_s, lambda: late.extend(enqueue(settings, [job_spec()])))
    later.start()
    receiver = BatchReceiver(lifecycle, leases, max_entries=4, window=window)
    started = time.monotonic()
    jobs = receiver.receive()
    waited = time.monotonic() - started
    later.join()
    assert jobs[0].id == first
    assert leases.held() == {job.message_id for job in jobs}
    return [job.id for job in jobs], late, waited


def test_a_lone_job_on_an_idle_worker_does_not_wait_out_the_batch_window(
    settings: Settings, lifecycle: JobLifecycle, leases: LeaseTracker
) -> None:
    window = BatchWindow(max_batch=4, max_wait_ms=5000)  # adaptive
    received, late, waited = _receive_with_a_late_job(settings, lifecycle, leases, window, 0.3)
    assert late and late[0] not in received  # it started without waiting for the next job
    assert waited < 0.25, f"a lone job waited {waited:.3f} s of a 5 s window"


def test_while_jobs_keep_arriving_the_batch_waits_for_the_next(
    db: redis.Redis, settings: Settings, lifecycle: JobLifecycle, leases: LeaseTracker
) -> None:
    window = BatchWindow(max_batch=4, max_wait_ms=2000)
    seconds, micros = db.time()
    now_ms = seconds * 1000 + micros // 1000
    # The recent past: a job every 300 ms, the last one 300 ms ago; the late job comes sooner.
    window.arrived(f"{now_ms - 300 * n}-0" for n in range(4, 0, -1))
    received, late, waited = _receive_with_a_late_job(settings, lifecycle, leases, window, 0.1)
    assert late and received == [received[0], late[0]]
    assert waited < 1.5  # it stopped once the arrivals stopped, well before the 2 s window


def test_a_fixed_window_is_waited_out_even_for_a_lone_job(
    settings: Settings, lifecycle: JobLifecycle, leases: LeaseTracker
) -> None:
    window = BatchWindow(max_batch=4, max_wait_ms=400, adaptive=False)
    received, late, waited = _receive_with_a_late_job(settings, lifecycle, leases, window, 0.1)
    assert received == [received[0], *late]
    assert 0.4 <= waited < 1.0  # the whole wait, since the batch never filled


def test_an_entry_whose_record_expired_is_acknowledged_and_not_held(
    db: redis.Redis, settings: Settings, lifecycle: JobLifecycle, leases: LeaseTracker
) -> None:
    """An entry without a copy of its record (a retry's, a hand-back's) has it read; one with
    a copy is found out by ``START`` (tests/workers/test_lifecycle.py)."""
    expired, alive = enqueue(settings, [job_spec(), job_spec()])
    db.delete(job_key(expired))
    db.xtrim(lifecycle.stream, maxlen=0)
    for job_id in (expired, alive):
        db.xadd(lifecycle.stream, {STREAM_JOB_FIELD: job_id})
    jobs = BatchReceiver(lifecycle, leases, max_entries=4, window=BatchWindow(4, 0)).receive()
    assert [job.id for job in jobs] == [alive]
    assert leases.held() == {jobs[0].message_id}
    assert [entry_id for entry_id, _ in db.xrange(lifecycle.stream)] == [jobs[0].message_id]


def _die_with(db: redis.Redis, settings: Settings, count: int) -> list[str]:
    """A worker reads ``count`` new entries and dies; their leases are expired at once."""
    dead = JobLifecycle(db, settings, MODEL, "dead-worker")
    taken = dead.read_new(count, block_ms=None)
    db.xclaim(dead.stream, GROUP, "dead-worker", 0, [d.message_id for d in taken],
              idle=settings.lease_ms * 2)
    return [d.job_id for d in taken]


def test_expired_leases_are_looked_for_at_most_every_quarter_lease(
    db: redis.Redis, settings: Settings, lifecycle: JobLifecycle, leases: LeaseTracker
) -> None:
    """Right after a look that found nothing, a lease that expires is left for a quarter lease
    (at most ``RECLAIM_EVERY_S``) while new entries are taken; then it is claimed."""
    receiver = BatchReceiver(lifecycle, leases, max_entries=1, window=BatchWindow(1, 0))
    (first,) = enqueue(settings, [job_spec()])
    assert [job.id for job in receiver.receive()] == [first]  # looked: nothing had expired
    enqueue(settings, [job_spec()])
    (orphan,) = _die_with(db, settings, 1)
    (later,) = enqueue(settings, [job_spec()])
    assert [job.id for job in receiver.receive()] == [later]  # no look yet
    time.sleep(min(RECLAIM_EVERY_S, settings.lease_ms / 4000))
    assert [job.id for job in receiver.receive()] == [orphan]


def test_a_dead_workers_backlog_goes_before_new_entries(
    db: redis.Redis, settings: Settings, lifecycle: JobLifecycle, leases: LeaseTracker
) -> None:
    """A look that took as many as it asked for is made again the next round."""
    enqueue(settings, [job_spec(), job_spec()])
    orphans = _die_with(db, settings, 2)
    (new,) = enqueue(settings, [job_spec()])
    receiver = BatchReceiver(lifecycle, leases, max_entries=1, window=BatchWindow(1, 0))
    assert [receiver.receive()[0].id for _ in range(3)] == [*orphans, new]

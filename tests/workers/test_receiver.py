"""BatchReceiver on the real Redis: expired leases before new entries, a short wait for more,
every entry received held, entries without a record dropped."""

from __future__ import annotations

import threading
import time

import redis

from olss_core.keys import job_key
from olss_core.settings import Settings
from tests.support.queued_jobs import MODEL, enqueue, job_spec
from workers.leases import LeaseTracker
from workers.lifecycle import JobLifecycle
from workers.receiver import BatchReceiver


def test_an_expired_lease_is_taken_before_a_new_entry(
    db: redis.Redis, settings: Settings, lifecycle: JobLifecycle, leases: LeaseTracker
) -> None:
    orphan, new = enqueue(settings, [job_spec(), job_spec()])
    dead = JobLifecycle(db, settings, MODEL, "dead-worker")
    assert [d.job_id for d in dead.read_new(1, block_ms=None)] == [orphan]  # ... and it dies
    time.sleep(settings.lease_ms * 1.5 / 1000)
    receiver = BatchReceiver(lifecycle, leases, max_entries=1, max_wait_ms=0)
    assert [job.id for job in receiver.receive()] == [orphan]
    assert [job.id for job in receiver.receive()] == [new]


def test_it_waits_briefly_for_more_entries_to_fill_the_batch(
    settings: Settings, lifecycle: JobLifecycle, leases: LeaseTracker
) -> None:
    (first,) = enqueue(settings, [job_spec()])
    late: list[str] = []
    later = threading.Timer(0.1, lambda: late.extend(enqueue(settings, [job_spec()])))
    later.start()
    receiver = BatchReceiver(lifecycle, leases, max_entries=4, max_wait_ms=400)
    started = time.monotonic()
    jobs = receiver.receive()
    waited = time.monotonic() - started
    later.join()
    assert [job.id for job in jobs] == [first, *late]
    assert 0.4 <= waited < 1.0  # the whole wait, since the batch never filled
    assert leases.held() == {job.message_id for job in jobs}


def test_an_entry_whose_record_expired_is_acknowledged_and_not_held(
    db: redis.Redis, settings: Settings, lifecycle: JobLifecycle, leases: LeaseTracker
) -> None:
    expired, alive = enqueue(settings, [job_spec(), job_spec()])
    db.delete(job_key(expired))
    jobs = BatchReceiver(lifecycle, leases, max_entries=4, max_wait_ms=0).receive()
    assert [job.id for job in jobs] == [alive]
    assert leases.held() == {jobs[0].message_id}

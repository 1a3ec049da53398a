"""LeaseTracker on the real Redis: a heartbeat extends the leases of held entries only."""

from __future__ import annotations

import time

import redis

from olss_core.keys import GROUP, jobs_stream
from olss_core.settings import Settings
from tests.support.queued_jobs import MODEL, enqueue, job_spec
from workers.leases import LeaseTracker
from workers.lifecycle import JobLifecycle


def idle_ms(db: redis.Redis) -> dict[str, int]:
    """Idle time of each pending entry of the stream, by entry id."""
    pending = db.xpending_range(jobs_stream(MODEL), GROUP, min="-", max="+", count=100)
    return {entry["message_id"]: entry["time_since_delivered"] for entry in pending}


def test_held_entries_are_extended_and_released_ones_are_not(
    db: redis.Redis, settings: Settings, lifecycle: JobLifecycle, leases: LeaseTracker
) -> None:
    enqueue(settings, [job_spec(), job_spec()])
    kept, released = lifecycle.read_new(8, block_ms=None)
    leases.hold([kept, released])
    leases.release([released])
    assert leases.held() == {kept.message_id}
    lease_ms = settings.lease_ms
    time.sleep(lease_ms / 1000)
    leases.extend()
    idle = idle_ms(db)
    assert idle[kept.message_id] < lease_ms / 2 and idle[released.message_id] >= lease_ms


def test_after_forget_all_nothing_is_extended(
    db: redis.Redis, settings: Settings, lifecycle: JobLifecycle, leases: LeaseTracker
) -> None:
    enqueue(settings, [job_spec()])
    (delivery,) = lifecycle.read_new(8, block_ms=None)
    leases.hold([delivery])
    leases.forget_all()
    time.sleep(settings.lease_ms / 1000)
    leases.extend()
    assert leases.held() == frozenset()
    assert idle_ms(db)[delivery.message_id] >= settings.lease_ms

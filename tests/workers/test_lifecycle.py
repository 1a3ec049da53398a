"""Job lifecycle on a real Redis: leases, retries, dead-letter, cancel, hand-back.

The gateway's own enqueue puts jobs in; two consumers stand for two workers.
"""

from __future__ import annotations

import time

import pytest
import redis

from olss_core.job_states import JobStatus
from olss_core.keys import (
    FINISHED_CHANNEL,
    GROUP,
    cancel_key,
    dead_stream,
    events_key,
    finished_ids,
    image_key,
    job_key,
    jobs_stream,
    new_job_id,
    queued_zset,
)
from olss_core.protocol import JobEvent, JobRecord, Timings
from olss_core.settings import Settings
from tests.support.queued_jobs import MODEL, job_spec
from tests.support.queued_jobs import enqueue as queue_jobs
from tests.support.redis_db import unit_settings
from workers.batch_window import entry_seconds
from workers.lifecycle import ClaimedJob, JobLifecycle, JobResult, Start

LEASE_MS = 200


@pytest.fixture()
def settings() -> Settings:
    return unit_settings(lease_ms=LEASE_MS, max_attempts=2)


def enqueue(settings: Settings, count: int = 1) -> list[str]:
    return queue_jobs(settings, [job_spec()] * count)


def worker(db: redis.Redis, settings: Settings, name: str) -> JobLifecycle:
    lifecycle = JobLifecycle(db, settings, MODEL, name)
    lifecycle.ensure_group()
    return lifecycle


def start(lifecycle: JobLifecycle, job: ClaimedJob) -> tuple[Start, ClaimedJob]:
    ((outcome, started),) = lifecycle.start([job])
    return outcome, started


def status(db: redis.Redis, job_id: str) -> JobRecord:
    return JobRecord.from_hash(db.hgetall(job_key(job_id)))


def event_types(db: redis.Redis, job_id: str) -> list[str]:
    return [fields["type"] for _, fields in db.xrange(events_key(job_id))]


def timings() -> Timings:
    return Timings(queue=0, inference=0.1, total=0.2, encode=0, denoise=0.1, decode=0, batch_size=1)


def test_success_stores_images_and_acknowledges(db: redis.Redis, settings: Settings) -> None:
    (job_id,) = enqueue(settings)
    a = worker(db, settings, "a")
    (job,) = a.load(a.read_new(8, None))
    outcome, job = start(a, job)
    assert outcome is Start.RUN and db.zcard(queued_zset(MODEL)) == 0
    a.succeed([JobResult(job, [b"png"], "sched", timings())])
    record = status(db, job_id)
    assert (record.status, record.attempts, record.schedule) == (JobStatus.SUCCEEDED, 1, "sched")
    assert db.xlen(jobs_stream(MODEL)) == 0
    assert db.xpending(jobs_stream(MODEL), GROUP)["pending"] == 0
    assert event_types(db, job_id) == ["queued", "started", "finished"]


def test_a_dead_workers_job_is_claimed_after_the_lease(db: redis.Redis, settings: Settings) -> None:
    enqueue(settings)
    a, b = worker(db, settings, "a"), worker(db, settings, "b")
    (job,) = a.load(a.read_new(8, None))
    start(a, job)  # ... and "a" dies here
    assert b.reclaim(8) == []
    time.sleep(LEASE_MS * 1.5 / 1000)
    (delivery,) = b.reclaim(8)
    outcome, job = start(b, b.load([delivery])[0])
    assert outcome is Start.RUN and (job.record.attempts, job.record.worker) == (2, "b")


def test_a_live_worker_keeps_its_lease(db: redis.Redis, settings: Settings) -> None:
    enqueue(settings)
    a, b = worker(db, settings, "a"), worker(db, settings, "b")
    (delivery,) = a.read_new(8, None)
    for _ in range(3):
        time.sleep(LEASE_MS * 0.6 / 1000)
        a.extend_leases([delivery.message_id])
    assert b.reclaim(8) == []


def test_past_the_attempt_limit_a_job_is_dead_lettered(db: redis.Redis, settings: Settings) -> None:
    (job_id,) = enqueue(settings)
    a = worker(db, settings, "a")
    for _ in range(settings.max_attempts):  # every worker that takes it dies
        time.sleep(LEASE_MS * 1.5 / 1000)
        deliveries = a.reclaim(8) or a.read_new(8, None)
        assert start(a, a.load(deliveries)[0])[0] is Start.RUN
    time.sleep(LEASE_MS * 1.5 / 1000)
    outcome, _ = start(a, a.load(a.reclaim(8))[0])
    assert outcome is Start.DEAD
    record = status(db, job_id)
    assert (record.status, record.error_type) == (JobStatus.FAILED, "dead_lettered")
    assert "lease expired" in record.error
    assert record.attempts == settings.max_attempts  # the attempts that ran
    ((_, fields),) = db.xrange(dead_stream(MODEL))
    assert (fields["job_id"], fields["attempts"]) == (job_id, str(settings.max_attempts))
    assert db.xlen(jobs_stream(MODEL)) == 0


def test_a_new_entry_carries_its_record_so_the_worker_need_not_read_it(
    db: redis.Redis, settings: Settings
) -> None:
    (job_id,) = enqueue(settings)
    a = worker(db, settings, "a")
    (delivery,) = a.read_new(8, None)
    assert delivery.record == status(db, job_id)
    db.hset(job_key(job_id), "spec", job_spec(prompt="changed in the record").model_dump_json())
    (job,) = a.load([delivery])
    assert job.spec.prompt == "x"  # the entry's copy: the record was not read
    outcome, started = start(a, job)
    assert outcome is Start.RUN and started.spec.prompt == "changed in the record"
    assert (started.record.status, started.record.attempts) == (JobStatus.RUNNING, 1)


def test_a_stale_copy_never_runs_a_job_canceled_or_expired_since_it_was_queued(
    db: redis.Redis, settings: Settings
) -> None:
    canceled_id, expired_id = enqueue(settings, count=2)
    a = worker(db, settings, "a")
    canceled, expired = a.load(a.read_new(8, None))
    db.hset(job_key(canceled_id), "status", JobStatus.CANCELED.value)
    db.delete(job_key(expired_id))
    assert [outcome for outcome, _ in a.start([canceled, expired])] == [Start.SKIP, Start.SKIP]
    assert db.xlen(jobs_stream(MODEL)) == 0
    assert status(db, canceled_id).status is JobStatus.CANCELED


def test_an_entry_without_a_readable_copy_has_its_record_read(
    db: redis.Redis, settings: Settings
) -> None:
    (job_id,) = enqueue(settings)
    a = worker(db, settings, "a")
    (queued,) = a.read_new(8, None)
    db.xadd(jobs_stream(MODEL), {"job_id": job_id, "spec": "{not json"})
    db.xadd(jobs_stream(MODEL), {"job_id": new_job_id(MODEL)})
    broken, gone = a.read_new(8, None)
    assert broken.record is None and gone.record is None
    (job,) = a.load([broken, gone])
    assert job.record == status(db, job_id) and job.message_id == broken.message_id
    assert [entry_id for entry_id, _ in db.xrange(jobs_stream(MODEL))] == [
        queued.message_id, broken.message_id]  # the entry of the gone job is acknowledged


def test_a_failing_job_is_retried_then_dead_lettered(db: redis.Redis, settings: Settings) -> None:
    (job_id,) = enqueue(settings)
    a = worker(db, settings, "a")
    results = []
    for _ in range(settings.max_attempts):
        _, job = start(a, a.load(a.read_new(8, None))[0])
        results.append(a.fail(job, RuntimeError("boom")))
    assert results == [JobStatus.QUEUED, JobStatus.FAILED]
    record = status(db, job_id)
    assert record.status is JobStatus.FAILED and "RuntimeError: boom" in record.error
    assert db.xlen(dead_stream(MODEL)) == 1
    assert event_types(db, job_id) == ["queued", "started", "queued", "started", "finished"]


def test_a_cancel_asked_while_running_is_honoured_on_redelivery(
    db: redis.Redis, settings: Settings
) -> None:
    (job_id,) = enqueue(settings)
    a = worker(db, settings, "a")
    _, job = start(a, a.load(a.read_new(8, None))[0])
    db.set(cancel_key(job_id), "1")
    assert a.after_step([job], 1, 5, send=[job]) == {job_id}
    time.sleep(LEASE_MS * 1.5 / 1000)
    outcome, _ = start(a, a.load(a.reclaim(8))[0])
    assert outcome is Start.SKIP and status(db, job_id).status is JobStatus.CANCELED


def test_a_stopping_worker_hands_back_unstarted_jobs(db: redis.Redis, settings: Settings) -> None:
    enqueue(settings, count=2)
    a, b = worker(db, settings, "a"), worker(db, settings, "b")
    jobs = a.load(a.read_new(8, None))
    a.hand_back(jobs)
    assert len(b.read_new(8, None)) == 2
    assert db.zcard(queued_zset(MODEL)) == 2


def test_started_events_carry_the_attempt_counted_by_start(
    db: redis.Redis, settings: Settings
) -> None:
    (job_id,) = enqueue(settings)
    a = worker(db, settings, "a")
    start(a, a.load(a.read_new(8, None))[0])
    time.sleep(LEASE_MS * 1.5 / 1000)  # a's lease runs out: b takes the job, attempt 2
    b = worker(db, settings, "b")
    start(b, b.load(b.reclaim(8))[0])
    started = [JobEvent.from_fields(fields) for _, fields in db.xrange(events_key(job_id))
               if fields["type"] == "started"]
    assert [(e.status, e.attempt) for e in started] == [(JobStatus.RUNNING, 1),
                                                        (JobStatus.RUNNING, 2)]


def test_after_step_records_the_step_of_the_sent_jobs_and_reports_cancels(
    db: redis.Redis, settings: Settings
) -> None:
    sent_id, quiet_id, canceled_id = enqueue(settings, count=3)
    a = worker(db, settings, "a")
    sent, quiet, canceled = (start(a, job)[1] for job in a.load(a.read_new(8, None)))
    db.set(cancel_key(canceled_id), "1")
    assert a.after_step([sent, quiet, canceled], 2, 5, send=[sent, canceled]) == {canceled_id}
    steps = {job_id: (status(db, job_id).step, event_types(db, job_id)[-1])
             for job_id in (sent_id, quiet_id, canceled_id)}
    assert steps == {sent_id: (2, "step"), quiet_id: (0, "started"),
                     canceled_id: (0, "started")}
    (_, fields), = db.xrevrange(events_key(sent_id), count=1)
    event = JobEvent.from_fields(fields)
    assert (event.step, event.total) == (2, 5)
    assert status(db, sent_id).total_steps == 5


def test_a_batch_is_stored_acknowledged_and_announced_in_one_step(
    db: redis.Redis, settings: Settings
) -> None:
    first_id, second_id = enqueue(settings, count=2)
    a = worker(db, settings, "a")
    first, second = (start(a, job)[1] for job in a.load(a.read_new(8, None)))
    listener = db.pubsub(ignore_subscribe_messages=True)
    listener.subscribe(FINISHED_CHANNEL)
    try:
        stored_at = a.succeed([JobResult(first, [b"one", b"two"], "sched-a", timings()),
                               JobResult(second, [b"three"], "sched-b", timings())])
        deadline = time.monotonic() + 5
        message = None
        while message is None and time.monotonic() < deadline:
            message = listener.get_message(timeout=0.5)
    finally:
        listener.close()
    assert message is not None and finished_ids(message["data"]) == [first_id, second_id]
    assert [db.get(image_key(first_id, n)) for n in range(3)] == ["one", "two", None]
    assert db.get(image_key(second_id, 0)) == "three"
    assert 0 < db.ttl(image_key(second_id, 0)) <= settings.finished_image_ttl_s
    records = [status(db, job_id) for job_id in (first_id, second_id)]
    assert [(r.status, r.schedule, r.step) for r in records] == [
        (JobStatus.SUCCEEDED, "sched-a", 5), (JobStatus.SUCCEEDED, "sched-b", 5)]
    assert all(r.timings == timings() for r in records)
    assert db.xlen(jobs_stream(MODEL)) == 0
    assert db.xpending(jobs_stream(MODEL), GROUP)["pending"] == 0
    (last_event, fields), = db.xrevrange(events_key(second_id), count=1)
    assert fields["type"] == "finished"
    assert stored_at == entry_seconds(last_event)

"""Worker side of a job's life in Redis: claim, start, succeed, retry, dead-letter, cancel.

Delivery is at least once. A job's stream entry stays pending in the consumer group until its
result is stored. The entry the gateway makes carries a copy of the new record, so a delivered
job's spec costs no read; an entry without one (a retry, a hand-back) has its record read.
``START`` checks the record as it is now, so a stale copy (a job canceled since) never runs.
A batch's success is one script (``SUCCEED``): it stores the results, acknowledges and
publishes the finished jobs' ids, one round trip. Failure and cancel store their outcome and
acknowledge in one MULTI, then publish (a Redis Cluster refuses PUBLISH in a MULTI; a notice
lost between the two only delays a waiter until its next poll). Entries of a worker that died
are claimed again once idle for ``OLSS_LEASE_MS`` (XAUTOCLAIM); a live worker keeps its entries'
leases fresh with ``extend_leases``. Each start counts an attempt in the job record; past
``OLSS_MAX_ATTEMPTS`` the job is dead-lettered.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum

import redis

from olss_core.job_scripts import AFTER_STEP, START, SUCCEED
from olss_core.job_states import JobStatus
from olss_core.keys import (
    FINISHED_CHANNEL,
    GROUP,
    STREAM_JOB_FIELD,
    cancel_key,
    dead_stream,
    events_key,
    finished_notice,
    image_key,
    job_key,
    jobs_stream,
    queued_zset,
)
from olss_core.protocol import EventType, JobEvent, JobRecord, JobSpec, Preview, Timings, now
from olss_core.settings import Settings
from workers.batch_window import entry_seconds

log = logging.getLogger(__name__)



class Start(Enum):
    """What ``JobLifecycle.start`` decided."""

    RUN = "run"
    SKIP = "skip"  # gone, already finished or canceled: acknowledged, nothing to do
    DEAD = "dead"  # too many attempts: dead-lettered and marked failed


@dataclass(frozen=True)
class Delivery:
    """A stream entry read by this worker: its entry id, the job it names and the copy of the
    job's record it carries (``None``: the entry has none, or an unreadable one). ``first`` says
    it is the job's first delivery: the gateway's own entry, read new (not reclaimed from a
    worker that died), with the copy of a record no start has counted an attempt in."""

    message_id: str
    job_id: str
    record: JobRecord | None = None
    first: bool = False

    @classmethod
    def of(cls, message_id: str, fields: dict[str, str], new: bool = False) -> Delivery:
        """The entry ``message_id`` with ``fields``; ``new``: read new (``>``), not reclaimed."""
        record_fields = {k: v for k, v in fields.items() if k != STREAM_JOB_FIELD}
        record = None
        if record_fields:
            try:
                record = JobRecord.from_hash(record_fields)
            except ValueError:  # pydantic's ValidationError (its text may quote the prompt)
                log.warning("entry %s carries an unreadable copy of its record: reading the "
                            "record instead", message_id)
        first = new and record is not None and record.attempts == 0
        return cls(message_id, fields[STREAM_JOB_FIELD], record, first)


@dataclass(frozen=True)
class ClaimedJob:
    """A delivered job with its record as read; ``first_delivery`` as ``Delivery.first``."""

    message_id: str
    record: JobRecord
    first_delivery: bool = False

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def spec(self) -> JobSpec:
        return self.record.spec


@dataclass(frozen=True)
class JobResult:
    """A finished job's encoded images, the schedule that made them and its timings."""

    job: ClaimedJob
    images: list[bytes]
    schedule: str
    timings: Timings


class JobLifecycle:
    """The Redis transitions of the jobs of one model's stream, for one consumer."""

    def __init__(self, client: redis.Redis, settings: Settings, model: str, consumer: str):
        self.redis = client
        self.settings = settings
        self.model = model
        self.consumer = consumer
        self.stream = jobs_stream(model)
        self._start = client.register_script(START)
        self._after_step = client.register_script(AFTER_STEP)
        self._succeed = client.register_script(SUCCEED)
        self._reclaim_cursor = "0-0"

    def ensure_group(self) -> None:
        """Create the stream and its consumer group (reading from the start) if missing."""
        try:
            self.redis.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except redis.ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    # -- delivery ---------------------------------------------------------------------------

    def read_new(self, count: int, block_ms: int | None) -> list[Delivery]:
        """Up to ``count`` new entries; waits up to ``block_ms`` (``None``: do not wait)."""
        reply = self.redis.xreadgroup(
            GROUP, self.consumer, {self.stream: ">"}, count=count, block=block_ms
        )
        return [Delivery.of(mid, fields, new=True) for _, entries in reply
                for mid, fields in entries]

    def reclaim(self, count: int) -> list[Delivery]:
        """Entries idle longer than the lease (their worker died): now this worker's."""
        cursor, entries, deleted = self.redis.xautoclaim(
            self.stream,
            GROUP,
            self.consumer,
            self.settings.lease_ms,
            start_id=self._reclaim_cursor,
            count=count,
        )
        self._reclaim_cursor = cursor
        if deleted:
            self.redis.xack(self.stream, GROUP, *deleted)
        return [Delivery.of(mid, fields) for mid, fields in entries if fields]

    def extend_leases(self, message_ids: list[str]) -> None:
        """Reset the idle time of the entries this worker still owns (no other worker's)."""
        if not message_ids:
            return
        owned = self.redis.xpending_range(
            self.stream,
            GROUP,
            min="-",
            max="+",
            count=max(100, len(message_ids)),
            consumername=self.consumer,
        )
        mine = sorted({entry["message_id"] for entry in owned} & set(message_ids))
        if mine:
            self.redis.xclaim(self.stream, GROUP, self.consumer, 0, mine, justid=True)

    def load(self, deliveries: list[Delivery]) -> list[ClaimedJob]:
        """The delivered jobs, in order: an entry's own copy of its record, else the record
        read now; entries whose record expired are acknowledged and dropped (``START`` finds
        that out for an entry with a copy)."""
        unread = [delivery for delivery in deliveries if delivery.record is None]
        read: dict[str, dict[str, str]] = {}
        if unread:
            with self.redis.pipeline(transaction=False) as pipe:
                for delivery in unread:
                    pipe.hgetall(job_key(delivery.job_id))
                read = dict(zip((d.message_id for d in unread), pipe.execute(), strict=True))
        claimed = []
        for delivery in deliveries:
            if delivery.record is not None:
                claimed.append(ClaimedJob(delivery.message_id, delivery.record, delivery.first))
            elif data := read[delivery.message_id]:
                claimed.append(ClaimedJob(delivery.message_id, JobRecord.from_hash(data)))
            else:
                self._ack([delivery.message_id])
        return claimed

    # -- transitions ------------------------------------------------------------------------

    def start(self, jobs: list[ClaimedJob], at: float | None = None
              ) -> list[tuple[Start, ClaimedJob]]:
        """Atomically move each job to running (counting an attempt, sending ``started``),
        unless it must not run: gone or finished (acknowledged), canceled, or out of attempts
        (dead-lettered). ``at`` is the start time recorded (default: now). One script call for
        the batch: its jobs' keys share their model's cluster slot."""
        if not jobs:
            return []
        keys = [queued_zset(self.model)]
        for job in jobs:
            keys += [job_key(job.id), cancel_key(job.id), events_key(job.id)]
        event = JobEvent(type=EventType.STARTED, status=JobStatus.RUNNING).to_fields()
        started_at = now() if at is None else at
        replies = self._start(keys=keys, args=[self.consumer, started_at,
                                               self.settings.max_attempts,
                                               event["type"], event["data"]])
        decisions: list[tuple[Start, ClaimedJob]] = []
        for job, reply in zip(jobs, replies, strict=True):
            outcome = reply[0]
            if outcome in ("run", "dead"):
                flat = reply[1]
                record = JobRecord.from_hash(dict(zip(flat[::2], flat[1::2], strict=True)))
                job = ClaimedJob(job.message_id, record)
            if outcome == "run":
                decisions.append((Start.RUN, job))
                continue
            if outcome == "cancel":
                self.finish_canceled(job)
            elif outcome == "dead":
                self.dead_letter(job, self._give_up_reason(job))
                decisions.append((Start.DEAD, job))
                continue
            else:
                self._ack([job.message_id])
            decisions.append((Start.SKIP, job))
        return decisions

    def after_step(self, jobs: Sequence[ClaimedJob], step: int, total: int,
                   send: Sequence[ClaimedJob]) -> set[str]:
        """Ids of ``jobs`` whose cancel was asked for; the others of them in ``send`` get step
        ``step`` of ``total`` recorded and sent as an event (as ``progress`` does). One script
        call after each denoising step: its jobs' keys share their model's cluster slot."""
        if not jobs:
            return set()
        keys: list[str] = []
        for job in jobs:
            keys += [job_key(job.id), cancel_key(job.id), events_key(job.id)]
        event = JobEvent(type=EventType.STEP, step=step, total=total).to_fields()
        sending = {job.id for job in send}
        flags = "".join("1" if job.id in sending else "0" for job in jobs)
        fields = JobRecord.fields(step=step, total_steps=total)
        asked = self._after_step(keys=keys, args=[
            event["type"], event["data"], flags, *(item for pair in fields.items() for item in pair)
        ])
        return {job.id for job, flag in zip(jobs, asked, strict=True) if flag}

    def progress(self, jobs: Sequence[ClaimedJob], step: int, total: int,
                 previews: Mapping[str, Preview] | None = None) -> None:
        """Record step ``step`` of ``total`` and send it as an event, for each job (with its
        preview from ``previews``, by job id, if it has one)."""
        event = JobEvent(type=EventType.STEP, step=step, total=total).to_fields()
        previews = previews or {}
        with self.redis.pipeline(transaction=False) as pipe:
            for job in jobs:
                pipe.hset(job_key(job.id), mapping=JobRecord.fields(step=step, total_steps=total))
                preview = previews.get(job.id)
                pipe.xadd(events_key(job.id), event if preview is None else JobEvent(
                    type=EventType.STEP, step=step, total=total, preview=preview).to_fields())
            pipe.execute()

    def succeed(self, results: list[JobResult]) -> float | None:
        """Store every job's images and outcome, send ``finished``, acknowledge and publish the
        notice: one script call for the whole batch (its jobs' keys share their model's cluster
        slot), so its jobs finish together. Returns the server time it was stored (the id of the
        last ``finished`` event; ``None`` with nothing to store)."""
        if not results:
            return None
        event = JobEvent(type=EventType.FINISHED, status=JobStatus.SUCCEEDED).to_fields()
        keys: list[str] = [self.stream]
        args: list[str | bytes | int] = [
            GROUP, self.settings.finished_image_ttl_s, event["type"], event["data"],
            FINISHED_CHANNEL, finished_notice([result.job.id for result in results]),
        ]
        for result in results:
            job = result.job
            fields = JobRecord.fields(
                status=JobStatus.SUCCEEDED,
                finished_at=job.record.created_at + result.timings.total,
                schedule=result.schedule, timings=result.timings,
                step=job.record.total_steps, error=None, error_type=None,
            )
            keys += [job_key(job.id), events_key(job.id)]
            keys += [image_key(job.id, index) for index in range(len(result.images))]
            args += [job.message_id, len(result.images), len(fields)]
            args += [item for pair in fields.items() for item in pair]
            args += result.images
        return entry_seconds(self._succeed(keys=keys, args=args))

    def finish_canceled(self, job: ClaimedJob) -> None:
        """Mark ``job`` canceled, send ``finished`` and acknowledge."""
        fields = JobRecord.fields(status=JobStatus.CANCELED, finished_at=now())
        event = JobEvent(type=EventType.FINISHED, status=JobStatus.CANCELED)
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(job_key(job.id), mapping=fields)
            pipe.xadd(events_key(job.id), event.to_fields())
            self._ack_in(pipe, [job.message_id])
            pipe.execute()
        self._announce([job.id])

    def fail(self, job: ClaimedJob, error: BaseException) -> JobStatus:
        """A failed attempt: queue the job again, or dead-letter it on its last attempt.

        Returns ``QUEUED`` (retried) or ``FAILED`` (dead-lettered).
        """
        message = f"{type(error).__name__}: {error}"
        if job.record.attempts >= self.settings.max_attempts:
            self.dead_letter(job, f"failed {job.record.attempts} times; last error: {message}")
            return JobStatus.FAILED
        log.warning("job %s attempt %d failed, retrying: %s", job.id, job.record.attempts, message)
        self.requeue(job, error=message)
        return JobStatus.QUEUED

    def requeue(self, job: ClaimedJob, error: str) -> None:
        """Queue a failed ``job`` again (a new entry at the end); acknowledge the old entry."""
        fields = JobRecord.fields(status=JobStatus.QUEUED, worker=None, error=error)
        event = JobEvent(
            type=EventType.QUEUED, status=JobStatus.QUEUED, attempt=job.record.attempts, error=error
        )
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(job_key(job.id), mapping=fields)
            pipe.zadd(queued_zset(self.model), {job.id: now()})
            pipe.xadd(events_key(job.id), event.to_fields())
            pipe.xadd(self.stream, {STREAM_JOB_FIELD: job.id})
            self._ack_in(pipe, [job.message_id])
            pipe.execute()

    def hand_back(self, jobs: list[ClaimedJob]) -> None:
        """Return jobs this worker read but never started (it is stopping): new entries, so
        another worker takes them now rather than after the lease."""
        with self.redis.pipeline(transaction=True) as pipe:
            for job in jobs:
                pipe.xadd(self.stream, {STREAM_JOB_FIELD: job.id})
            self._ack_in(pipe, [job.message_id for job in jobs])
            pipe.execute()

    def dead_letter(self, job: ClaimedJob, reason: str) -> None:
        """Move ``job`` to the dead-letter stream and mark it failed with ``reason``."""
        log.error("job %s dead-lettered: %s", job.id, reason)
        fields = JobRecord.fields(
            status=JobStatus.FAILED, finished_at=now(), error=reason, error_type="dead_lettered"
        )
        event = JobEvent(type=EventType.FINISHED, status=JobStatus.FAILED, error=reason)
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(job_key(job.id), mapping=fields)
            pipe.xadd(
                dead_stream(self.model),
                {
                    "job_id": job.id,
                    "reason": reason,
                    "attempts": str(job.record.attempts),
                },
            )
            pipe.xadd(events_key(job.id), event.to_fields())
            self._ack_in(pipe, [job.message_id])
            pipe.execute()
        self._announce([job.id])

    # -- helpers ----------------------------------------------------------------------------

    def _give_up_reason(self, job: ClaimedJob) -> str:
        attempts = self.settings.max_attempts
        last = job.record.error or "its worker stopped before finishing (lease expired)"
        return f"gave up after {attempts} attempt(s); last: {last}"

    def _announce(self, job_ids: list[str]) -> None:
        """One notice for jobs whose outcome is stored (wakes their sync waiters)."""
        self.redis.publish(FINISHED_CHANNEL, finished_notice(job_ids))

    def _ack(self, message_ids: list[str]) -> None:
        with self.redis.pipeline(transaction=True) as pipe:
            self._ack_in(pipe, message_ids)
            pipe.execute()

    def _ack_in(self, pipe: redis.client.Pipeline, message_ids: list[str]) -> None:
        """Acknowledge and delete entries: the stream only holds unfinished deliveries."""
        pipe.xack(self.stream, GROUP, *message_ids)
        pipe.xdel(self.stream, *message_ids)

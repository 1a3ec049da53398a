"""Gateway side of the queue: enqueue (with idempotency and the depth limit), depth, cancel.

Enqueue and cancel are Lua scripts, so each is one atomic step: the job record is written in
the same step as the stream entry (a crash cannot lose an accepted job), the depth check cannot
race another request, and a cancel cannot race a worker starting the job.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

from redis.asyncio import Redis

from app.errors import JobFinished, JobNotFound, QueueFull
from olss_core.job_scripts import CANCEL, ENQUEUE
from olss_core.job_states import JobStatus
from olss_core.keys import (
    FINISHED_CHANNEL,
    cancel_key,
    events_key,
    idempotency_key,
    job_key,
    jobs_stream,
    new_job_id,
    queued_zset,
)
from olss_core.protocol import EventType, JobEvent, JobRecord, JobSpec, now
from olss_core.settings import Settings


@dataclass(frozen=True)
class Enqueued:
    job_id: str
    existing: bool = False


def idempotency_digest(key: str, principal: str) -> str:
    """Keys are scoped to the caller's API key, and hashed so neither is stored."""
    return hashlib.sha256(f"{principal}\n{key}".encode()).hexdigest()


class JobQueue:
    """Enqueue, measure and cancel jobs on a ``decode_responses=True`` client."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self._redis = redis
        self._settings = settings
        self._enqueue = redis.register_script(ENQUEUE)
        self._cancel = redis.register_script(CANCEL)

    async def enqueue(self, spec: JobSpec, idempotency: str | None = None) -> Enqueued:
        """Queue ``spec`` as a new job, or return the job already made for ``idempotency``."""
        job_id = new_job_id(spec.model)
        created = now()
        record = JobRecord(id=job_id, model=spec.model, spec=spec, created_at=created,
                           total_steps=spec.steps)
        event = JobEvent(type=EventType.QUEUED, status=JobStatus.QUEUED, at=created).to_fields()
        flat = [item for pair in record.to_hash().items() for item in pair]
        ttl = self._settings.job_ttl_s
        outcome, value = await self._enqueue(
            keys=[job_key(job_id), queued_zset(spec.model), jobs_stream(spec.model),
                  events_key(job_id), idempotency_key(spec.model, idempotency or "-")],
            args=[job_id, self._settings.max_queue_depth, ttl, created,
                  "1" if idempotency else "0", event["type"], event["data"], *flat],
        )
        if outcome == "full":
            raise QueueFull(
                f"queue for model {spec.model!r} is full ({value} jobs waiting; "
                f"limit OLSS_MAX_QUEUE_DEPTH={self._settings.max_queue_depth})",
                retry_after_s=self.retry_after_s(int(value)),
            )
        return Enqueued(job_id=value, existing=outcome == "existing")

    def retry_after_s(self, depth: int) -> int:
        """A rough wait: the queue drains about one full batch per second per worker."""
        return max(1, math.ceil(depth / self._settings.max_batch_size))

    async def depth(self, models: list[str]) -> int:
        """Jobs queued and not yet started, summed over ``models``."""
        if not models:
            return 0
        async with self._redis.pipeline(transaction=False) as pipe:
            for model in models:
                pipe.zcard(queued_zset(model))
            return sum(await pipe.execute())

    async def position(self, record: JobRecord) -> int | None:
        """Jobs ahead of ``record`` while it is queued, else ``None``."""
        if record.status is not JobStatus.QUEUED:
            return None
        return await self._redis.zrank(queued_zset(record.model), record.id)

    async def cancel(self, job_id: str) -> JobStatus:
        """Cancel a queued job now (it never runs) or ask its worker to stop a running one.

        Returns ``CANCELED`` for a queued job and ``RUNNING`` when the worker was asked.
        """
        event = JobEvent(type=EventType.FINISHED, status=JobStatus.CANCELED).to_fields()
        record_model = await self._redis.hget(job_key(job_id), "model")
        if record_model is None:
            raise JobNotFound(f"no job {job_id!r}")
        outcome = await self._cancel(
            keys=[job_key(job_id), queued_zset(record_model), events_key(job_id),
                  cancel_key(job_id)],
            args=[now(), self._settings.job_ttl_s, event["type"], event["data"],
                  FINISHED_CHANNEL],
        )
        if outcome == "missing":
            raise JobNotFound(f"no job {job_id!r}")
        if outcome == "now":
            return JobStatus.CANCELED
        if outcome == "asked":
            return JobStatus.RUNNING
        raise JobFinished(f"job {job_id!r} already {outcome.removeprefix('finished:')}")

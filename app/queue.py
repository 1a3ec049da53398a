"""Gateway side of the queue: enqueue (with idempotency and the depth limit), depth, cancel.

Enqueue and cancel are Lua scripts, so each is one atomic step: the job record is written in
the same step as the stream entry (a crash cannot lose an accepted job), the depth check cannot
race another request, and a cancel cannot race a worker starting the job.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from redis.asyncio import Redis

from app.errors import IdempotencyConflict, JobFinished, JobNotFound, QueueFull
from app.throughput import FinishRate, drain_rate, retry_after_s
from olss_core.job_scripts import CANCEL, ENQUEUE
from olss_core.job_states import JobStatus
from olss_core.keys import (
    FINISHED_CHANNEL,
    GROUP,
    caller_jobs_zset,
    cancel_key,
    events_key,
    idempotency_key,
    job_key,
    jobs_stream,
    new_job_id,
    queued_zset,
    webhooks_stream,
)
from olss_core.protocol import (
    EventType,
    JobEvent,
    JobRecord,
    JobSpec,
    WebhookTarget,
    WorkerInfo,
    now,
)
from olss_core.settings import Settings


@dataclass(frozen=True)
class Backlog:
    """One model's waiting work: jobs queued and not yet started (``depth``) and stream entries
    no worker has read yet (``lag``, the consumer group's; ``None`` while there is no group,
    before a model's first worker, or where Redis cannot count it)."""

    depth: int
    lag: int | None


@dataclass(frozen=True)
class Enqueued:
    job_id: str
    existing: bool = False


@dataclass(frozen=True)
class Idempotency:
    """An ``Idempotency-Key`` as stored: its digest, and the fingerprint of its request."""

    key: str
    digest: str
    fingerprint: str

    @classmethod
    def of(cls, key: str, principal: str, request: str) -> Idempotency:
        """Keys are scoped to the caller's API key and hashed so neither is stored;
        ``request`` is the canonical text of what was asked."""
        return cls(
            key=key,
            digest=hashlib.sha256(f"{principal}\n{key}".encode()).hexdigest(),
            fingerprint=hashlib.sha256(request.encode()).hexdigest(),
        )


class JobQueue:
    """Enqueue, measure and cancel jobs on a ``decode_responses=True`` client."""

    def __init__(
        self, redis: Redis, settings: Settings, finishes: FinishRate | None = None
    ) -> None:
        self._redis = redis
        self._settings = settings
        self._finishes = finishes or FinishRate()
        self._enqueue = redis.register_script(ENQUEUE)
        self._cancel = redis.register_script(CANCEL)

    async def enqueue(
        self,
        spec: JobSpec,
        idempotency: Idempotency | None = None,
        owner: str | None = None,
        workers: Sequence[WorkerInfo] = (),
        webhook: WebhookTarget | None = None,
    ) -> Enqueued:
        """Queue ``spec`` as a new job, or return the job already made for ``idempotency``.

        ``owner`` is the caller's key digest; ``workers`` (the model's live ones) and the
        finishes measured set the ``Retry-After`` of a full queue (``app.throughput``). A
        ``webhook`` is registered in the same step (``app.webhooks`` delivers it).
        """
        job_id = new_job_id(spec.model)
        created = now()
        record = JobRecord(id=job_id, model=spec.model, spec=spec, created_at=created,
                           total_steps=spec.steps, owner=owner, webhook=webhook)
        event = JobEvent(type=EventType.QUEUED, status=JobStatus.QUEUED, at=created).to_fields()
        flat = [item for pair in record.to_hash().items() for item in pair]
        ttl = self._settings.job_ttl_s
        digest = idempotency.digest if idempotency else "-"
        outcome, value = await self._enqueue(
            keys=[job_key(job_id), queued_zset(spec.model), jobs_stream(spec.model),
                  events_key(job_id), idempotency_key(spec.model, digest),
                  caller_jobs_zset(spec.model, owner), webhooks_stream(spec.model)],
            args=[job_id, self._settings.max_queue_depth, ttl, created,
                  "1" if idempotency else "0", event["type"], event["data"],
                  idempotency.fingerprint if idempotency else "-", "1" if webhook else "0",
                  *flat],
        )
        if outcome == "full":
            raise QueueFull(
                f"queue for model {spec.model!r} is full ({value} jobs waiting; "
                f"limit OLSS_MAX_QUEUE_DEPTH={self._settings.max_queue_depth})",
                retry_after_s=retry_after_s(
                    int(value), drain_rate(spec.model, workers, self._finishes)
                ),
            )
        if outcome == "conflict":
            assert idempotency is not None
            raise IdempotencyConflict(
                f"Idempotency-Key {idempotency.key!r} was used for a different request "
                f"(job {value}); send the same request to get that job, or use a new key"
            )
        return Enqueued(job_id=value, existing=outcome == "existing")

    async def backlog(self, models: list[str]) -> dict[str, Backlog]:
        """Each model's waiting work, in one round trip."""
        if not models:
            return {}
        async with self._redis.pipeline(transaction=False) as pipe:
            for model in models:
                pipe.zcard(queued_zset(model))
                pipe.xinfo_groups(jobs_stream(model))
            replies = await pipe.execute(raise_on_error=False)
        backlog = {}
        for model, depth, groups in zip(models, replies[::2], replies[1::2], strict=True):
            if isinstance(depth, Exception):
                raise depth
            lags = [] if isinstance(groups, Exception) else [
                group["lag"] for group in groups if group["name"] == GROUP
            ]
            backlog[model] = Backlog(depth, lags[0] if lags else None)
        return backlog

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

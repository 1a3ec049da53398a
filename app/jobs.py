"""Gateway side of a job's life after enqueue: its record, its events and its images."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from redis.asyncio import Redis

from app.errors import JobNotFound
from olss_core.job_states import JobStatus
from olss_core.keys import events_key, image_key, job_key
from olss_core.protocol import EventType, JobEvent, JobRecord

EVENT_BLOCK_MS = 5000


@dataclass(frozen=True)
class StoredEvent:
    """An event with its stream id (the SSE ``id:``, usable as ``Last-Event-ID``)."""

    id: str
    event: JobEvent


async def get_record(redis: Redis, job_id: str) -> JobRecord:
    data = await redis.hgetall(job_key(job_id))
    if not data:
        raise JobNotFound(f"no job {job_id!r}")
    return JobRecord.from_hash(data)


async def get_result(
    redis_bytes: Redis, job_id: str, max_images: int
) -> tuple[JobRecord, list[bytes]]:
    """A finished job's record and images in one round trip (raw-bytes client).

    Reads ``max_images`` image keys (the request limit) with the record, then any beyond.
    """
    async with redis_bytes.pipeline(transaction=False) as pipe:
        pipe.hgetall(job_key(job_id))
        pipe.mget([image_key(job_id, n) for n in range(max_images)])
        data, values = await pipe.execute()
    if not data:
        raise JobNotFound(f"no job {job_id!r}")
    record = JobRecord.from_hash({k.decode(): v.decode() for k, v in data.items()})
    count = record.spec.num_images
    if count > max_images:  # made before the limit was lowered
        values += await redis_bytes.mget([image_key(job_id, n) for n in range(max_images, count)])
    images = values[:count]
    if record.status is JobStatus.SUCCEEDED and any(value is None for value in images):
        raise JobNotFound(f"images of job {job_id!r} have expired")
    return record, images


async def get_image(redis_bytes: Redis, job_id: str, index: int) -> bytes:
    value = await redis_bytes.get(image_key(job_id, index))
    if value is None:
        raise JobNotFound(f"job {job_id!r} has no image {index}")
    return value


async def follow_events(
    redis: Redis, job_id: str, after: str = "0", timeout_s: float = 3600.0
) -> AsyncIterator[StoredEvent]:
    """Every event after stream id ``after``, then new ones as they come, until ``finished``.

    Blocks up to ``EVENT_BLOCK_MS`` per read and stops after ``timeout_s`` without a finished
    event. A late reader still sees every event: they are kept in the job's events stream until
    its TTL.
    """
    deadline = time.monotonic() + timeout_s
    key = events_key(job_id)
    while (left_ms := int((deadline - time.monotonic()) * 1000)) > 0:
        reply = await redis.xread({key: after}, count=100, block=min(EVENT_BLOCK_MS, left_ms))
        for _, entries in reply:
            for entry_id, fields in entries:
                after = entry_id
                event = JobEvent.from_fields(fields)
                yield StoredEvent(entry_id, event)
                if event.type is EventType.FINISHED:
                    return


async def is_finished(redis: Redis, job_id: str) -> bool:
    """The job is in a final state (or gone: nothing more to wait for)."""
    status = await redis.hget(job_key(job_id), "status")
    return status is None or JobStatus(status).finished

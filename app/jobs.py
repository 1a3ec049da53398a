"""Gateway side of a job's life after enqueue: its record and its images.

A job is visible only to the API key that created it (``Caller.may_see``); to another key it
does not exist (404). Once delivered (a sync reply, an image GET) an image's TTL is shortened
to ``OLSS_DELIVERED_IMAGE_TTL_S``: the client has it, Redis need not keep it for the job's life.
"""

from __future__ import annotations

from redis.asyncio import Redis

from app.auth import Caller
from app.errors import JobNotFound
from app.result_reads import ResultReads
from olss_core.job_states import JobStatus
from olss_core.keys import image_key, job_key
from olss_core.protocol import JobRecord


def _visible(data: dict[str, str], job_id: str, caller: Caller) -> JobRecord:
    if not data:
        raise JobNotFound(f"no job {job_id!r}")
    record = JobRecord.from_hash(data)
    if not caller.may_see(record.owner):
        raise JobNotFound(f"no job {job_id!r}")
    return record


async def get_record(redis: Redis, job_id: str, caller: Caller) -> JobRecord:
    """The job's record, or ``JobNotFound`` (also for a job of another API key)."""
    return _visible(await redis.hgetall(job_key(job_id)), job_id, caller)


async def get_result(
    reads: ResultReads, job_id: str, expected: int, caller: Caller,
    delivered_ttl_s: int | None = None,
) -> tuple[JobRecord, list[bytes]]:
    """A finished job's record and images in one round trip, shared with the other reads of
    this event-loop turn (``app.result_reads``).

    Reads ``expected`` image keys with the record (then any more the record names). With
    ``delivered_ttl_s`` the images read are marked delivered in the same round trip (see
    ``delivered``), for a caller that may see the job.
    """
    redis_bytes = reads.redis
    data, values = await reads.read(job_id, expected, delivered_ttl_s)
    record = _visible({k.decode(): v.decode() for k, v in data.items()}, job_id, caller)
    count = record.spec.num_images
    if count > expected:
        more = range(expected, count)
        values += await redis_bytes.mget([image_key(job_id, n) for n in more])
        if delivered_ttl_s is not None:
            await delivered(redis_bytes, job_id, more, delivered_ttl_s)
    images = values[:count]
    if record.status is JobStatus.SUCCEEDED and any(value is None for value in images):
        raise JobNotFound(f"images of job {job_id!r} have expired")
    return record, images


async def get_image(redis_bytes: Redis, job_id: str, index: int) -> bytes:
    value = await redis_bytes.get(image_key(job_id, index))
    if value is None:
        raise JobNotFound(f"job {job_id!r} has no image {index} (not made yet, or expired)")
    return value


async def delivered(redis: Redis, job_id: str, indexes: range, ttl_s: int) -> None:
    """Shorten the TTL of delivered images to ``ttl_s`` (never lengthen it: ``EXPIRE LT``)."""
    async with redis.pipeline(transaction=False) as pipe:
        for index in indexes:
            pipe.expire(image_key(job_id, index), ttl_s, lt=True)
        await pipe.execute()


async def is_finished(redis: Redis, job_id: str) -> bool:
    """The job is in a final state (or gone: nothing more to wait for)."""
    status = await redis.hget(job_key(job_id), "status")
    return status is None or JobStatus(status).finished

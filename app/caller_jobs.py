"""The unfinished jobs of one caller (API key), across the models served.

``ENQUEUE`` adds every job to its caller's set for its model (``olss:{t}:caller:{owner}``,
trimmed to ``OLSS_JOB_TTL_S`` by enqueue time). Reading it drops the jobs that have finished or
expired, so the set holds little more than what is still under way. A1111's API uses it: its
progress route reports the caller's running job, its interrupt cancels the caller's jobs and
no one else's.
"""

from __future__ import annotations

from redis.asyncio import Redis

from app.auth import Caller
from olss_core.job_states import JobStatus
from olss_core.keys import caller_jobs_zset, job_key
from olss_core.protocol import JobRecord


async def unfinished_jobs(redis: Redis, models: list[str], caller: Caller) -> list[JobRecord]:
    """The caller's queued and running jobs of ``models``, newest first."""
    found: list[JobRecord] = []
    for model in models:
        key = caller_jobs_zset(model, caller.owner)
        job_ids = await redis.zrevrange(key, 0, -1)
        if not job_ids:
            continue
        async with redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hgetall(job_key(job_id))
            hashes = await pipe.execute()
        done = []
        for job_id, data in zip(job_ids, hashes, strict=True):
            record = JobRecord.from_hash(data) if data else None
            if record is None or record.status.finished:
                done.append(job_id)
            elif caller.may_see(record.owner):
                found.append(record)
        if done:
            await redis.zrem(key, *done)
    return sorted(found, key=lambda record: record.created_at, reverse=True)


def running(records: list[JobRecord]) -> list[JobRecord]:
    return [record for record in records if record.status is JobStatus.RUNNING]

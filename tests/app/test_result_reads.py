"""Result reads on a real Redis: the reads of one event-loop turn go out as one pipeline, and
each gets its own record, images and errors; a read whose request went away harms no other."""

from __future__ import annotations

import asyncio

import pytest
import redis

from app.result_reads import ResultReads
from olss_core.keys import image_key, job_key, new_job_id
from olss_core.redis_clients import async_client
from tests.support.redis_db import unit_settings

MODEL = "tiny-sd"


def finished_jobs(db: redis.Redis, count: int) -> list[str]:
    ids = [new_job_id(MODEL) for _ in range(count)]
    for n, job_id in enumerate(ids):
        db.hset(job_key(job_id), mapping={"id": job_id, "status": "succeeded"})
        db.set(image_key(job_id, 0), f"image {n}", ex=600)
    return ids


def with_reads(body):
    async def main():
        client = async_client(unit_settings().redis_url, 4, 5.0, decode_responses=False)
        try:
            return await body(ResultReads(client))
        finally:
            await client.aclose()

    return asyncio.run(main())


def test_the_reads_of_one_turn_are_one_pipeline_each_with_its_own_result(
    db: redis.Redis,
) -> None:
    ids = finished_jobs(db, 8)
    missing = new_job_id(MODEL)

    async def body(reads: ResultReads):
        together = await asyncio.gather(*(reads.read(job_id, 1, 60) for job_id in ids),
                                        reads.read(missing, 1, 60))
        alone = await reads.read(ids[0], 1)
        return together, alone, reads.pipelines_sent

    together, alone, pipelines = with_reads(body)
    assert pipelines == 2  # the nine reads of one turn, then the lone one
    for n, (job_id, (record, images)) in enumerate(zip(ids, together, strict=False)):
        assert record[b"id"] == job_id.encode() and images == [f"image {n}".encode()]
        assert 0 < db.ttl(image_key(job_id, 0)) <= 60  # marked delivered in the same trip
    assert together[-1] == ({}, [None])
    assert alone == ({b"id": ids[0].encode(), b"status": b"succeeded"}, [b"image 0"])


def test_one_reads_error_fails_that_read_alone(db: redis.Redis) -> None:
    good, bad = finished_jobs(db, 2)
    db.delete(image_key(bad, 0))
    db.rpush(image_key(bad, 0), "not a string")  # GET of a list: WRONGTYPE

    async def body(reads: ResultReads):
        return await asyncio.gather(reads.read(good, 1), reads.read(bad, 1),
                                    return_exceptions=True)

    ok, failed = with_reads(body)
    assert ok == ({b"id": good.encode(), b"status": b"succeeded"}, [b"image 0"])
    assert isinstance(failed, redis.ResponseError) and "WRONGTYPE" in str(failed)


def test_a_read_whose_request_went_away_leaves_the_others_answered(db: redis.Redis) -> None:
    kept, dropped = finished_jobs(db, 2)

    async def body(reads: ResultReads):
        gone = asyncio.ensure_future(reads.read(dropped, 1))
        staying = asyncio.ensure_future(reads.read(kept, 1))
        await asyncio.sleep(0)  # both asked in this turn
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        return await staying

    assert with_reads(body) == ({b"id": kept.encode(), b"status": b"succeeded"}, [b"image 0"])

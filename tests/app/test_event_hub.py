"""The event hub: many streams on one Redis connection per model, fan-out, resume, expiry,
and the stream cap; against a real Redis."""

from __future__ import annotations

import asyncio

import pytest
import redis
from fastapi.testclient import TestClient

from app.errors import TooManyStreams
from app.event_hub import EventHub, StoredEvent
from olss_core.keys import events_key, job_key, new_job_id
from olss_core.protocol import EventType, JobEvent, WorkerInfo
from olss_core.redis_clients import async_client
from tests.support.redis_db import unit_settings

ASYNC = {"Prefer": "respond-async"}


def add(db: redis.Redis, job_id: str, event: JobEvent) -> str:
    db.hset(job_key(job_id), "id", job_id)
    return db.xadd(events_key(job_id), event.to_fields())


def step(n: int) -> JobEvent:
    return JobEvent(type=EventType.STEP, step=n, total=3)


FINISHED = JobEvent(type=EventType.FINISHED)


async def collect(hub: EventHub, job_id: str, after: str = "0") -> list[StoredEvent]:
    return [stored async for stored in hub.follow(job_id, after)]


def run_hub(body, expiry_check_s: float = 30.0):
    """Run ``body(hub)`` with a hub on a pool of at most 4 connections."""

    async def main():
        client = async_client(unit_settings().redis_url, 4, 5.0)
        hub = EventHub(client, max_streams=1000, expiry_check_s=expiry_check_s)
        try:
            return await body(hub)
        finally:
            await hub.stop()
            await client.aclose()

    return asyncio.run(main())


def test_many_streams_share_one_reader_and_each_gets_its_events(db: redis.Redis) -> None:
    jobs = [new_job_id("tiny-sd") for _ in range(200)]
    for job_id in jobs:
        add(db, job_id, JobEvent(type=EventType.QUEUED))

    async def body(hub: EventHub):
        followers = [asyncio.create_task(collect(hub, j)) for j in jobs for _ in range(2)]
        await asyncio.sleep(0.5)  # every follower replayed and joined; the reader is blocked
        assert hub.open_streams == 0  # slots are the route's (reserve/release), not follow's
        for n in (1, 2):
            for job_id in jobs:
                add(db, job_id, step(n))
        for job_id in jobs:
            add(db, job_id, FINISHED)
        return await asyncio.wait_for(asyncio.gather(*followers), 20)

    streams = run_hub(body)
    assert len(streams) == 400
    for events in streams:
        types = [stored.event.type for stored in events]
        assert types == [EventType.QUEUED, EventType.STEP, EventType.STEP, EventType.FINISHED]


def test_a_stream_resumes_after_last_event_id(db: redis.Redis) -> None:
    job_id = new_job_id("tiny-sd")
    add(db, job_id, JobEvent(type=EventType.QUEUED))
    seen = add(db, job_id, step(1))
    add(db, job_id, step(2))
    add(db, job_id, FINISHED)
    events = run_hub(lambda hub: collect(hub, job_id, after=seen))
    assert [(e.event.type, e.event.step) for e in events] == [
        (EventType.STEP, 2), (EventType.FINISHED, None)
    ]


def test_a_stream_of_a_job_that_expired_ends(db: redis.Redis) -> None:
    job_id = new_job_id("tiny-sd")
    add(db, job_id, JobEvent(type=EventType.QUEUED))

    async def body(hub: EventHub):
        follower = asyncio.create_task(collect(hub, job_id))
        await asyncio.sleep(0.2)
        db.delete(job_key(job_id))
        return await asyncio.wait_for(follower, 10)

    events = run_hub(body, expiry_check_s=0.1)
    assert [e.event.type for e in events] == [EventType.QUEUED]


def test_a_stream_holds_a_slot_until_it_ends(
    make_client, registered_worker: WorkerInfo, db: redis.Redis
) -> None:
    """(The 429 past the cap, with concurrent HTTP clients: tests/reliability/test_sse_load.py.)"""
    client: TestClient = make_client(sse_max_streams=1)
    hub: EventHub = client.app.state.events
    job_id = client.post("/generate", json={"prompt": "x"}, headers=ASYNC).json()["id"]
    with client.stream("GET", f"/jobs/{job_id}/events") as stream:
        lines = stream.iter_lines()
        assert next(lines) == "event: queued"
        assert hub.open_streams == 1
        with pytest.raises(TooManyStreams):
            hub.reserve()
        db.xadd(events_key(job_id), FINISHED.to_fields())
        assert "event: finished" in list(lines)
    assert hub.open_streams == 0

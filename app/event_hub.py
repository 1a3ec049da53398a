"""Server-Sent Events for many clients on few Redis connections: one reader per model, fanned out.

A stream client first replays the job's stored events after its ``Last-Event-ID`` (``XRANGE``,
a short command on the shared pool), then joins the hub. For each model tag that has
followers the hub runs one task that reads the events streams of every followed job of that
model with a single blocking ``XREAD`` (their keys share a cluster slot) and puts each new
event on the queues of that job's followers. So a thousand open streams cost one connection
per model, not one each, and a client waiting minutes for a queued job holds no connection.

A stream ends with the job's ``finished`` event, or when the job's record has expired (checked
every ``EXPIRY_CHECK_S``). ``OLSS_SSE_MAX_STREAMS`` caps the streams of one process: past it
``open`` raises ``TooManyStreams`` (429) before the response starts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from redis.asyncio import Redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import RedisError

from app.errors import TooManyStreams
from olss_core.keys import events_key, job_key, job_tag
from olss_core.protocol import EventType, JobEvent

READ_BLOCK_MS = 500
"""Longest wait of one XREAD: a stream that joins meanwhile is read from the next one."""
READ_COUNT = 100
EXPIRY_CHECK_S = 30.0
STREAM_FULL_RETRY_AFTER_S = 5
READ_BACKOFF = ExponentialWithJitterBackoff(base=0.1, cap=5.0)

log = logging.getLogger(__name__)


def stream_position(entry_id: str) -> tuple[int, int]:
    """A stream id ``ms-seq`` (or ``ms``) as a comparable pair."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


@dataclass(frozen=True)
class StoredEvent:
    """An event with its stream id (the SSE ``id:``, usable as ``Last-Event-ID``)."""

    id: str
    event: JobEvent


_GONE = None
"""Put on a follower's queue when its job expired without finishing."""


@dataclass(eq=False)
class _Follower:
    job_id: str
    cursor: str
    queue: asyncio.Queue[StoredEvent | None] = field(default_factory=asyncio.Queue)

    def offer(self, stored: StoredEvent) -> None:
        if stream_position(stored.id) > stream_position(self.cursor):
            self.cursor = stored.id
            self.queue.put_nowait(stored)


class EventHub:
    """The job event streams of one gateway process (see the module docstring)."""

    def __init__(
        self, redis: Redis, max_streams: int, expiry_check_s: float = EXPIRY_CHECK_S
    ) -> None:
        self._redis = redis
        self.max_streams = max_streams
        self._expiry_check_s = expiry_check_s
        self._open = 0
        self._followers: dict[str, dict[str, set[_Follower]]] = {}
        self._readers: dict[str, asyncio.Task[None]] = {}
        self._stopped = False

    @property
    def open_streams(self) -> int:
        return self._open

    def reserve(self) -> None:
        """Take a stream slot, or ``TooManyStreams`` when all are taken."""
        if self._open >= self.max_streams:
            raise TooManyStreams(
                f"this gateway serves {self.max_streams} event streams already "
                "(OLSS_SSE_MAX_STREAMS); poll GET /jobs/{id} or retry later",
                retry_after_s=STREAM_FULL_RETRY_AFTER_S,
            )
        self._open += 1

    def release(self) -> None:
        self._open -= 1

    async def follow(self, job_id: str, after: str = "0") -> AsyncIterator[StoredEvent]:
        """The job's events after stream id ``after``, then new ones, until ``finished``."""
        follower = _Follower(job_id, after)
        async for stored in self._replay(follower):
            yield stored
            if stored.event.type is EventType.FINISHED:
                return
        self._join(follower)
        try:
            while (stored := await follower.queue.get()) is not _GONE:
                yield stored
                if stored.event.type is EventType.FINISHED:
                    return
        finally:
            self._leave(follower)

    async def stop(self) -> None:
        """End the readers: each stops at its next read (a cancellation inside a redis-py
        command can be lost, redis/redis-py#2028, so it is not the only signal)."""
        self._stopped = True
        readers = list(self._readers.values())
        for task in readers:
            task.cancel()
        if readers:
            await asyncio.wait(readers, timeout=2 * READ_BLOCK_MS / 1000)

    async def _replay(self, follower: _Follower) -> AsyncIterator[StoredEvent]:
        key = events_key(follower.job_id)
        while True:
            entries = await self._redis.xrange(key, f"({follower.cursor}", "+", count=READ_COUNT)
            for entry_id, fields in entries:
                follower.cursor = entry_id
                yield StoredEvent(entry_id, JobEvent.from_fields(fields))
            if len(entries) < READ_COUNT:
                return

    def _join(self, follower: _Follower) -> None:
        tag = job_tag(follower.job_id)
        self._followers.setdefault(tag, {}).setdefault(follower.job_id, set()).add(follower)
        reader = self._readers.get(tag)
        if reader is None or reader.done():
            self._readers[tag] = asyncio.create_task(self._read(tag), name=f"events-{tag}")

    def _leave(self, follower: _Follower) -> None:
        tag = job_tag(follower.job_id)
        jobs = self._followers.get(tag, {})
        followers = jobs.get(follower.job_id, set())
        followers.discard(follower)
        if not followers:
            jobs.pop(follower.job_id, None)
        if not jobs:
            self._followers.pop(tag, None)

    async def _read(self, tag: str) -> None:
        """Read the followed streams of model ``tag`` until none is followed."""
        failures = 0
        checked_at = time.monotonic()
        while not self._stopped and (jobs := self._followers.get(tag)):
            job_of_key = {events_key(job_id): job_id for job_id in jobs}
            cursors = {
                key: min((f.cursor for f in jobs[job_id]), key=stream_position)
                for key, job_id in job_of_key.items()
            }
            try:
                reply = await self._redis.xread(cursors, count=READ_COUNT, block=READ_BLOCK_MS)
                if time.monotonic() - checked_at > self._expiry_check_s:
                    await self._end_expired(tag)
                    checked_at = time.monotonic()
            except RedisError as error:
                failures += 1
                log.warning("event streams of model tag %s unreadable: %s", tag, error)
                await asyncio.sleep(READ_BACKOFF.compute(failures))
                continue
            failures = 0
            for key, entries in reply:
                for entry_id, fields in entries:
                    stored = StoredEvent(entry_id, JobEvent.from_fields(fields))
                    for follower in list(jobs.get(job_of_key[key], ())):
                        follower.offer(stored)

    async def _end_expired(self, tag: str) -> None:
        jobs = list(self._followers.get(tag, {}).items())
        async with self._redis.pipeline(transaction=False) as pipe:
            for job_id, _ in jobs:
                pipe.exists(job_key(job_id))
            alive = await pipe.execute()
        for (_, followers), exists in zip(jobs, alive, strict=True):
            if not exists:
                for follower in followers:
                    follower.queue.put_nowait(_GONE)

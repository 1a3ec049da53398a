"""The result reads of one event-loop turn, sent to Redis as one pipeline.

A finish notice names every job of a batch (``app.notifier``), so the sync requests waiting for
them wake in the same turn of the event loop and each reads its record and images. Sent one by
one, a batch of eight costs eight round trips, each with redis-py's own overhead, on the one
event loop that also takes the next requests. ``ResultReads`` gathers the reads asked for in
one turn and sends them, in the next, as one pipeline. Each read gets its own replies or its
own error (``raise_on_error=False``): one job's bad key fails no other read.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from olss_core.keys import image_key, job_key
from olss_core.redis_clients import AsyncRedis

RawRecord = dict[bytes, bytes]
Result = tuple[RawRecord, list[bytes | None]]


@dataclass(frozen=True)
class _Read:
    """One job's record and first ``images`` images, marked delivered with a TTL or not."""

    job_id: str
    images: int
    delivered_ttl_s: int | None
    answer: asyncio.Future[Result] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )

    def queue(self, pipe: Any) -> int:
        """Queue this read's commands on ``pipe``; returns how many it queued."""
        pipe.hgetall(job_key(self.job_id))
        for n in range(self.images):  # GETs, not one MGET: a cluster pipeline refuses MGET
            pipe.get(image_key(self.job_id, n))
            if self.delivered_ttl_s is not None:
                pipe.expire(image_key(self.job_id, n), self.delivered_ttl_s, lt=True)
        return 1 + self.images * (1 if self.delivered_ttl_s is None else 2)

    def answer_with(self, replies: list[Any]) -> None:
        if self.answer.done():  # its request was cancelled meanwhile
            return
        error = next((reply for reply in replies if isinstance(reply, Exception)), None)
        if error is not None:
            self.answer.set_exception(error)
            return
        record, *rest = replies
        self.answer.set_result((record, rest if self.delivered_ttl_s is None else rest[::2]))

    def fail(self, error: Exception) -> None:
        if not self.answer.done():
            self.answer.set_exception(error)


class ResultReads:
    """Coalesces the ``read`` calls of one event-loop turn into one pipeline (a raw-bytes
    client: images are bytes)."""

    def __init__(self, redis_bytes: AsyncRedis) -> None:
        self.redis = redis_bytes
        self.pipelines_sent = 0
        self._pending: list[_Read] = []
        self._sending: set[asyncio.Task[None]] = set()

    async def read(self, job_id: str, images: int, delivered_ttl_s: int | None = None
                   ) -> Result:
        """The job's raw record hash (empty when there is none) and its first ``images``
        images (``None`` where absent). With ``delivered_ttl_s`` the images read are marked
        delivered in the same round trip (``EXPIRE ... LT``: never lengthened)."""
        wanted = _Read(job_id, images, delivered_ttl_s)
        if not self._pending:
            asyncio.get_running_loop().call_soon(self._send)
        self._pending.append(wanted)
        return await wanted.answer

    def _send(self) -> None:
        reads, self._pending = self._pending, []
        task = asyncio.ensure_future(self._execute(reads))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _execute(self, reads: list[_Read]) -> None:
        self.pipelines_sent += 1
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                counts = [wanted.queue(pipe) for wanted in reads]
                replies = await pipe.execute(raise_on_error=False)
        except asyncio.CancelledError:  # the gateway is stopping
            for wanted in reads:
                wanted.answer.cancel()
            raise
        except Exception as error:  # the connection, not one command: every read fails
            for wanted in reads:
                wanted.fail(error)
            return
        start = 0
        for wanted, count in zip(reads, counts, strict=True):
            wanted.answer_with(replies[start:start + count])
            start += count

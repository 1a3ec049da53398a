"""Wake sync requests when their job finishes: one pub/sub subscription per gateway process.

Workers publish the ids of finished jobs on ``olss:finished`` right after the MULTI that stores
their outcome. The gateway keeps one subscription (on a Redis Cluster on one node:
``olss_core.redis_clients.pubsub``) and resolves the local waiters for those ids, so a waiting
request costs no Redis traffic until its job is done. Pub/sub can drop messages (e.g. on a
reconnect), so a waiter also re-reads the job's status every ``POLL_S``: a lost message only
delays it.
A notice can also come before its waiter: the worker may finish a job while the gateway is
still reading the reply of the job's enqueue. So the notifier remembers the ids it heard for
``POLL_S`` (``finished_recently``); the waiter of a job it has just made checks that memory
instead of reading the job's status from Redis (``known_unfinished``), one round trip less.
Each notice is also counted in ``FinishRate`` (how fast each model's queue drains).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import RedisError

from app.throughput import FinishRate
from olss_core.keys import FINISHED_CHANNEL, finished_ids
from olss_core.redis_clients import AsyncRedis, pubsub

POLL_S = 1.0
RESUBSCRIBE_BACKOFF = ExponentialWithJitterBackoff(base=0.05, cap=5.0)
"""Wait before resubscribing after the n-th failure in a row (redis-py's backoff)."""

log = logging.getLogger(__name__)


class FinishNotifier:
    """Fans ``olss:finished`` messages out to the coroutines waiting for those jobs."""

    def __init__(self, redis: AsyncRedis, finishes: FinishRate) -> None:
        self._redis = redis
        self._finishes = finishes
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        self._heard: OrderedDict[str, float] = OrderedDict()  # job id -> when, oldest first
        self._task: asyncio.Task[None] | None = None
        self._stopped = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="finish-notifier")

    async def stop(self) -> None:
        """End the subscription. The listener also stops by itself within ``POLL_S``: a
        cancellation inside a redis-py read can be lost (redis/redis-py#2028), and a task that
        outlives the event loop would hang its shutdown."""
        self._stopped = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=2 * POLL_S)

    async def _listen(self) -> None:
        failures = 0
        while not self._stopped:
            try:
                async with pubsub(self._redis, ignore_subscribe_messages=True) as session:
                    await session.subscribe(FINISHED_CHANNEL)
                    failures = 0
                    while not self._stopped:
                        message = await session.get_message(timeout=POLL_S)
                        if message is not None:
                            for job_id in finished_ids(message["data"]):
                                self._wake(job_id)
            except RedisError as error:
                failures += 1
                log.warning("finish notices unavailable, polling meanwhile: %s", error)
                await asyncio.sleep(RESUBSCRIBE_BACKOFF.compute(failures))

    def _wake(self, job_id: str) -> None:
        self._finishes.observe(job_id)
        heard_at = time.monotonic()
        self._heard[job_id] = heard_at
        while self._heard:
            oldest, at = next(iter(self._heard.items()))
            if heard_at - at <= POLL_S:
                break
            del self._heard[oldest]
        for future in self._waiters.pop(job_id, ()):
            if not future.done():
                future.set_result(None)

    def finished_recently(self, job_id: str) -> bool:
        """The job's notice arrived within the last ``POLL_S`` (or so: pruned as notices come)."""
        return job_id in self._heard

    async def wait(
        self,
        job_id: str,
        finished: Callable[[], Awaitable[bool]],
        timeout_s: float,
        abandoned: asyncio.Event | None = None,
        known_unfinished: bool = False,
    ) -> bool | None:
        """True once the job's notice arrives or ``finished()`` holds (checked first and on
        each poll); False after ``timeout_s``; None as soon as ``abandoned`` is set.

        ``known_unfinished``: the caller has just made the job, so the first check is this
        notifier's memory of recent notices, not ``finished()``; polls still call it.
        ``abandoned`` stops a wait without cancelling it: a task cancelled inside a redis-py
        command can lose the cancellation (redis/redis-py#2028) and go on waiting.
        """
        deadline = time.monotonic() + timeout_s
        gone = asyncio.ensure_future(abandoned.wait()) if abandoned else None
        first = True
        try:
            while True:
                future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                self._waiters.setdefault(job_id, set()).add(future)
                try:
                    if first and known_unfinished:
                        if self.finished_recently(job_id):
                            return True
                    elif await finished():
                        return True
                    first = False
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    done, _ = await asyncio.wait(
                        {future, gone} if gone else {future}, timeout=min(left, POLL_S),
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                    if future in done:
                        return True
                    if gone in done:
                        return None
                finally:
                    waiters = self._waiters.get(job_id)
                    if waiters is not None:
                        waiters.discard(future)
                        if not waiters:
                            del self._waiters[job_id]
        finally:
            if gone is not None:
                gone.cancel()

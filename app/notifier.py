"""Wake sync requests when their job finishes: one pub/sub subscription per gateway process.

Workers publish a job id on ``olss:finished`` in the same MULTI that stores the outcome. The
gateway keeps one subscription and resolves the local waiters for that id, so a waiting request
costs no Redis traffic until its job is done. Pub/sub can drop messages (e.g. on a reconnect),
so a waiter also re-reads the job's status every ``POLL_S``: a lost message only delays it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import RedisError

from olss_core.keys import FINISHED_CHANNEL

POLL_S = 1.0
RESUBSCRIBE_BACKOFF = ExponentialWithJitterBackoff(base=0.05, cap=5.0)
"""Wait before resubscribing after the n-th failure in a row (redis-py's backoff)."""

log = logging.getLogger(__name__)


class FinishNotifier:
    """Fans ``olss:finished`` messages out to the coroutines waiting for those jobs."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="finish-notifier")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _listen(self) -> None:
        failures = 0
        while True:
            try:
                async with self._redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(FINISHED_CHANNEL)
                    failures = 0
                    async for message in pubsub.listen():
                        self._wake(message["data"])
            except RedisError as error:
                failures += 1
                log.warning("finish notices unavailable, polling meanwhile: %s", error)
                await asyncio.sleep(RESUBSCRIBE_BACKOFF.compute(failures))

    def _wake(self, job_id: str) -> None:
        for future in self._waiters.pop(job_id, ()):
            if not future.done():
                future.set_result(None)

    async def wait(
        self, job_id: str, finished: Callable[[], Awaitable[bool]], timeout_s: float
    ) -> bool:
        """True once the job's notice arrives or ``finished()`` holds (checked first and on
        each poll); False after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.setdefault(job_id, set()).add(future)
            try:
                if await finished():
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                try:
                    await asyncio.wait_for(future, min(left, POLL_S))
                    return True
                except TimeoutError:
                    continue
            finally:
                waiters = self._waiters.get(job_id)
                if waiters is not None:
                    waiters.discard(future)
                    if not waiters:
                        del self._waiters[job_id]

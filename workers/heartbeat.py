"""The worker's heartbeat: its ``WorkerInfo`` under a key with a TTL, refreshed in a thread.

A worker beats from the start of loading, so the gateway sees it (``loading``) before it takes
jobs; ``show`` replaces what it says (ready once warmed up, stalled while its queue cannot be
read) and beats at once. ``drain`` (safe in a signal handler: it only sets an event) makes every
later beat say ``draining``, the next one right away. The same thread keeps the leases of the
jobs the worker holds fresh (``on_beat``), so a long job is not claimed by another worker while
this one is alive.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import redis

from olss_core.keys import LAST_READY_HASH, MODELS_SET, WORKERS_SET, worker_key
from olss_core.protocol import WorkerInfo, WorkerState
from olss_core.redis_clients import SyncRedis

log = logging.getLogger(__name__)


def _nothing() -> None:
    pass


class Heartbeat:
    """Publishes ``info`` every ``period_s`` with a TTL of ``ttl_s``; calls ``on_beat`` too."""

    def __init__(
        self,
        client: SyncRedis,
        info: WorkerInfo,
        ttl_s: float,
        period_s: float,
        on_beat: Callable[[], None] = _nothing,
    ) -> None:
        self.redis = client
        self._info = info
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.period_s = period_s
        self.on_beat = on_beat
        self._stop = threading.Event()
        self._draining = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    @property
    def info(self) -> WorkerInfo:
        """What the next beat says."""
        if self._draining.is_set():
            return self._info.model_copy(update={"state": WorkerState.DRAINING})
        return self._info

    @property
    def state(self) -> WorkerState:
        return self.info.state

    def beat(self) -> None:
        info = self.info
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(worker_key(info.worker_id), info.model_dump_json(), px=self.ttl_ms)
            pipe.sadd(WORKERS_SET, info.worker_id)
            pipe.sadd(MODELS_SET, info.model_key)
            if info.ready:
                pipe.hset(LAST_READY_HASH, info.model_key, info.model_dump_json())
            pipe.execute()

    def start(self) -> None:
        """First beat now, then in the background."""
        self.beat()
        self._thread.start()

    def show(self, info: WorkerInfo) -> None:
        """Say ``info`` from now on, starting with a beat now (a failed one is only logged:
        the thread beats again)."""
        self._info = info
        try:
            self.beat()
        except redis.RedisError as error:
            log.warning("heartbeat failed: %s", error)

    def carry(self, info: WorkerInfo) -> None:
        """Say ``info`` from the next beat on (no beat now: for news that can wait a period,
        such as the measured throughput)."""
        self._info = info

    def drain(self) -> None:
        """Say ``draining`` from now on; the thread beats at once."""
        self._draining.set()
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.period_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.beat()
                self.on_beat()
            except redis.RedisError as error:
                log.warning("heartbeat failed: %s", error)

    def stop(self) -> None:
        """Stop beating and remove the key: the gateway stops routing to this worker now."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join()
        worker_id = self._info.worker_id
        try:
            with self.redis.pipeline(transaction=True) as pipe:
                pipe.delete(worker_key(worker_id))
                pipe.srem(WORKERS_SET, worker_id)
                pipe.execute()
        except redis.RedisError as error:
            log.warning("could not remove heartbeat: %s", error)

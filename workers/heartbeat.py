"""The worker's heartbeat: its ``WorkerInfo`` under a key with a TTL, refreshed in a thread.

The same thread keeps the leases of the jobs the worker holds fresh, so a long job is not
claimed by another worker while this one is alive.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import redis

from olss_core.keys import MODELS_SET, WORKERS_SET, worker_key
from olss_core.protocol import WorkerInfo

log = logging.getLogger(__name__)


class Heartbeat:
    """Publishes ``info`` every ``period_s`` with a TTL of ``ttl_s``; calls ``on_beat`` too."""

    def __init__(
        self,
        client: redis.Redis,
        info: WorkerInfo,
        ttl_s: float,
        period_s: float,
        on_beat: Callable[[], None],
    ) -> None:
        self.redis = client
        self.info = info
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.period_s = period_s
        self.on_beat = on_beat
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def beat(self) -> None:
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(worker_key(self.info.worker_id), self.info.model_dump_json(), px=self.ttl_ms)
            pipe.sadd(WORKERS_SET, self.info.worker_id)
            pipe.sadd(MODELS_SET, self.info.model_key)
            pipe.execute()

    def start(self) -> None:
        """First beat now (the worker is ready), then in the background."""
        self.beat()
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            try:
                self.beat()
                self.on_beat()
            except redis.RedisError as error:
                log.warning("heartbeat failed: %s", error)

    def stop(self) -> None:
        """Stop beating and remove the key: the gateway stops routing to this worker now."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        try:
            with self.redis.pipeline(transaction=True) as pipe:
                pipe.delete(worker_key(self.info.worker_id))
                pipe.srem(WORKERS_SET, self.info.worker_id)
                pipe.execute()
        except redis.RedisError as error:
            log.warning("could not remove heartbeat: %s", error)

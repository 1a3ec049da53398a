"""A Redis lock with a TTL that a background thread renews while its holder works.

One replica of a model calibrates at start-up while the others wait
(:mod:`workers.self_calibration`). The lock is one key (``olss_core.keys.calibration_lock_key``)
set with ``SET NX PX``; its value is ``<worker id> <random token>``, so only the holder renews
or deletes it (compare-and-set in Lua). A holder that dies stops renewing: the key expires
``OLSS_CALIBRATE_LOCK_TTL_S`` later and a waiter takes the lock. Nothing can deadlock.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import redis

from olss_core.redis_clients import SyncRedis

log = logging.getLogger(__name__)

RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""
RENEWALS_PER_TTL = 3
"""The holder renews the lock this many times per TTL (a renewal or two may fail)."""


class CalibrationLock:
    """The lock ``key``, taken by ``owner`` (a worker id) for ``ttl_s`` at a time."""

    def __init__(self, client: SyncRedis, key: str, owner: str, ttl_s: float) -> None:
        self.redis = client
        self.key = key
        self.owner = owner
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.value = f"{owner} {secrets.token_hex(8)}"
        self._renew = client.register_script(RENEW)
        self._release = client.register_script(RELEASE)

    def acquire(self) -> bool:
        """Take the lock if nobody holds it; whether this worker holds it now."""
        return bool(self.redis.set(self.key, self.value, nx=True, px=self.ttl_ms))

    def holder(self) -> str | None:
        """The worker id holding the lock (``None``: free)."""
        value = self.redis.get(self.key)
        return None if value is None else value.split(" ", 1)[0]

    def renew(self) -> bool:
        """Extend the lock by its TTL; ``False`` when this worker no longer holds it."""
        return bool(self._renew(keys=[self.key], args=[self.value, self.ttl_ms]))

    def release(self) -> None:
        """Delete the lock if this worker still holds it."""
        try:
            self._release(keys=[self.key], args=[self.value])
        except redis.RedisError as error:  # it expires by itself
            log.warning("could not release %s: %s", self.key, error)

    @contextmanager
    def held(self) -> Iterator[None]:
        """While the block runs, renew the lock in a thread; release it afterwards."""
        stop = threading.Event()
        thread = threading.Thread(target=self._keep, args=(stop,), name="calibration-lock",
                                  daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            self.release()

    def _keep(self, stop: threading.Event) -> None:
        period_s = self.ttl_ms / 1000 / RENEWALS_PER_TTL
        while not stop.wait(period_s):
            try:
                if not self.renew():
                    log.warning("lost the lock %s (expired): another worker may calibrate too",
                                self.key)
            except redis.RedisError as error:
                log.warning("could not renew %s: %s", self.key, error)

"""The gateway's view of the live workers, read from their heartbeats.

A heartbeat (``WorkerInfo``) says which model a worker serves and its OLSS schedules, so the
gateway validates steps and guidance without importing the schedules package.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from redis.asyncio import Redis

from app.errors import InvalidRequest, NoWorker
from olss_core.keys import WORKERS_SET, worker_key
from olss_core.protocol import WorkerInfo


@dataclass(frozen=True)
class Fleet:
    """The workers with a fresh heartbeat at one moment."""

    workers: tuple[WorkerInfo, ...]

    def by_model(self) -> dict[str, list[WorkerInfo]]:
        """Live workers grouped by model key, keys sorted."""
        groups: dict[str, list[WorkerInfo]] = {}
        for info in sorted(self.workers, key=lambda w: (w.model_key, w.worker_id)):
            groups.setdefault(info.model_key, []).append(info)
        return groups

    def find(self, model: str | None) -> WorkerInfo:
        """A worker serving ``model`` (name or key), or the only model served when ``None``."""
        groups = self.by_model()
        if not groups:
            raise NoWorker("no worker is alive")
        if model is None:
            if len(groups) > 1:
                raise InvalidRequest(f"model: required when several are served: {sorted(groups)}")
            return next(iter(groups.values()))[0]
        for infos in groups.values():
            if infos[0].serves(model):
                return infos[0]
        raise NoWorker(f"no live worker serves model {model!r}; served: {sorted(groups)}")


async def read_fleet(redis: Redis) -> Fleet:
    """Read every heartbeat; forget worker ids whose heartbeat key expired."""
    ids = sorted(await redis.smembers(WORKERS_SET))
    if not ids:
        return Fleet(())
    values = await redis.mget([worker_key(worker_id) for worker_id in ids])
    expired = [worker_id for worker_id, value in zip(ids, values, strict=True) if value is None]
    if expired:
        await redis.srem(WORKERS_SET, *expired)
    return Fleet(tuple(WorkerInfo.model_validate_json(v) for v in values if v is not None))


class FleetView:
    """``read_fleet`` cached for ``max_age_s`` so a request costs no extra Redis round trips."""

    def __init__(self, redis: Redis, max_age_s: float = 0.5) -> None:
        self._redis = redis
        self._max_age_s = max_age_s
        self._fleet = Fleet(())
        self._read_at = float("-inf")

    async def get(self, fresh: bool = False) -> Fleet:
        if fresh or time.monotonic() - self._read_at > self._max_age_s:
            self._fleet = await read_fleet(self._redis)
            self._read_at = time.monotonic()
        return self._fleet

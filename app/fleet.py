"""The gateway's view of the live workers, read from their heartbeats.

A heartbeat (``WorkerInfo``) says which model a worker serves and its OLSS schedules, so the
gateway validates steps and guidance without importing the schedules package. The models that
have ever had a worker (``MODELS_SET``) tell a model whose workers are all gone (503, it may
come back) from one that was never served (422, a client error).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from redis.asyncio import Redis

from app.errors import InvalidRequest, NoWorker, UnknownModel
from olss_core.keys import MODELS_SET, WORKERS_SET, worker_key
from olss_core.protocol import WorkerInfo

NO_WORKER_RETRY_AFTER_S = 10


@dataclass(frozen=True)
class Fleet:
    """The workers with a fresh heartbeat at one moment, and every model ever served.

    ``workers`` are the ready ones, the only ones jobs are routed to and counted as serving;
    ``unready`` are the others (loading, calibrating, draining or stalled).
    """

    workers: tuple[WorkerInfo, ...]
    known_models: frozenset[str] = frozenset()
    unready: tuple[WorkerInfo, ...] = ()

    def by_model(self) -> dict[str, list[WorkerInfo]]:
        """Live workers grouped by model key, keys sorted."""
        groups: dict[str, list[WorkerInfo]] = {}
        for info in sorted(self.workers, key=lambda w: (w.model_key, w.worker_id)):
            groups.setdefault(info.model_key, []).append(info)
        return groups

    def served(self) -> list[str]:
        """The names a request may use for the models served now (keys and configured names)."""
        return sorted({name for w in self.workers for name in (w.model_key, w.model)})

    def find(self, model: str | None, default: str | None = None) -> WorkerInfo:
        """A worker serving ``model`` (name or key); without one, ``default`` or the only model.

        An unknown ``model`` is ``UnknownModel``; a known one without a live worker, and a
        ``default`` without one, are ``NoWorker``.
        """
        groups = self.by_model()
        wanted = model or default
        if wanted is None:
            if not groups:
                raise NoWorker("no worker is alive", retry_after_s=NO_WORKER_RETRY_AFTER_S)
            if len(groups) > 1:
                raise InvalidRequest(f"model: required when several are served: {sorted(groups)}")
            return next(iter(groups.values()))[0]
        for infos in groups.values():
            if infos[0].serves(wanted):
                return infos[0]
        if model is not None and model not in self.known_models:
            raise UnknownModel(f"model: {model!r} is not served; served: {self.served()}")
        raise NoWorker(
            f"no live worker serves model {wanted!r}; served now: {self.served()}",
            retry_after_s=NO_WORKER_RETRY_AFTER_S,
        )


async def read_fleet(redis: Redis) -> Fleet:
    """Read every heartbeat; forget worker ids whose heartbeat key expired."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.smembers(WORKERS_SET)
        pipe.smembers(MODELS_SET)
        worker_ids, models = await pipe.execute()
    ids = sorted(worker_ids)
    known = frozenset(models)
    if not ids:
        return Fleet((), known)
    values = await redis.mget([worker_key(worker_id) for worker_id in ids])
    expired = [worker_id for worker_id, value in zip(ids, values, strict=True) if value is None]
    if expired:
        await redis.srem(WORKERS_SET, *expired)
    alive = [WorkerInfo.model_validate_json(v) for v in values if v is not None]
    return Fleet(tuple(w for w in alive if w.ready), known,
                 tuple(w for w in alive if not w.ready))


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

"""The gateway's view of the live workers, read from their heartbeats.

A heartbeat (``WorkerInfo``) says which model a worker serves and its OLSS schedules, so the
gateway validates steps and guidance without importing the schedules package. The models that
have ever had a worker (``MODELS_SET``) tell a model whose workers are all gone (503, it may
come back) from one that was never served (422, a client error). A model whose live workers all
calibrate its schedules at start-up is a 503 too, with their ETA as ``Retry-After``.

A model that scales to zero has no live worker while idle. With ``OLSS_ACCEPT_SLEEPING_MODELS``
its jobs are still queued, validated against the last heartbeat a ready worker of it sent
(``LAST_READY_HASH``), so an autoscaler reading the queue (KEDA) can start a worker for them.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from redis.asyncio import Redis

from app.errors import Calibrating, InvalidRequest, NoWorker, UnknownModel
from olss_core.keys import LAST_READY_HASH, MODELS_SET, WORKERS_SET, worker_key
from olss_core.protocol import (
    CalibrationProgress,
    WorkerInfo,
    WorkerState,
    calibration_retry_after_s,
)

NO_WORKER_RETRY_AFTER_S = 10


@dataclass(frozen=True)
class Fleet:
    """The workers with a fresh heartbeat at one moment, and every model ever served.

    ``workers`` are the ready ones, the only ones jobs are routed to and counted as serving;
    ``unready`` are the others (loading, calibrating, draining or stalled); ``sleeping`` holds
    the last ready heartbeat of each model that has no live worker at all.
    """

    workers: tuple[WorkerInfo, ...]
    known_models: frozenset[str] = frozenset()
    unready: tuple[WorkerInfo, ...] = ()
    sleeping: tuple[WorkerInfo, ...] = ()

    def by_model(self) -> dict[str, list[WorkerInfo]]:
        """Live workers grouped by model key, keys sorted."""
        groups: dict[str, list[WorkerInfo]] = {}
        for info in sorted(self.workers, key=lambda w: (w.model_key, w.worker_id)):
            groups.setdefault(info.model_key, []).append(info)
        return groups

    def served(self) -> list[str]:
        """The names a request may use for the models served now (keys and configured names)."""
        return sorted({name for w in self.workers for name in (w.model_key, w.model)})

    def find(
        self, model: str | None, default: str | None = None, accept_sleeping: bool = False
    ) -> WorkerInfo:
        """A worker serving ``model`` (name or key); without one, ``default`` or the only model.

        An unknown ``model`` is ``UnknownModel``; a known one without a live worker, and a
        ``default`` without one, are ``NoWorker``, unless ``accept_sleeping`` and the model is
        sleeping: then its last ready heartbeat stands in for a worker.
        """
        groups = self.by_model()
        if accept_sleeping:
            for info in self.sleeping:
                groups.setdefault(info.model_key, [info])
        wanted = model or default
        if wanted is None:
            if not groups:
                self._raise_if_calibrating(None)
                raise NoWorker("no worker is alive", retry_after_s=NO_WORKER_RETRY_AFTER_S)
            if len(groups) > 1:
                raise InvalidRequest(f"model: required when several are served: {sorted(groups)}")
            return next(iter(groups.values()))[0]
        for infos in groups.values():
            if infos[0].serves(wanted):
                return infos[0]
        self._raise_if_calibrating(wanted)
        if model is not None and model not in self.known_models:
            raise UnknownModel(f"model: {model!r} is not served; served: {self.served()}")
        raise NoWorker(
            f"no live worker serves model {wanted!r}; served now: {self.served()}",
            retry_after_s=NO_WORKER_RETRY_AFTER_S,
        )


    def calibrating(self, model: str | None = None) -> list[WorkerInfo]:
        """The workers calibrating ``model`` (name or key; ``None``: any model) at start-up."""
        return [w for w in self.unready if w.state is WorkerState.CALIBRATING
                and (model is None or w.serves(model))]

    def calibration_ahead(self, model: str | None = None) -> CalibrationProgress | None:
        """The progress of the calibration of ``model`` (``None``: any) that is furthest on."""
        progresses = [w.calibration for w in self.calibrating(model) if w.calibration is not None]
        return max(progresses, key=lambda p: p.fraction, default=None)

    def _raise_if_calibrating(self, model: str | None) -> None:
        """``Calibrating`` (503) when workers of ``model`` calibrate: it is served soon."""
        workers = self.calibrating(model)
        if not workers:
            return
        progresses = [w.calibration for w in workers if w.calibration is not None]
        ahead = self.calibration_ahead(model)
        where = "" if ahead is None else (
            f" ({ahead.phase}, {100 * ahead.fraction:.0f}% done"
            + ("" if ahead.eta_s is None else f", about {ahead.eta_s:.0f} s left") + ")"
        )
        name = model or workers[0].model_key
        raise Calibrating(
            f"model {name!r} is not served yet: its worker is calibrating its OLSS schedules"
            f"{where}; retry after Retry-After seconds",
            retry_after_s=min(calibration_retry_after_s(p) for p in progresses or [None]),
        )


async def read_fleet(redis: Redis) -> Fleet:
    """Read every heartbeat; forget worker ids whose heartbeat key expired."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.smembers(WORKERS_SET)
        pipe.smembers(MODELS_SET)
        pipe.hgetall(LAST_READY_HASH)
        worker_ids, models, last_ready = await pipe.execute()
    ids = sorted(worker_ids)
    known = frozenset(models)
    values = await redis.mget([worker_key(worker_id) for worker_id in ids]) if ids else []
    expired = [worker_id for worker_id, value in zip(ids, values, strict=True) if value is None]
    if expired:
        await redis.srem(WORKERS_SET, *expired)
    alive = [WorkerInfo.model_validate_json(v) for v in values if v is not None]
    live_models = {w.model_key for w in alive}
    sleeping = tuple(WorkerInfo.model_validate_json(info)
                     for key, info in sorted(last_ready.items()) if key not in live_models)
    return Fleet(tuple(w for w in alive if w.ready), known,
                 tuple(w for w in alive if not w.ready), sleeping)


class FleetView:
    """``read_fleet`` cached for at most ``max_age_s``, so a request costs no Redis round trip.

    A view is never older than ``max_age_s`` when a request uses it (older, the request waits for
    a new read). Past half that age a request gets the cached view and starts a read in the
    background, so under steady traffic no request waits for one. Concurrent requests share one
    read: at 8 clients a stale view used to cost eight (``read_fleet`` is 0.44 ms of CPU, three
    round trips; docs/BENCHMARKS.md, "Service load").
    """

    def __init__(self, redis: Redis, max_age_s: float = 0.5) -> None:
        self._redis = redis
        self._max_age_s = max_age_s
        self._fleet = Fleet(())
        self._read_at = float("-inf")
        self._reading: asyncio.Task[Fleet] | None = None
        self.reads_sent = 0

    async def get(self, fresh: bool = False) -> Fleet:
        """The fleet as read at most ``max_age_s`` ago; ``fresh``: a read started by this call."""
        if fresh:
            return await self._read()
        age = time.monotonic() - self._read_at
        if age > self._max_age_s:
            # shield: a request that goes away must not cancel the read others wait for
            return await asyncio.shield(self._shared_read())
        if age > self._max_age_s / 2:
            self._shared_read()
        return self._fleet

    def _shared_read(self) -> asyncio.Task[Fleet]:
        """The read in flight, or a new one."""
        if self._reading is None or self._reading.done():
            self._reading = asyncio.create_task(self._read())
            self._reading.add_done_callback(_retrieve_error)
        return self._reading

    async def _read(self) -> Fleet:
        started = time.monotonic()
        self.reads_sent += 1
        fleet = await read_fleet(self._redis)
        if started >= self._read_at:  # a slower, older read never replaces a newer one
            self._fleet, self._read_at = fleet, started
        return fleet


def _retrieve_error(task: asyncio.Task[Fleet]) -> None:
    """Mark a background read's error seen: the next request that needs a read gets its own
    (a Redis error, which ``app.errors`` maps)."""
    if not task.cancelled():
        task.exception()

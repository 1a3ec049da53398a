"""The serving loop: receive, plan compatible batches, run them; survive Redis outages.

Once ``stopping`` is set the loop runs no new batch: the jobs it received but did not start are
handed back (new entries, so another worker takes them now), and it returns once the running
batch is stored (it drains the result stage). A Redis error that outlasts the client's own
retries drops the held leases (those jobs are delivered again) and waits, longer after each
error in a row; ``on_round`` hears of each round's error (``None`` after a good round), so the
heartbeat can say the worker cannot serve.

A Redis that came back empty (a restart without persistence, ``FLUSHDB``, a failover to an
empty replica) has lost the consumer group: reads fail with ``NOGROUP``. The loop creates the
group again (with its stream) and goes on at once; the jobs that Redis lost are gone with it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

import redis
from redis.backoff import AbstractBackoff, EqualJitterBackoff

from workers.batch_runner import BatchRunner
from workers.batching import plan_batches
from workers.leases import LeaseTracker
from workers.lifecycle import JobLifecycle
from workers.receiver import BatchReceiver

OUTAGE_BACKOFF = EqualJitterBackoff(base=0.5, cap=15.0)
"""Wait after the n-th Redis error in a row (past the client's own retries): 0.5-1 s after the
first, twice that after the second, ... up to 7.5-15 s, so a long outage is waited out without
spinning."""

log = logging.getLogger(__name__)


def _ignore(_: redis.RedisError | None) -> None:
    pass


def lost_group(error: redis.RedisError) -> bool:
    """Redis answered that the consumer group does not exist, or that the stream a blocking
    read waited on was deleted under it."""
    text = str(error)
    return isinstance(error, redis.ResponseError) and (
        text.startswith("NOGROUP") or text.startswith("UNBLOCKED the stream key no longer")
    )


@dataclass(frozen=True)
class ServeLoop:
    """Serves one model's stream until ``stopping`` is set."""

    receiver: BatchReceiver
    runner: BatchRunner
    lifecycle: JobLifecycle
    leases: LeaseTracker
    max_batch_images: int
    stopping: threading.Event
    backoff: AbstractBackoff = OUTAGE_BACKOFF
    on_round: Callable[[redis.RedisError | None], None] = _ignore

    def run(self) -> None:
        errors_in_a_row = 0
        while not self.stopping.is_set():
            try:
                self.run_once()
            except redis.RedisError as error:
                errors_in_a_row += 1
                self.leases.forget_all()
                if lost_group(error) and self._make_group() and errors_in_a_row == 1:
                    continue  # read again now; a group lost again at once waits as below
                wait_s = self.backoff.compute(errors_in_a_row)
                log.warning("redis error #%d in a row, retrying in %.1f s: %s",
                            errors_in_a_row, wait_s, error)
                self.on_round(error)
                self.stopping.wait(wait_s)
            else:
                errors_in_a_row = 0
                self.on_round(None)
        try:
            self.runner.writer.drain()
        except redis.RedisError as error:
            log.warning("the last batch was not stored (its jobs will be delivered again): %s",
                        error)

    def _make_group(self) -> bool:
        """Create the lost consumer group again; False when Redis refused."""
        log.warning("the consumer group of %s is gone (Redis lost its data): creating it again",
                    self.lifecycle.stream)
        try:
            self.lifecycle.ensure_group()
        except redis.RedisError as error:
            log.warning("could not create the consumer group: %s", error)
            return False
        return True

    def run_once(self) -> None:
        """Receive what is available and run it in compatible batches."""
        jobs = self.receiver.receive()
        for batch in plan_batches(jobs, self.max_batch_images):
            if self.stopping.is_set():
                self.lifecycle.hand_back(batch)
                self.leases.release(batch)
                continue
            self.runner.run(batch)

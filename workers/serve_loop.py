"""The serving loop: receive, plan compatible batches, run them; survive Redis outages.

Once ``stopping`` is set the loop runs no new batch: the jobs it received but did not start are
handed back (new entries, so another worker takes them now), and it returns once the running
batch is stored (it drains the result stage). A Redis error that outlasts the client's own
retries drops the held leases (those jobs are delivered again) and waits, longer after each
error in a row.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import redis
from redis.backoff import AbstractBackoff

from workers.batch_runner import BatchRunner
from workers.batching import plan_batches
from workers.leases import LeaseTracker
from workers.lifecycle import JobLifecycle
from workers.receiver import BatchReceiver
from workers.redis_client import OUTAGE_BACKOFF

log = logging.getLogger(__name__)


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

    def run(self) -> None:
        errors_in_a_row = 0
        while not self.stopping.is_set():
            try:
                self.run_once()
            except redis.RedisError as error:
                errors_in_a_row += 1
                wait_s = self.backoff.compute(errors_in_a_row)
                log.warning("redis error #%d in a row, retrying in %.1f s: %s",
                            errors_in_a_row, wait_s, error)
                self.leases.forget_all()
                self.stopping.wait(wait_s)
            else:
                errors_in_a_row = 0
        try:
            self.runner.writer.drain()
        except redis.RedisError as error:
            log.warning("the last batch was not stored (its jobs will be delivered again): %s",
                        error)

    def run_once(self) -> None:
        """Receive what is available and run it in compatible batches."""
        jobs = self.receiver.receive()
        for batch in plan_batches(jobs, self.max_batch_images):
            if self.stopping.is_set():
                self.lifecycle.hand_back(batch)
                self.leases.release(batch)
                continue
            self.runner.run(batch)

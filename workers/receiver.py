"""Fill a batch from the model's stream: expired leases first, then new entries.

With nothing reclaimed, the first read blocks up to ``READ_BLOCK_MS`` for work; once something
arrived, more is taken for up to ``OLSS_MAX_BATCH_WAIT_MS`` until the batch is full. Every
entry received is held (its lease extended) until its job ends.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from workers.leases import LeaseTracker
from workers.lifecycle import ClaimedJob, Delivery, JobLifecycle

READ_BLOCK_MS = 1000
BATCH_POLL_S = 0.002


@dataclass(frozen=True)
class BatchReceiver:
    """Takes up to ``max_entries`` entries per call and loads their jobs."""

    lifecycle: JobLifecycle
    leases: LeaseTracker
    max_entries: int
    max_wait_ms: int

    def receive(self) -> list[ClaimedJob]:
        """The jobs of the entries received, in arrival order (none after an idle second).

        Entries whose record expired are acknowledged by ``JobLifecycle.load`` and not held.
        """
        deliveries = self._fill()
        self.leases.hold(deliveries)
        jobs = self.lifecycle.load(deliveries)
        loaded = {job.message_id for job in jobs}
        self.leases.release(d for d in deliveries if d.message_id not in loaded)
        return jobs

    def _fill(self) -> list[Delivery]:
        size = self.max_entries
        got = self.lifecycle.reclaim(size)
        if len(got) < size:
            block_ms = None if got else READ_BLOCK_MS
            got += self.lifecycle.read_new(size - len(got), block_ms=block_ms)
        # Poll rather than BLOCK: Redis expires blocking reads only every 1/hz s (100 ms).
        deadline = time.monotonic() + self.max_wait_ms / 1000
        while got and len(got) < size:
            more = self.lifecycle.read_new(size - len(got), block_ms=None)
            got += more
            left = deadline - time.monotonic()
            if not more and left <= 0:
                break
            if not more:
                time.sleep(min(BATCH_POLL_S, left))
        return got

"""Fill a batch from the model's stream: expired leases first, then new entries.

With nothing reclaimed, the first read blocks up to ``READ_BLOCK_MS`` for work (it returns the
moment an entry arrives); once something arrived, more is taken while the batch window says
more is coming (:class:`workers.batch_window.BatchWindow`), until the batch is full. Every entry
received is held (its lease extended) until its job ends.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from workers.batch_window import BatchWindow
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
    window: BatchWindow

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
            got += self._read_new(size - len(got), block_ms=None if got else READ_BLOCK_MS)
        # Poll rather than BLOCK: Redis expires blocking reads only every 1/hz s (100 ms).
        started = last_arrival = time.monotonic()
        while got and len(got) < size:
            now = time.monotonic()
            if not self.window.keep_waiting(len(got), now - started, now - last_arrival):
                break
            more = self._read_new(size - len(got), block_ms=None)
            if more:
                got += more
                last_arrival = time.monotonic()
            else:
                time.sleep(BATCH_POLL_S)
        return got

    def _read_new(self, count: int, block_ms: int | None) -> list[Delivery]:
        new = self.lifecycle.read_new(count, block_ms=block_ms)
        self.window.arrived(delivery.message_id for delivery in new)
        return new

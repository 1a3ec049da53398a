"""Fill a batch from the model's stream: expired leases first, then new entries.

Expired leases are looked for (``XAUTOCLAIM``) at most every ``RECLAIM_EVERY_S``, or a quarter
lease when that is shorter: an entry is claimable only a lease after its worker went silent, so
a busy worker need not spend a round trip per batch on it; after a look that took as many as
it asked for, the next round looks again (a dead worker's backlog goes first).

With nothing reclaimed, the first read blocks up to ``READ_BLOCK_MS`` for work (it returns the
moment an entry arrives); once something arrived, more is taken while the batch window says
more is coming (:class:`workers.batch_window.BatchWindow`), until the batch is full. Every entry
received is held (its lease extended) until its job ends.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from workers.batch_window import BatchWindow
from workers.leases import LeaseTracker
from workers.lifecycle import ClaimedJob, Delivery, JobLifecycle

READ_BLOCK_MS = 1000
BATCH_POLL_S = 0.002
RECLAIM_EVERY_S = 1.0


@dataclass
class BatchReceiver:
    """Takes up to ``max_entries`` entries per call and loads their jobs."""

    lifecycle: JobLifecycle
    leases: LeaseTracker
    max_entries: int
    window: BatchWindow
    _next_reclaim: float = field(default=float("-inf"), init=False)

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
        got = self._reclaim(size)
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

    def _reclaim(self, count: int) -> list[Delivery]:
        now = time.monotonic()
        if now < self._next_reclaim:
            return []
        got = self.lifecycle.reclaim(count)
        lease_s = self.lifecycle.settings.lease_ms / 1000
        # A full take may have left more behind: look again next round, before new entries.
        self._next_reclaim = now if len(got) == count else now + min(RECLAIM_EVERY_S, lease_s / 4)
        return got

    def _read_new(self, count: int, block_ms: int | None) -> list[Delivery]:
        new = self.lifecycle.read_new(count, block_ms=block_ms)
        self.window.arrived(delivery.message_id for delivery in new)
        return new

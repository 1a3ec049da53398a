"""How long a partly filled batch waits for more jobs: only while more are on their way.

Batching trades the held jobs' wait for the throughput of a bigger batch. A fixed window makes a
lone job on an idle worker wait it out for nothing; dynamic batchers instead size the wait from
what they observe (Triton's dynamic batcher, BentoML's adaptive batching: the arrival rate and
the batch's cost). The worker waits for another job while one of two signs says it is coming:

* **returns**: a client that gets its result often sends its next request at once (scripts,
  benchmarks, interactive tools waiting on a sync reply). Each job handed to the result stage
  opens a mark, open until one window after its result is stored; the first arrival after the
  store closes it (arrival and store times are both Redis server times: an entry id holds its
  milliseconds, so every gateway shares one clock; jobs that were already queued close none).
  The marks still open, times the share of recent marks that were closed rather than expired,
  is how many returns are due; the batch waits while at least :data:`LIKELY` of one is. A lone
  client's next job closes its own mark and starts at once;
* **bursts**: among the recent gaps between arrivals that are longer than the silence since the
  last one, ``s``, at least :data:`LIKELY` of them end within ``s + w`` (``w``: what is left of
  the window), the empirical P(gap <= s + w | gap > s). Gaps are forgotten after
  :data:`HORIZON_BATCHES` full-batch times (at least :data:`HORIZON_MIN_S`), so a lone job after
  a quiet spell starts at once.

The window itself is ``OLSS_MAX_BATCH_WAIT_MS``, capped at the predicted time of the batch:
waiting longer than a batch takes never pays, since a job that comes later waits at most one
batch. With ``OLSS_ADAPTIVE_BATCH_WAIT`` off every batch waits the whole window (a fixed
batcher). The serving loop and the result thread both report here, under one lock.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

LIKELY = 0.5
"""Wait while at least this much of a job is expected within the window."""
HORIZON_BATCHES = 4
"""Arrival gaps older than this many full-batch times are forgotten ..."""
HORIZON_MIN_S = 1.0
"""... but never sooner than this."""
MAX_GAPS = 256
MAX_MARKS = 1024
COST_SMOOTHING = 0.3
"""Weight of the newest batch in the running mean of seconds per image."""
RETURN_SMOOTHING = 0.1
"""Weight of the newest mark (closed or expired) in the running share of returns."""


def entry_seconds(message_id: str) -> float:
    """The server time a stream entry was added, from its id (``<milliseconds>-<sequence>``)."""
    return int(message_id.split("-", 1)[0]) / 1000


@dataclass(frozen=True)
class _Mark:
    """A job whose client may come back: stored at (server s; ``None`` while its store is
    under way) and open until (local monotonic s)."""

    stored_at: float | None
    open_until: float


class BatchWindow:
    """Arrivals, stores and batch cost of one worker, and the wait decision they make."""

    def __init__(self, max_batch: int, max_wait_ms: int, adaptive: bool = True) -> None:
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000
        self.adaptive = adaptive
        self._lock = threading.Lock()
        self._gaps: deque[tuple[float, float]] = deque(maxlen=MAX_GAPS)  # (ended at, seconds)
        self._last_arrival: float | None = None
        self._seconds_per_image: float | None = None
        self._storing: deque[_Mark] = deque(maxlen=MAX_MARKS)
        self._marks: deque[_Mark] = deque(maxlen=MAX_MARKS)
        self._unmatched: deque[float] = deque(maxlen=MAX_MARKS)  # arrivals that closed no mark
        self._return_share = 1.0

    # -- observations -----------------------------------------------------------------------

    def arrived(self, message_ids: Iterable[str]) -> None:
        """Record new entries (in stream order); reclaimed ones are no arrivals."""
        with self._lock:
            self._expire_marks()
            for message_id in message_ids:
                at = entry_seconds(message_id)
                if self._last_arrival is not None:
                    self._gaps.append((at, max(0.0, at - self._last_arrival)))
                    at = max(self._last_arrival, at)
                self._last_arrival = at
                stored_at = self._marks[0].stored_at if self._marks else None
                if stored_at is not None and stored_at <= at:
                    self._marks.popleft()
                    self._learn_return(True)
                else:
                    self._unmatched.append(at)

    def handed_over(self, jobs: int) -> None:
        """Record ``jobs`` results handed over for storing (the serving loop goes on at once)."""
        with self._lock:
            open_until = time.monotonic() + self.max_wait_s
            self._storing.extend(_Mark(None, open_until) for _ in range(jobs))

    def finished(self, jobs: int, stored_at: float) -> None:
        """Record ``jobs`` results stored at server time ``stored_at`` (``on_stored``).

        A client may be back before this is heard of: arrivals seen since ``stored_at`` close
        the new marks at once."""
        with self._lock:
            open_until = time.monotonic() + self.max_wait_s
            while self._unmatched and self._unmatched[0] < stored_at:
                self._unmatched.popleft()  # older than every store to come: no return
            for _ in range(jobs):
                if self._storing:
                    self._storing.popleft()
                if self._unmatched:
                    self._unmatched.popleft()
                    self._learn_return(True)
                else:
                    self._marks.append(_Mark(stored_at, open_until))

    def ran(self, images: int, seconds: float) -> None:
        """Record a batch of ``images`` that took ``seconds`` to generate."""
        per_image = seconds / max(1, images)
        with self._lock:
            previous = self._seconds_per_image
            self._seconds_per_image = (
                per_image if previous is None
                else COST_SMOOTHING * per_image + (1 - COST_SMOOTHING) * previous
            )

    # -- the decision -----------------------------------------------------------------------

    def window_s(self, held: int) -> float:
        """The longest a batch of ``held`` jobs waits in all."""
        if not self.adaptive or self._seconds_per_image is None:
            return self.max_wait_s
        return min(self.max_wait_s, self._seconds_per_image * held)

    def keep_waiting(self, held: int, waited_s: float, since_arrival_s: float) -> bool:
        """Whether a batch of ``held`` jobs, ``waited_s`` into its wait and ``since_arrival_s``
        after the last arrival, waits on for another job."""
        if held >= self.max_batch:
            return False
        left = self.window_s(held) - waited_s
        if left <= 0:
            return False
        if not self.adaptive:
            return True
        return self.returns_due() >= LIKELY or self.next_arrival_likely(since_arrival_s, left)

    def returns_due(self) -> float:
        """Open marks times the recent share of marks that were closed by an arrival."""
        with self._lock:
            self._expire_marks()
            return self._return_share * (len(self._storing) + len(self._marks))

    def next_arrival_likely(self, since_s: float, within_s: float) -> bool:
        """P(gap <= since_s + within_s | gap > since_s) >= LIKELY over the recent gaps."""
        longer = [gap for gap in self.recent_gaps() if gap > since_s]
        soon = sum(1 for gap in longer if gap <= since_s + within_s)
        return bool(longer) and soon >= LIKELY * len(longer)

    def recent_gaps(self) -> list[float]:
        """Arrival gaps that ended within the horizon before the newest arrival."""
        with self._lock:
            if self._last_arrival is None:
                return []
            full_batch_s = (self._seconds_per_image or 0.0) * self.max_batch
            horizon = max(HORIZON_MIN_S, HORIZON_BATCHES * full_batch_s)
            return [gap for ended, gap in self._gaps if ended >= self._last_arrival - horizon]

    # -- helpers (under the lock) -----------------------------------------------------------

    def _expire_marks(self) -> None:
        now = time.monotonic()
        while self._storing and self._storing[0].open_until <= now:
            self._storing.popleft()  # a store slower than the window: no lesson in it
        while self._marks and self._marks[0].open_until <= now:
            self._marks.popleft()
            self._learn_return(False)

    def _learn_return(self, returned: bool) -> None:
        share = self._return_share
        self._return_share = share + RETURN_SMOOTHING * (float(returned) - share)

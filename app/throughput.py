"""How fast a model's queue drains, and so how long a client turned away should wait.

``Retry-After`` on a full queue is the time the jobs ahead take to drain: ``depth / rate``. The
rate is what the model's workers report in their heartbeats (``WorkerInfo.images_per_s``); until
they do, what this gateway measured from the finish notices it received over the last
``WINDOW_S`` (every gateway sees every notice); with neither, one full batch per second per
live worker.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Sequence

from olss_core.keys import InvalidJobId, job_tag, model_tag
from olss_core.protocol import WorkerInfo

WINDOW_S = 60.0
MIN_SAMPLES = 3
"""Finishes in the window before the measured rate is used."""
MAX_RETRY_AFTER_S = 300


class FinishRate:
    """Jobs finished per second for each model over the last ``window_s``."""

    def __init__(
        self, window_s: float = WINDOW_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._window_s = window_s
        self._clock = clock
        self._finished: dict[str, deque[float]] = {}

    def observe(self, job_id: str) -> None:
        """Count a finish notice (the job id carries its model's tag)."""
        try:
            tag = job_tag(job_id)
        except InvalidJobId:
            return
        times = self._finished.setdefault(tag, deque())
        times.append(self._clock())
        self._prune(times)

    def jobs_per_s(self, model_key: str) -> float | None:
        """Measured rate of ``model_key``, or None with fewer than ``MIN_SAMPLES`` finishes."""
        times = self._finished.get(model_tag(model_key))
        if not times:
            return None
        self._prune(times)
        if len(times) < MIN_SAMPLES:
            return None
        return len(times) / max(self._clock() - times[0], 1.0)

    def _prune(self, times: deque[float]) -> None:
        horizon = self._clock() - self._window_s
        while times and times[0] < horizon:
            times.popleft()


def drain_rate(model_key: str, workers: Sequence[WorkerInfo], finishes: FinishRate) -> float:
    """Jobs per second the model's queue drains at (see the module docstring)."""
    reported = [w.images_per_s for w in workers if w.images_per_s]
    if reported:
        return sum(reported) * len(workers) / len(reported)
    measured = finishes.jobs_per_s(model_key)
    if measured:
        return measured
    return float(sum(w.max_batch_size for w in workers) or 1)


def retry_after_s(depth: int, rate: float) -> int:
    """Whole seconds for ``depth`` queued jobs to drain at ``rate``, within 1 .. the cap."""
    return min(MAX_RETRY_AFTER_S, max(1, math.ceil(depth / rate)))

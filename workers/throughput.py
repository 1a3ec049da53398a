"""The worker's measured throughput, ``WorkerInfo.images_per_s`` (issue 11 item 12).

Each stored batch adds its images and its inference seconds (encode, denoise and decode of the
batch, ``Stage.TOTAL``); the rate is the ratio of exponentially weighted sums,

    rate = sum_b a^(n-b) images_b / sum_b a^(n-b) seconds_b,   a = 0.5^(1 / HALF_LIFE_BATCHES),

so a batch of 8 counts 8 times a batch of 1 and the last few dozen batches dominate (the
gateway turns it into ``Retry-After``: queue depth over the model's summed rate). Thread-safe:
the result stage stores on its own thread while the heartbeat reads.
"""

from __future__ import annotations

import math
import threading

HALF_LIFE_BATCHES = 20.0
"""After this many batches an old batch weighs half as much."""


class ThroughputMeter:
    """Images per second of generation, ``None`` until a batch was measured."""

    def __init__(self, half_life_batches: float = HALF_LIFE_BATCHES) -> None:
        self._keep = 0.5 ** (1.0 / half_life_batches)
        self._images = 0.0
        self._seconds = 0.0
        self._lock = threading.Lock()

    def observe(self, images: int, seconds: float) -> None:
        """A batch of ``images`` took ``seconds``; a non-positive or non-finite time is
        ignored."""
        if images <= 0 or not math.isfinite(seconds) or seconds <= 0:
            return
        with self._lock:
            self._images = self._keep * self._images + images
            self._seconds = self._keep * self._seconds + seconds

    @property
    def images_per_s(self) -> float | None:
        with self._lock:
            return None if self._seconds <= 0 else round(self._images / self._seconds, 4)

"""Per-stage wall time of one generation (text encode, denoise, VAE decode).

On CUDA the stages are timed with CUDA events recorded on the current stream, so timing adds no
host-device synchronisation inside a stage; the one synchronisation happens in ``durations``.
On CPU a monotonic clock is used.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch


class StageTimer:
    """Collects named stage durations; ``durations()`` also reports ``total`` (sum of stages)."""

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self._use_cuda = self.device.type == "cuda"
        self._events: list[tuple[str, object, object]] = []

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if self._use_cuda:
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
        else:
            start = time.perf_counter()
            yield
            end = time.perf_counter()
        self._events.append((name, start, end))

    def durations(self) -> dict[str, float]:
        """Seconds per stage (summed when a stage repeats) plus ``total``."""
        if self._use_cuda and self._events:
            torch.cuda.synchronize(self.device)
        result: dict[str, float] = {}
        for name, start, end in self._events:
            if self._use_cuda:
                seconds = start.elapsed_time(end) / 1000.0  # type: ignore[attr-defined]
            else:
                seconds = float(end) - float(start)  # type: ignore[arg-type]
            result[name] = result.get(name, 0.0) + seconds
        result["total"] = sum(result.values())
        return result

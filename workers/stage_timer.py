"""Per-stage wall time of one generation (text encode, denoise, VAE decode).

On CUDA the stages are timed with CUDA events recorded on the device's current stream, so timing
adds no host-device synchronisation inside a stage; the one synchronisation happens in
``durations``. On CPU (and other devices) a monotonic clock is used. Each stage also runs under
a ``torch.profiler.record_function`` range ``olss.<stage>`` (see ``bench/step_profile.py``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch.profiler import record_function

STAGE_RANGE_PREFIX = "olss."


@dataclass
class _Span:
    name: str
    start: Any  # torch.cuda.Event on CUDA, perf_counter seconds elsewhere
    end: Any


class StageTimer:
    """Collects named stage durations.

    ``durations()`` gives seconds per stage (summed when a stage repeats) and ``total``: the
    span from the first stage's start to the last stage's end, so host work between stages
    (latent set-up, guidance bookkeeping) is counted in the total but in no stage.
    """

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self._use_cuda = self.device.type == "cuda"
        self._spans: list[_Span] = []

    def _mark(self) -> Any:
        if not self._use_cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record(torch.cuda.current_stream(self.device))
        return event

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the enclosed block as stage ``name`` (a stage that raises is not recorded)."""
        with record_function(STAGE_RANGE_PREFIX + name):
            start = self._mark()
            yield
            self._spans.append(_Span(name, start, self._mark()))

    def _seconds(self, start: Any, end: Any) -> float:
        if self._use_cuda:
            return start.elapsed_time(end) / 1000.0
        return float(end) - float(start)

    def durations(self) -> dict[str, float]:
        """Seconds per stage plus ``total`` (``{}`` plus ``total: 0.0`` if nothing was timed)."""
        if self._use_cuda and self._spans:
            self._spans[-1].end.synchronize()
        result: dict[str, float] = {}
        for span in self._spans:
            result[span.name] = result.get(span.name, 0.0) + self._seconds(span.start, span.end)
        result["total"] = (
            self._seconds(self._spans[0].start, self._spans[-1].end) if self._spans else 0.0
        )
        return result

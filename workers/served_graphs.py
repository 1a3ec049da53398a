"""The CUDA graphs a worker serves with, captured in warm-up for each padded batch size.

Three kinds, each keyed by its static shapes: the text encoder (token rows), the VAE decoder to
pixels (latent rows) and, for OLSS schedules only, the whole guided denoising loop per (batch,
size, schedule, guidance). An OLSS schedule is a fixed linear recipe (arXiv:2305.14677, Eq. 7):
its k steps make the same kernels with the same weights every run, with no host work between
them, so the loop can be captured; the diffusers samplers read device values on the host during
their steps (``devtools.host_sync``) and run eagerly. Mode ``step`` captures one graph per
denoising step, so progress and cancels still happen after every step; ``loop`` captures the
k steps as one graph, and the step hook runs once at the end.

Graphs are only made until ``freeze`` (the worker freezes them after warm-up), so a request for
an unwarmed shape runs eagerly instead of paying a capture. A capture that fails leaves that key
eager, with a warning naming it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

import torch
from diffusers import SchedulerMixin

from schedules import OLSSScheduler
from workers.device_graphs import CapturedLoop, CapturedStage
from workers.guided_step import GuidedStep

log = logging.getLogger(__name__)


class GraphMode(StrEnum):
    """``OLSS_CUDA_GRAPHS``: which graphs the worker captures."""

    OFF = "off"
    STEP = "step"
    LOOP = "loop"

    def segments(self, num_steps: int) -> list[range]:
        """The step ranges of the loop's graph segments."""
        if self is GraphMode.LOOP:
            return [range(num_steps)]
        return [range(i, i + 1) for i in range(num_steps)]


@dataclass(frozen=True)
class LoopKey:
    """What a captured denoising loop is fixed to."""

    rows: int
    height: int
    width: int
    schedule: str  # the scheduler's class and config (``inference.schedule_identity``)
    guidance_scale: float | None


T = TypeVar("T")


def graphable(scheduler: SchedulerMixin) -> bool:
    """Whether a scheduler's loop can be captured: OLSS, whose steps do no host work."""
    return isinstance(scheduler, OLSSScheduler)


class ServedGraphs:
    """Captured graphs by key for one device, made on first use until ``freeze``."""

    def __init__(self, device: torch.device, mode: GraphMode) -> None:
        if mode is GraphMode.OFF:
            raise ValueError("ServedGraphs needs mode step or loop")
        self.device = device
        self.mode = mode
        self._pool = torch.cuda.graph_pool_handle() if device.type == "cuda" else None
        self._made: dict[Hashable, Any] = {}
        self._frozen = False

    def freeze(self) -> None:
        """Make no new graphs: unwarmed shapes run eagerly from now on."""
        self._frozen = True

    @property
    def keys(self) -> list[Hashable]:
        """The keys with a graph (failed captures excluded)."""
        return [key for key, made in self._made.items() if made is not None]

    def _get(self, key: Hashable, make: Callable[[], T]) -> T | None:
        if key in self._made or self._frozen:
            return self._made.get(key)
        try:
            made: T | None = make()
        except RuntimeError as error:  # a capture that fails must not stop the worker
            log.warning("CUDA graph capture of %s failed, running it eagerly: %s", key, error)
            made = None
        self._made[key] = made
        return made

    def stage(
        self, name: str, fn: Callable[..., torch.Tensor], inputs: list[torch.Tensor]
    ) -> CapturedStage | None:
        """Stage ``name`` (``encode``, ``decode``) of ``fn`` for inputs shaped like ``inputs``."""
        key = (name, *((tuple(x.shape), x.dtype) for x in inputs))
        return self._get(key, lambda: CapturedStage(fn, inputs, self.device, self._pool))

    def loop(
        self,
        key: LoopKey,
        make_step: Callable[[], GuidedStep],
        latents: torch.Tensor,
        embeds: torch.Tensor,
    ) -> CapturedLoop | None:
        """The denoising loop for ``key``; ``make_step`` gives its step with a private
        scheduler (set for the run)."""

        def make() -> CapturedLoop:
            step = make_step()
            segments = self.mode.segments(len(step.scheduler.timesteps))
            return CapturedLoop(step, latents, embeds, segments, self.device, self._pool)

        return self._get(("loop", key), make)

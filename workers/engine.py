"""The inference engine as the worker's parts see it, without torch, so a fake can stand in.

``workers.serving_engine.ServingEngine`` is the real one: a diffusers pipeline and the
schedulers it serves.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from PIL import Image

from olss_core.metrics import Stage
from olss_core.protocol import JobSpec


class StepHook(Protocol):
    """``(step done, total steps, latents after it)`` -> True to keep going, False to stop the
    whole batch. ``latents`` (the batch's rows, a tensor) is ``None`` where the engine has none
    to show (a fake engine)."""

    def __call__(self, step: int, total: int, latents: Any = None) -> bool: ...


class BatchInterrupted(Exception):
    """The step hook stopped the batch (every job in it was canceled)."""


@dataclass(frozen=True)
class BatchOutput:
    """Images per job (in job order) and the batch's seconds per stage (``Stage.TOTAL``: the
    span from the first stage's start to the last one's end)."""

    images: list[list[Image.Image]]
    durations: Mapping[Stage, float]


@dataclass(frozen=True)
class Generation:
    """A batch's output and what made it: an OLSS schedule's name or a sampler's name."""

    schedule: str
    output: BatchOutput


class Engine(Protocol):
    """Runs one batch of compatible jobs with the scheduler their specs name."""

    @property
    def native_size(self) -> tuple[int, int]:
        """(width, height) the model was trained at."""
        ...

    def generate(self, specs: Sequence[JobSpec], on_step: StepHook | None = None) -> Generation:
        """Every image of ``specs`` in one call; ``on_step`` runs after each denoising step and
        may stop the batch (``BatchInterrupted``)."""
        ...

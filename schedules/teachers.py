"""Teacher samplers by spec: ``"dpmsolver++3m:250"`` (the default), ``"ddim:100"``, ``"euler:50"``.

A teacher is any diffusers scheduler run for T steps; OLSS (arXiv:2305.14677) distils it, and
can come no closer to the model's exact sampling path than its teacher (the paper's default,
DDIM with T=100, is a floor OLSS hits at 5 steps: ``docs/BENCHMARKS.md``). Names are those of
:data:`olss_core.samplers.SAMPLERS`; a sampler marked ``to_zero`` runs on T timesteps spaced
evenly from the last training timestep down to 0 (:func:`to_zero_timesteps`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from olss_core.samplers import SAMPLERS
from schedules.samplers import build_sampler

DEFAULT_TEACHER = "dpmsolver++3m:250"
DEFAULT_TEACHER_STEPS = 100
"""T for a spec without ``:T`` and for a scheduler instance."""


@dataclass(frozen=True)
class Teacher:
    """A teacher sampler and how to run it.

    Args:
        scheduler: the diffusers scheduler.
        num_steps: T, its number of steps.
        timesteps: explicit timesteps to run on (``set_timesteps(timesteps=...)``), or ``None``
            for ``set_timesteps(num_steps)``.
    """

    scheduler: Any
    num_steps: int
    timesteps: list[int] | None = None

    def run_kwargs(self) -> dict[str, Any]:
        """The pipeline / :func:`schedules.sampling.run_sampler` keyword: ``timesteps`` or
        ``num_inference_steps``."""
        if self.timesteps is not None:
            return {"timesteps": list(self.timesteps)}
        return {"num_inference_steps": self.num_steps}


def to_zero_timesteps(num_steps: int, num_train_timesteps: int) -> list[int]:
    """T integer timesteps from ``num_train_timesteps - 1`` down to 0, evenly spaced (rounded)."""
    grid = np.linspace(num_train_timesteps - 1, 0, num_steps).round().astype(int)
    timesteps = sorted({int(t) for t in grid}, reverse=True)
    if len(timesteps) != num_steps:
        raise ValueError(
            f"a teacher of {num_steps} steps needs at most {num_train_timesteps} distinct timesteps"
        )
    return timesteps


def parse_teacher(
    teacher: str | Any, base_config: Mapping[str, Any], teacher_steps: int | None = None
) -> Teacher:
    """A :class:`Teacher` from a spec ``"name:T"`` or a scheduler instance.

    Args:
        teacher: ``"name:T"`` (name one of :data:`olss_core.samplers.SAMPLERS`; ``:T`` defaults
            to 100) or a diffusers scheduler instance (then T is ``teacher_steps``, default 100).
        base_config: the model's scheduler config (betas, prediction type, ...).
        teacher_steps: T for a scheduler instance.
    """
    if not isinstance(teacher, str):
        if not hasattr(teacher, "step") or not hasattr(teacher, "set_timesteps"):
            raise ValueError(
                f"teacher must be a spec like '{DEFAULT_TEACHER}' or a scheduler, got {teacher!r}"
            )
        return Teacher(teacher, int(teacher_steps or DEFAULT_TEACHER_STEPS))
    name, _, steps = teacher.strip().partition(":")
    name = name.lower()
    if name not in SAMPLERS:
        raise ValueError(
            f"unknown teacher {name!r} in {teacher!r}; choose one of {', '.join(SAMPLERS)} "
            f"(e.g. '{DEFAULT_TEACHER}')"
        )
    try:
        num_steps = int(steps) if steps else DEFAULT_TEACHER_STEPS
    except ValueError:
        raise ValueError(f"teacher step count must be an integer, got {teacher!r}") from None
    if num_steps < 1:
        raise ValueError(f"teacher step count must be positive, got {teacher!r}")
    scheduler = build_sampler(name, base_config)
    timesteps = None
    if SAMPLERS[name].to_zero:
        timesteps = to_zero_timesteps(num_steps, int(scheduler.config.num_train_timesteps))
    return Teacher(scheduler, num_steps, timesteps)

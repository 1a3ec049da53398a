"""Teacher samplers by spec: ``"ddim:100"``, ``"dpmsolver++:50"``, ``"euler:50"``, ``"unipc:20"``.

A teacher is any diffusers scheduler run for T steps; OLSS (arXiv:2305.14677) distils it. The
paper's default teacher is DDIM with T=100. Names are those of :data:`olss_core.samplers.SAMPLERS`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from olss_core.samplers import SAMPLERS
from schedules.samplers import build_sampler

DEFAULT_TEACHER = "ddim:100"


def parse_teacher(
    teacher: str | Any, base_config: Mapping[str, Any], teacher_steps: int | None = None
) -> tuple[Any, int]:
    """A ``(scheduler, T)`` pair from a spec ``"name:T"`` or a scheduler instance.

    Args:
        teacher: ``"name:T"`` (name one of :data:`olss_core.samplers.SAMPLERS`; ``:T`` defaults
            to 100) or a diffusers scheduler instance (then T is ``teacher_steps``, default 100).
        base_config: the model's scheduler config (betas, prediction type, ...).
        teacher_steps: T for a scheduler instance.
    """
    if not isinstance(teacher, str):
        if not hasattr(teacher, "step") or not hasattr(teacher, "set_timesteps"):
            raise ValueError(
                f"teacher must be a spec like 'ddim:100' or a scheduler, got {teacher!r}"
            )
        return teacher, int(teacher_steps or 100)
    name, _, steps = teacher.strip().partition(":")
    name = name.lower()
    if name not in SAMPLERS:
        raise ValueError(
            f"unknown teacher {name!r} in {teacher!r}; choose one of {', '.join(SAMPLERS)} "
            "(e.g. 'ddim:100')"
        )
    try:
        num_steps = int(steps) if steps else 100
    except ValueError:
        raise ValueError(f"teacher step count must be an integer, got {teacher!r}") from None
    if num_steps < 1:
        raise ValueError(f"teacher step count must be positive, got {teacher!r}")
    return build_sampler(name, base_config), num_steps

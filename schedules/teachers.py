"""Teacher samplers by name: ``"ddim:100"``, ``"dpmsolver++:50"``, ``"euler:50"``, ``"unipc:20"``.

A teacher is any diffusers scheduler run for T steps; OLSS (arXiv:2305.14677) distils it. The
paper's default teacher is DDIM with T=100.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    UniPCMultistepScheduler,
)

DEFAULT_TEACHER = "ddim:100"

TEACHERS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "ddim": lambda config: DDIMScheduler.from_config(config),
    "dpmsolver++": lambda config: DPMSolverMultistepScheduler.from_config(
        config, algorithm_type="dpmsolver++", solver_order=2
    ),
    "euler": lambda config: EulerDiscreteScheduler.from_config(config),
    "unipc": lambda config: UniPCMultistepScheduler.from_config(config),
}


def parse_teacher(
    teacher: str | Any, base_config: dict[str, Any], teacher_steps: int | None = None
) -> tuple[Any, int]:
    """A ``(scheduler, T)`` pair from a spec ``"name:T"`` or a scheduler instance.

    Args:
        teacher: ``"name:T"`` (name one of :data:`TEACHERS`; ``:T`` defaults to 100) or a
            diffusers scheduler instance (then T is ``teacher_steps``, default 100).
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
    if name not in TEACHERS:
        raise ValueError(
            f"unknown teacher {name!r} in {teacher!r}; choose one of {', '.join(TEACHERS)} "
            "(e.g. 'ddim:100')"
        )
    try:
        num_steps = int(steps) if steps else 100
    except ValueError:
        raise ValueError(f"teacher step count must be an integer, got {teacher!r}") from None
    if num_steps < 1:
        raise ValueError(f"teacher step count must be positive, got {teacher!r}")
    return TEACHERS[name](dict(base_config)), num_steps

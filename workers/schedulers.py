"""Scheduler name -> scheduler instance for a worker's pipeline; ``olss`` comes from the registry.

Each instance is made once and reused: every pipeline call starts with ``set_timesteps``,
which resets a scheduler's per-run state.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    SchedulerMixin,
    UniPCMultistepScheduler,
)

from olss_core.protocol import ScheduleInfo
from olss_core.samplers import SCHEDULER_NAMES
from schedules import OLSSScheduler, Schedule, ScheduleRegistry

PREFERRED_STEPS = 5

_DIFFUSERS: dict[str, tuple[type[SchedulerMixin], dict[str, Any]]] = {
    "dpmsolver++": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++"}),
    "unipc": (UniPCMultistepScheduler, {}),
    "ddim": (DDIMScheduler, {}),
    "euler": (EulerDiscreteScheduler, {}),
}


class UnknownSchedule(LookupError):
    """No scheduler or OLSS schedule for a job; the message lists what is served."""


def load_model_schedules(registry: ScheduleRegistry, model_key: str) -> list[Schedule]:
    """One schedule per (steps, guidance) the registry holds for ``model_key`` (its best)."""
    pairs = sorted({(e.steps, e.guidance) for e in registry.list() if e.model == model_key})
    return [registry.get(model_key, steps, guidance) for steps, guidance in pairs]


class SchedulerBank:
    """The schedulers a worker serves for one pipeline."""

    def __init__(self, base_config: Mapping[str, Any], schedules: list[Schedule]) -> None:
        self._diffusers = {
            name: cls.from_config(dict(base_config), **overrides)
            for name, (cls, overrides) in _DIFFUSERS.items()
        }
        self._olss = {
            (s.num_steps, s.guidance_scale): (s.name, OLSSScheduler.from_schedule(s))
            for s in schedules
        }
        self.schedules = [
            ScheduleInfo(name=s.name, steps=s.num_steps, guidance_scale=s.guidance_scale)
            for s in schedules
        ]

    @property
    def names(self) -> list[str]:
        return list(SCHEDULER_NAMES)

    def default_schedule(self, guidance_scale: float) -> ScheduleInfo | None:
        """5 steps at ``guidance_scale`` if calibrated, else the nearest to that."""
        if not self.schedules:
            return None
        return min(
            self.schedules,
            key=lambda s: (
                s.steps != PREFERRED_STEPS,
                abs(s.guidance_scale - guidance_scale),
                s.steps,
            ),
        )

    def get(self, name: str, steps: int, guidance_scale: float) -> tuple[str, SchedulerMixin]:
        """``(label, scheduler)``: the OLSS schedule's name, or the diffusers scheduler's name."""
        if name == "olss":
            found = self._olss.get((steps, guidance_scale))
            if found is None:
                available = ", ".join(f"{s.steps}@{s.guidance_scale:g}" for s in self.schedules)
                raise UnknownSchedule(
                    f"no OLSS schedule with steps={steps} guidance_scale={guidance_scale:g}; "
                    f"served: {available or 'none'}"
                )
            return found
        if name not in self._diffusers:
            raise UnknownSchedule(f"unknown scheduler {name!r}; served: {self.names}")
        return name, self._diffusers[name]

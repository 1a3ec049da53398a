"""Scheduler name -> scheduler instance for a worker's pipeline; ``olss`` comes from the registry.

The diffusers samplers are the ones of ``olss_core.samplers.SAMPLERS``, built on the pipeline's
own scheduler config. An OLSS request gets the schedule with exactly its step count and the
calibrated guidance nearest to its own (``olss_core.guidance.nearest_guidance``). Each instance
is made once and reused: every pipeline call starts with ``set_timesteps``, which resets a
scheduler's per-run state.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from diffusers import SchedulerMixin

from olss_core.guidance import nearest_guidance
from olss_core.protocol import ScheduleInfo
from olss_core.samplers import OLSS, SAMPLERS, SCHEDULER_NAMES
from schedules import OLSSScheduler, Schedule, ScheduleRegistry
from schedules.samplers import build_sampler

PREFERRED_STEPS = 5


class UnknownSchedule(LookupError):
    """No scheduler or OLSS schedule for a job; the message lists what is served."""


def load_model_schedules(registry: ScheduleRegistry, model_key: str) -> list[Schedule]:
    """One schedule per (steps, guidance) the registry holds for ``model_key`` (its best)."""
    pairs = sorted({(e.steps, e.guidance) for e in registry.list() if e.model == model_key})
    return [registry.get(model_key, steps, guidance) for steps, guidance in pairs]


class SchedulerBank:
    """The schedulers a worker serves for one pipeline."""

    def __init__(self, base_config: Mapping[str, Any], schedules: list[Schedule]) -> None:
        self._samplers = {name: build_sampler(name, base_config) for name in SAMPLERS}
        self._olss: dict[int, dict[float, tuple[str, OLSSScheduler]]] = {}
        for s in schedules:
            by_guidance = self._olss.setdefault(s.num_steps, {})
            by_guidance[s.guidance_scale] = (s.name, OLSSScheduler.from_schedule(s))
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
        """``(label, scheduler)``: the OLSS schedule's name, or the diffusers sampler's name."""
        if name == OLSS:
            by_guidance = self._olss.get(steps, {})
            guidance = nearest_guidance(by_guidance, guidance_scale)
            if guidance is None:
                available = ", ".join(f"{s.steps}@{s.guidance_scale:g}" for s in self.schedules)
                raise UnknownSchedule(
                    f"no OLSS schedule with steps={steps} near guidance_scale={guidance_scale:g}; "
                    f"served: {available or 'none'}"
                )
            return by_guidance[guidance]
        sampler = self._samplers.get(name)
        if sampler is None:
            raise UnknownSchedule(f"unknown scheduler {name!r}; served: {self.names}")
        return name, sampler

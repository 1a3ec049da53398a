"""Scheduler name -> scheduler instance for a worker's pipeline; ``olss`` comes from the registry.

The diffusers samplers are the ones of ``olss_core.samplers.SAMPLERS``, built on the pipeline's
own scheduler config. An OLSS request gets a schedule with exactly its step count at its own
guidance scale, when that step count serves it (``olss_core.guidance.serves_guidance``): the
calibrated schedule, a blend of the two calibrated around it, or the nearest
(``schedules.guidance_blend.schedule_for_guidance``); the label says which. A schedule whose
recorded held-out error is worse than its best peer's is still listed, but its requests get that
peer sampler (the label says why). Each instance is made once and reused (the blends: the most
recent :data:`BLEND_CACHE_SIZE`): every pipeline call starts with ``set_timesteps``, which
resets a scheduler's per-run state.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from typing import Any

from diffusers import SchedulerMixin

from olss_core.guidance import served_guidance, serves_guidance
from olss_core.protocol import ScheduleInfo
from olss_core.samplers import OLSS, PEERS, SAMPLERS, SCHEDULER_NAMES
from schedules import OLSSScheduler, Schedule, ScheduleRegistry
from schedules.guidance_blend import GuidanceChoice, schedule_for_guidance
from schedules.registry import ScheduleNotFound
from schedules.samplers import build_sampler
from schedules.schedule_file import ScheduleFileError

PREFERRED_STEPS = 5
BLEND_CACHE_SIZE = 64
"""Blended OLSS schedulers kept per worker (keyed by steps and the guidance rounded to
:data:`GUIDANCE_DECIMALS` places)."""
GUIDANCE_DECIMALS = 3

log = logging.getLogger(__name__)


class UnknownSchedule(LookupError):
    """No scheduler or OLSS schedule for a job; the message lists what is served."""


def load_model_schedules(
    registry: ScheduleRegistry, model_key: str, identity: str | None = None
) -> list[Schedule]:
    """One schedule per (steps, guidance) the registry holds for ``model_key`` (its best); with
    ``identity``, only files for it or for no identity (``RegistryEntry.serves``). A file that
    turns bad between listing and loading is skipped with a warning."""
    pairs = sorted({(e.steps, e.guidance) for e in registry.list()
                    if e.serves(model_key, identity)})
    schedules = []
    for steps, guidance in pairs:
        try:
            schedules.append(registry.get(model_key, steps, guidance, identity=identity))
        except (ScheduleFileError, ScheduleNotFound) as error:
            log.warning("skipping the OLSS schedule for %d steps at guidance %g: %s",
                        steps, guidance, error)
    return schedules


def peer_instead(schedule: Schedule) -> str | None:
    """The served sampler to use instead of ``schedule``: its best held-out peer, when that
    peer's recorded error is lower than the schedule's and the worker serves it."""
    heldout = schedule.fit_report.heldout
    if heldout is None or not heldout.worse_than_best_peer:
        return None
    name, _ = heldout.best_peer  # type: ignore[misc]  # worse_than_best_peer: there is one
    sampler = PEERS.get(name)  # the fit report's name for it, e.g. "dpmsolver++(2M)"
    return sampler if sampler in SAMPLERS else None


class SchedulerBank:
    """The schedulers a worker serves for one pipeline."""

    def __init__(self, base_config: Mapping[str, Any], schedules: list[Schedule],
                 fallback: str | None = None) -> None:
        """``fallback``: the sampler an OLSS request gets when no schedule serves it
        (``workers.self_calibration``: auto-calibration off or failed); ``None`` refuses it."""
        self._samplers = {name: build_sampler(name, base_config) for name in SAMPLERS}
        self.fallback = fallback
        self._olss: dict[int, list[Schedule]] = {}
        for s in sorted(schedules, key=lambda s: (s.num_steps, s.guidance_scale)):
            self._olss.setdefault(s.num_steps, []).append(s)
        self._exact = {
            (s.num_steps, s.guidance_scale): OLSSScheduler.from_schedule(s) for s in schedules
        }
        for s in schedules:
            peer = peer_instead(s)
            if peer is not None and s.fit_report.heldout is not None:
                log.warning("OLSS schedule %s is worse on held-out examples than %s (%s): "
                            "its requests get %s", s.name, peer, s.fit_report.heldout.note, peer)
        self.schedules = [self._info(s) for s in schedules]
        self._blended = functools.lru_cache(maxsize=BLEND_CACHE_SIZE)(self._blend)

    def _info(self, schedule: Schedule) -> ScheduleInfo:
        calibrated = [s.guidance_scale for s in self._olss[schedule.num_steps]]
        low, high = served_guidance(calibrated) or (schedule.guidance_scale,) * 2
        return ScheduleInfo(name=schedule.name, steps=schedule.num_steps,
                            guidance_scale=schedule.guidance_scale, served_guidance=[low, high])

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
        """``(label, scheduler)``: for OLSS, the schedule's name (and, off the calibrated
        scales, how it was made); else the diffusers sampler's name."""
        if name == OLSS:
            calibrated = self._olss.get(steps, [])
            if not serves_guidance((s.guidance_scale for s in calibrated), guidance_scale):
                if self.fallback is not None:
                    return (f"{self.fallback} (OLSS fallback: no schedule for steps={steps} "
                            f"guidance_scale={guidance_scale:g})",
                            self._samplers[self.fallback])
                available = ", ".join(f"{s.steps}@{s.guidance_scale:g}" for s in self.schedules)
                raise UnknownSchedule(
                    f"no OLSS schedule with steps={steps} serving "
                    f"guidance_scale={guidance_scale:g}; served: {available or 'none'}"
                )
            return self._blended(steps, round(guidance_scale, GUIDANCE_DECIMALS))
        sampler = self._samplers.get(name)
        if sampler is None:
            raise UnknownSchedule(f"unknown scheduler {name!r}; served: {self.names}")
        return name, sampler

    def _blend(self, steps: int, guidance: float) -> tuple[str, SchedulerMixin]:
        """The OLSS scheduler for ``steps`` at ``guidance`` (cached by ``get``)."""
        choice = schedule_for_guidance(self._olss[steps], guidance)
        peer = self._peer_for(choice)
        if peer is not None:
            return f"{peer} (instead of {choice.schedule.name}: {choice.label}, worse than " \
                   f"{peer} on held-out examples)", self._samplers[peer]
        schedule = choice.schedule
        exact = self._exact.get((steps, schedule.guidance_scale))
        if exact is not None and not choice.blended:
            label = schedule.name
            if abs(schedule.guidance_scale - guidance) > 1e-9:
                label = f"{schedule.name} ({choice.label})"
            return label, exact
        return f"{schedule.name} ({choice.label})", OLSSScheduler.from_schedule(schedule)

    def _peer_for(self, choice: GuidanceChoice) -> str | None:
        """A peer to serve instead of ``choice``: the peer of the calibrated schedule it is
        (or, for a blend, of the calibrated neighbour nearest its guidance)."""
        if not choice.blended:
            return peer_instead(choice.schedule)
        calibrated = self._olss[choice.schedule.num_steps]
        g = choice.schedule.guidance_scale
        nearest = min(calibrated, key=lambda s: (abs(s.guidance_scale - g), s.guidance_scale))
        return peer_instead(nearest)

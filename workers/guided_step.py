"""One denoising step of classifier-free guided sampling, as the worker serves it.

A step is the body of ``StableDiffusionPipeline.__call__``'s loop (and SDXL's, whose UNet also
takes the pooled text embeddings and micro-conditioning as ``added_cond_kwargs``): the UNet on the
latents doubled (``[x, x]`` against ``[negative, positive]`` conditioning), the guided output
``eps_u + g (eps_c - eps_u)`` (Ho & Salimans, 2022, eq. 6), then ``scheduler.step``. The rule is
linear in the network output, so it guides ``v`` (SD 2.x's 768 models) as it guides ``eps``; the
scheduler reads its ``prediction_type``. Each phase
runs under a ``torch.profiler.record_function`` range (:data:`PHASES`), so a profile splits a
step into UNet, guidance arithmetic and scheduler work; outside a profile a range costs about a
microsecond.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers import SchedulerMixin, UNet2DConditionModel
from torch.profiler import record_function

from workers.stage_timer import STAGE_RANGE_PREFIX
from workers.text_encoding import Conditioning

UNET_PHASE = STAGE_RANGE_PREFIX + "unet"
GUIDANCE_PHASE = STAGE_RANGE_PREFIX + "guidance"
SCHEDULER_PHASE = STAGE_RANGE_PREFIX + "scheduler"
PHASES = (UNET_PHASE, GUIDANCE_PHASE, SCHEDULER_PHASE)
"""Profiler range names of a step's phases, in order."""


@dataclass(frozen=True)
class GuidedStep:
    """``step(latents, t, cond) -> latents`` for one UNet and scheduler.

    Args:
        unet: the pipeline's UNet (compiled or not).
        scheduler: any diffusers scheduler, its timesteps set for this run.
        guidance_scale: ``g``; ``None`` runs the UNet once on the latents (no guidance).
        timestep_cond: the guidance embedding of guidance-distilled UNets
            (``time_cond_proj_dim``), else ``None``.
        extra_step_kwargs: ``scheduler.step``'s extra arguments (:func:`extra_step_kwargs`).
    """

    unet: UNet2DConditionModel
    scheduler: SchedulerMixin
    guidance_scale: float | None
    timestep_cond: torch.Tensor | None = None
    extra_step_kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __call__(
        self, latents: torch.Tensor, t: torch.Tensor, cond: Conditioning
    ) -> torch.Tensor:
        guided = self.guidance_scale is not None
        with record_function(UNET_PHASE):
            model_input = torch.cat([latents] * 2) if guided else latents
            model_input = self.scheduler.scale_model_input(model_input, t)
            noise_pred = self.unet(
                model_input,
                t,
                encoder_hidden_states=cond.hidden,
                timestep_cond=self.timestep_cond,
                added_cond_kwargs=cond.added_cond_kwargs,
                return_dict=False,
            )[0]
        if guided:
            with record_function(GUIDANCE_PHASE):
                uncond, text = noise_pred.chunk(2)
                noise_pred = uncond + self.guidance_scale * (text - uncond)
        with record_function(SCHEDULER_PHASE):
            return self.scheduler.step(
                noise_pred, t, latents, **self.extra_step_kwargs, return_dict=False
            )[0]


def run_steps(
    step: GuidedStep, latents: torch.Tensor, cond: Conditioning, steps: range
) -> torch.Tensor:
    """Steps ``steps`` (indices into the scheduler's timesteps) from ``latents``."""
    timesteps = step.scheduler.timesteps
    for i in steps:
        latents = step(latents, timesteps[i], cond)
    return latents


def extra_step_kwargs(
    scheduler: SchedulerMixin, generator: Any, eta: float = 0.0
) -> dict[str, Any]:
    """``eta`` and ``generator`` for schedulers whose ``step`` takes them (DDIM, DPM-Solver's
    SDE variants), as ``StableDiffusionPipeline.prepare_extra_step_kwargs`` passes them."""
    parameters = inspect.signature(scheduler.step).parameters
    kwargs: dict[str, Any] = {}
    if "eta" in parameters:
        kwargs["eta"] = eta
    if "generator" in parameters:
        kwargs["generator"] = generator
    return kwargs

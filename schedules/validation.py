"""Held-out validation: OLSS vs the teacher and vs diffusers samplers at the same step count.

On examples the fit did not see, every sampler starts from the teacher's initial noise and runs
the standard diffusers loop (``set_timesteps``, ``scale_model_input``, model, ``step``); its final
sample is compared with the teacher's by the relative RMS error ``||x - x_T|| / ||x_T||``. Peers
are DPM-Solver++(2M) (Lu et al., arXiv:2211.01095) and UniPC (Zhao et al., arXiv:2302.04867),
built from the teacher's config.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler

from schedules.fit import ModelFn
from schedules.schedule_file import HeldoutReport, Schedule
from schedules.scheduler import OLSSScheduler
from schedules.trajectory import Trajectories

ERROR_CAP = 1e300
"""A diverged sampler's error (JSON has no infinity)."""

PEERS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "dpmsolver++(2M)": lambda config: DPMSolverMultistepScheduler.from_config(
        config, algorithm_type="dpmsolver++", solver_order=2
    ),
    "unipc": lambda config: UniPCMultistepScheduler.from_config(config),
}


def relative_error(sample: torch.Tensor, reference: torch.Tensor) -> float:
    """``||sample - reference|| / ||reference||`` in float64 over all examples and elements
    (:data:`ERROR_CAP` if non-finite)."""
    sample = sample.detach().to("cpu", torch.float64)
    reference = reference.detach().to("cpu", torch.float64)
    error = float((sample - reference).norm() / reference.norm().clamp_min(1e-300))
    return error if math.isfinite(error) else ERROR_CAP


def run_sampler(
    scheduler: Any, noise: torch.Tensor, num_steps: int, model_fn: ModelFn
) -> torch.Tensor:
    """The standard diffusers sampling loop from unit ``noise``; returns the final sample."""
    scheduler.set_timesteps(num_steps)
    sample = noise * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        value = float(t)
        model_input = scheduler.scale_model_input(sample, t)
        output = model_fn(model_input, int(value) if value.is_integer() else value)
        output = torch.as_tensor(output).to(sample.device, sample.dtype)
        sample = scheduler.step(output, t, sample).prev_sample
    return sample


def heldout_report(
    schedule: Schedule,
    traj: Trajectories,
    model_fn: ModelFn,
    peers: dict[str, Callable[[dict[str, Any]], Any]] | None = None,
) -> HeldoutReport:
    """Run OLSS and each peer on held-out teacher trajectories; say plainly who is best.

    Args:
        schedule: the fitted schedule.
        traj: teacher trajectories of examples the fit did not use.
        model_fn: guided model for the N examples of ``traj``, in recorded order.
        peers: name -> factory building a diffusers scheduler from the teacher's config.
    """
    peers = PEERS if peers is None else peers
    k = schedule.num_steps
    noise = traj.samples[0].to(torch.float32) / traj.init_noise_sigma
    target = traj.samples[-1]
    olss = run_sampler(OLSSScheduler.from_schedule(schedule), noise, k, model_fn)
    errors = {"olss": relative_error(olss, target)}
    for name, factory in peers.items():
        final = run_sampler(factory(dict(schedule.teacher.config)), noise, k, model_fn)
        errors[name] = relative_error(final, target)
    best = min(errors, key=errors.__getitem__)
    peer_text = ", ".join(f"{name} {err:.3g}" for name, err in errors.items() if name != "olss")
    if best == "olss":
        note = (
            f"OLSS is the best at {k} steps: held-out error {errors['olss']:.3g} vs the teacher "
            f"({peer_text})."
        )
    else:
        note = (
            f"OLSS is NOT the best at {k} steps: {best} has a lower held-out error "
            f"({errors[best]:.3g} vs OLSS {errors['olss']:.3g}; {peer_text})."
        )
    return HeldoutReport(
        num_examples=traj.num_examples,
        olss_error=errors.pop("olss"),
        peer_errors=errors,
        best=best,
        note=note,
    )

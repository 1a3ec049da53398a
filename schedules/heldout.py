"""Held-out validation: OLSS vs the teacher and vs diffusers samplers at the same step count.

On examples the fit did not see, every sampler starts from the teacher's initial noise and runs
the standard diffusers loop (:func:`schedules.sampling.run_sampler`); its final sample is
compared with the teacher's by the relative RMS error ``||x - x_T|| / ||x_T||`` over all
examples, and OLSS's also example by example (mean, 95th percentile, worst condition). Peers
(:data:`olss_core.samplers.PEERS`) are DPM-Solver++(2M) (Lu et al., arXiv:2211.01095) and UniPC
(Zhao et al., arXiv:2302.04867), built from the teacher's config.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from olss_core.samplers import PEERS
from schedules.error_stats import ERROR_CAP, error_stats
from schedules.samplers import build_sampler
from schedules.sampling import ModelFn, run_sampler
from schedules.schedule_file import HeldoutReport, Schedule
from schedules.scheduler import OLSSScheduler
from schedules.trajectory import Trajectories


def example_errors(sample: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per example, ``||x_n - x_ref,n|| / ||x_ref,n||`` in float64."""
    sample = sample.detach().to("cpu", torch.float64).reshape(len(sample), -1)
    reference = reference.detach().to("cpu", torch.float64).reshape(len(reference), -1)
    return (sample - reference).norm(dim=1) / reference.norm(dim=1).clamp_min(1e-300)


def relative_error(sample: torch.Tensor, reference: torch.Tensor) -> float:
    """``||sample - reference|| / ||reference||`` in float64 over all examples and elements
    (:data:`ERROR_CAP` if non-finite)."""
    sample = sample.detach().to("cpu", torch.float64)
    reference = reference.detach().to("cpu", torch.float64)
    error = float((sample - reference).norm() / reference.norm().clamp_min(1e-300))
    return error if math.isfinite(error) else ERROR_CAP


def heldout_report(
    schedule: Schedule,
    traj: Trajectories,
    model_fn: ModelFn,
    peers: Mapping[str, str] = PEERS,
) -> HeldoutReport:
    """Run OLSS and each peer on held-out teacher trajectories; say plainly who is best.

    Args:
        schedule: the fitted schedule.
        traj: teacher trajectories of examples the fit did not use.
        model_fn: guided model for the N examples of ``traj``, in recorded order.
        peers: report name -> sampler name (:func:`schedules.samplers.build_sampler`), each
            built from the teacher's config.
    """
    k = schedule.num_steps
    noise = traj.samples[0].to(torch.float32) / traj.init_noise_sigma
    target = traj.samples[-1]
    olss = run_sampler(OLSSScheduler.from_schedule(schedule), model_fn, noise, k)
    errors = {"olss": relative_error(olss, target)}
    stats = error_stats(example_errors(olss, target).numpy(), traj.condition_labels())
    for name, sampler in peers.items():
        peer = build_sampler(sampler, schedule.teacher.config)
        errors[name] = relative_error(run_sampler(peer, model_fn, noise, k), target)
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
        olss_stats=stats,
    )

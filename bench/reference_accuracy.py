"""How accurate is the reference of ``bench/olss_quality.py``? An adaptive ODE solution says.

``bench/olss_quality.py`` scores every sampler against DPM-Solver++(3M) at 1000 trailing steps
(every integer timestep down to t = 0, then the step to sigma = 0, which returns the model's
``x_0`` prediction). Its "reference check", DPM-Solver++(2M) at 1000 steps, only bounds the
reference's error from above. Here the same target is computed independently: the probability
flow ODE of the exact mixture from t = 999 to t = 0 by an adaptive 8th-order Runge-Kutta
method (Dormand-Prince DOP853, ``scipy.integrate.solve_ivp``) at a tight tolerance, then the
same ``x_0`` step. In the variables of Karras et al. (2022, eq. 4), ``x~ = x / sqrt(abar)`` and
``sigma~ = sqrt((1 - abar) / abar)``, the ODE is ``dx~/dsigma~ = eps(x, t)``; it is integrated
in ``u = log sigma~`` (``dx~/du = sigma~ eps``), with ``t(sigma~)`` the inverse of the
testbed's log-SNR interpolation (``devtools.analytic.alpha_bar_at``), so the ODE's schedule is
the model's own.

Each row is a run's mean relative L2 error to the ODE solution, and to the 1000-step reference:

    python -m bench.reference_accuracy --mixture sharp-d64 --guidance 7.5 --examples 16
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import DPMSolverMultistepScheduler
from scipy.integrate import solve_ivp

from bench.olss_quality import MIXTURES, BenchConfig, Testbed, mean_relative_error, sd_scheduler
from devtools.analytic import alpha_bar_at, sd_alphas_cumprod
from schedules.sampling import run_sampler

FIRST_T, LAST_T = 999, 0


@dataclass(frozen=True)
class OdeSolution:
    """The ODE's final samples (after the ``x_0`` step) and what the solver spent."""

    samples: torch.Tensor
    evaluations: int
    seconds: float


def solve_probability_flow(bed: Testbed, rtol: float, atol: float) -> OdeSolution:
    """The held-out noises of ``bed`` carried from ``FIRST_T`` to ``LAST_T`` by DOP853, then
    to sigma = 0 by the guided ``x_0`` prediction (as the diffusers solvers end)."""
    table = sd_alphas_cumprod()
    log_sigma = (0.5 * torch.log((1 - table) / table)).numpy()  # increasing in t
    steps = np.arange(table.numel(), dtype=np.float64)
    noise = bed.heldout_noise
    shape = noise.shape

    def abar(t: float) -> float:
        return float(alpha_bar_at(torch.tensor([t]), table)[0])

    def guided_eps(x: torch.Tensor, t: float) -> torch.Tensor:
        return torch.as_tensor(bed.heldout_fn(x, torch.tensor(t))).to(torch.float64)

    def rhs(u: float, y: np.ndarray) -> np.ndarray:
        t = float(np.interp(u, log_sigma, steps))
        x = torch.from_numpy(y).reshape(shape) * math.sqrt(abar(t))
        return (math.exp(u) * guided_eps(x, t)).reshape(-1).numpy()

    start = time.perf_counter()
    y0 = (noise / math.sqrt(abar(FIRST_T))).reshape(-1).numpy()
    solution = solve_ivp(rhs, (log_sigma[FIRST_T], log_sigma[LAST_T]), y0, method="DOP853",
                         rtol=rtol, atol=atol)
    if solution.status != 0:
        raise RuntimeError(f"the ODE solver stopped: {solution.message}")
    end = abar(LAST_T)
    x = torch.from_numpy(solution.y[:, -1]).reshape(shape) * math.sqrt(end)
    x0 = (x - math.sqrt(1 - end) * guided_eps(x, LAST_T)) / math.sqrt(end)
    return OdeSolution(x0, int(solution.nfev), time.perf_counter() - start)


def dpm_solver(bed: Testbed, order: int, steps: int) -> torch.Tensor:
    """DPM-Solver++ of ``order`` at ``steps`` trailing steps, as the reference is run."""
    scheduler = sd_scheduler(DPMSolverMultistepScheduler, solver_order=order,
                             timestep_spacing="trailing", prediction_type="epsilon")
    return run_sampler(scheduler, bed.heldout_fn, bed.heldout_noise, steps)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mixture", choices=list(MIXTURES), default="sharp-d64")
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--examples", type=int, default=16, help="held-out noises")
    parser.add_argument("--rtol", type=float, default=1e-9)
    parser.add_argument("--atol", type=float, default=1e-12)
    args = parser.parse_args(argv)

    config = BenchConfig(mixtures=(args.mixture,), num_calibration=16,
                         num_heldout=args.examples)
    bed = Testbed(MIXTURES[args.mixture], args.guidance, config)
    ode = solve_probability_flow(bed, args.rtol, args.atol)
    runs = {
        "reference: DPM-Solver++(3M), 1000 steps": bed.reference,
        "reference check: DPM-Solver++(2M), 1000 steps": dpm_solver(bed, 2, 1000),
        f"teacher: {config.teacher}": run_sampler(
            bed.teacher.scheduler, bed.heldout_fn, bed.heldout_noise,
            **bed.teacher.run_kwargs()
        ),
    }
    print(f"{args.mixture}, guidance {args.guidance:g}, {args.examples} held-out noises; "
          f"DOP853 at rtol {args.rtol:g}: {ode.evaluations} evaluations, {ode.seconds:.0f} s")
    print("| run | error to the ODE solution | error to the reference |\n|---|---:|---:|")
    for name, samples in runs.items():
        print(f"| {name} | {mean_relative_error(samples, ode.samples):.2e} "
              f"| {mean_relative_error(samples, bed.reference):.2e} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

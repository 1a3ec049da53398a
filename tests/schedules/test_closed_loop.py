"""Closed-loop OLSS beats teacher-forced OLSS (and DPM-Solver++) where the latter diverges.

Testbed: a 16-d, 4-class Gaussian mixture with tight components and guidance 7.5
(:mod:`devtools.analytic`), teacher DPM-Solver++(3M) with 100 steps. The teacher-forced fit of
the paper (arXiv:2305.14677, Eq. 8) fits every step on the teacher's own outputs, so its errors
compound once the schedule runs on its own outputs; the closed-loop fit trains each step on the
schedule's own trajectory. All errors are measured on held-out noises that no fit saw.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler

from devtools.analytic import GaussianMixtureDiffusion, MixtureConfig, record_trajectories
from devtools.sd_configs import sd_scheduler
from schedules import OLSSScheduler, search
from schedules.sampling import ModelFn, run_sampler
from schedules.trajectory import Trajectories

GUIDANCE = 7.5
NUM_CALIBRATION = 256
NUM_HELDOUT = 128
TEACHER_TIMESTEPS = np.unique(np.linspace(999, 0, 100).round().astype(int))[::-1].tolist()

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Testbed:
    """Calibration trajectories, and held-out noises with their teacher samples."""

    def __init__(self) -> None:
        config = MixtureConfig(
            dim=16, num_classes=4, components_per_class=2, separation=3.0, component_std=0.3
        )
        model = GaussianMixtureDiffusion(config)
        labels = torch.arange(NUM_CALIBRATION + NUM_HELDOUT) % config.num_classes
        noise = torch.randn(
            len(labels), config.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(3)
        )
        self.cal_fn = model.model_fn(labels[:NUM_CALIBRATION], GUIDANCE)
        self.heldout_fn: ModelFn = model.model_fn(labels[NUM_CALIBRATION:], GUIDANCE)
        self.heldout_noise = noise[NUM_CALIBRATION:]
        self.traj: Trajectories = record_trajectories(
            self.teacher(), self.cal_fn, noise[:NUM_CALIBRATION], timesteps=TEACHER_TIMESTEPS
        )
        self.heldout_target = run_sampler(
            self.teacher(), self.heldout_fn, self.heldout_noise, timesteps=TEACHER_TIMESTEPS
        )

    @staticmethod
    def teacher() -> DPMSolverMultistepScheduler:
        return sd_scheduler(DPMSolverMultistepScheduler, solver_order=3)

    def error(self, sample: torch.Tensor) -> float:
        """Mean over held-out examples of ``||x - x_teacher|| / ||x_teacher||``."""
        diff = (sample - self.heldout_target).norm(dim=1)
        return float((diff / self.heldout_target.norm(dim=1)).mean())

    def olss_error(self, num_steps: int, method: str) -> tuple[float, float]:
        """Held-out error of a fitted schedule, and its own (calibration) final fit error."""
        schedule = search(self.traj, num_steps=num_steps, model_fn=self.cal_fn, method=method)
        scheduler = OLSSScheduler.from_schedule(schedule)
        out = run_sampler(scheduler, self.heldout_fn, self.heldout_noise, num_steps)
        return self.error(out), schedule.fit_report.step_errors[-1]


@pytest.fixture(scope="module")
def testbed(one_torch_thread: None) -> Testbed:
    return Testbed()


@pytest.mark.parametrize("num_steps", [4, 5])
def test_closed_loop_is_ten_times_better_where_teacher_forcing_goes_astray(
    testbed: Testbed, num_steps: int
) -> None:
    paper, paper_fit = testbed.olss_error(num_steps, "paper")
    closed, _ = testbed.olss_error(num_steps, "closed-loop")
    # Teacher-forced: small error on the teacher's own outputs, large once run on its own.
    assert paper > 0.15, f"paper method did not diverge here: {paper:.3g}"
    assert paper > 3 * paper_fit
    assert closed < 0.03
    assert closed < paper / 10, f"closed-loop {closed:.3g} vs paper {paper:.3g}"


def test_teacher_forcing_diverges_at_many_steps_and_closed_loop_does_not(testbed: Testbed) -> None:
    paper, _ = testbed.olss_error(15, "paper")
    closed, _ = testbed.olss_error(15, "closed-loop")
    assert paper > 0.3, f"paper method did not diverge at 15 steps: {paper:.3g}"
    assert closed < 0.01
    assert closed < paper / 50


def test_closed_loop_beats_dpm_solver_pp_2m_at_5_steps(testbed: Testbed) -> None:
    closed, _ = testbed.olss_error(5, "closed-loop")
    dpm = sd_scheduler(DPMSolverMultistepScheduler, algorithm_type="dpmsolver++", solver_order=2)
    peer = testbed.error(run_sampler(dpm, testbed.heldout_fn, testbed.heldout_noise, 5))
    assert closed < 0.25 * peer, f"OLSS closed-loop {closed:.3g} vs DPM-Solver++(2M) {peer:.3g}"

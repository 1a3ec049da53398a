"""Fixtures for the schedules tests: an exact-score toy diffusion model, the tiny pipeline."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from diffusers import DDIMScheduler

from schedules.schedule_file import FitReport, HeldoutReport, Schedule, TeacherInfo
from schedules.trajectory import Trajectories, TrajectoryRecorder

SD_BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


class MixtureEps:
    """Exact noise prediction for data whose elements are 0.5 N(-mu, s^2) + 0.5 N(mu, s^2).

    Under ``x_t = sqrt(ab) x_0 + sqrt(1 - ab) eps`` the marginal is again a two-component
    mixture, so ``eps(x_t) = -sqrt(1 - ab) * score(x_t)`` has a closed form (non-linear in x).
    """

    def __init__(self, alphas_cumprod: torch.Tensor, mu: float = 1.0, s: float = 0.15) -> None:
        self.alphas_cumprod = alphas_cumprod.to(torch.float64)
        self.mu = mu
        self.s = s
        self.calls = 0

    def __call__(self, x: torch.Tensor, t: int | float | torch.Tensor) -> torch.Tensor:
        self.calls += 1
        ab = float(self.alphas_cumprod[int(t)])
        a, sigma = math.sqrt(ab), math.sqrt(1.0 - ab)
        var = a * a * self.s * self.s + sigma * sigma
        x64 = x.to(torch.float64)
        centers = torch.tensor([-a * self.mu, a * self.mu], dtype=torch.float64)
        diff = x64.unsqueeze(-1) - centers
        resp = torch.softmax(-(diff**2) / (2 * var), dim=-1)
        score = -(resp * diff).sum(-1) / var
        return (-sigma * score).to(x.dtype)


def run_loop(scheduler, noise: torch.Tensor, num_steps: int, model_fn: Callable) -> torch.Tensor:
    """The standard diffusers sampling loop."""
    scheduler.set_timesteps(num_steps)
    x = noise * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(x, t)
        x = scheduler.step(model_fn(model_input, t), t, x).prev_sample
    return x


def record(teacher, num_steps: int, noise: torch.Tensor, model_fn: Callable) -> Trajectories:
    """Teacher trajectories of ``noise`` recorded through the standard loop."""
    recorder = TrajectoryRecorder(teacher, dtype=torch.float64)
    run_loop(recorder, noise, num_steps, model_fn)
    return recorder.trajectories()


def build_schedule(steps: int = 3, guidance: float = 7.5, model: str = "tiny-sd") -> Schedule:
    return Schedule(
        model_id=model,
        teacher=TeacherInfo("DDIMScheduler", {"num_train_timesteps": 1000}, 100),
        guidance_scale=guidance,
        resolution=(32, 32),
        num_examples=4,
        timesteps=[991 - 200 * i for i in range(steps)],
        coefficients=[
            [1.0 - 0.1 * i] + [0.01 * (j + 1) for j in range(i + 1)] for i in range(steps)
        ],
        init_noise_sigma=1.0,
        method="closed-loop",
        fit_report=FitReport(
            path=[20 * i for i in range(steps)],
            step_errors=[0.1] * steps,
            condition_numbers=[10.0] * steps,
            heldout=HeldoutReport(4, 0.05, {"unipc": 0.2}, "olss", "OLSS is the best"),
        ),
    )


@pytest.fixture()
def make_schedule() -> Callable[..., Schedule]:
    """``make_schedule(steps=3, guidance=7.5, model="tiny-sd")``: a small valid schedule."""
    return build_schedule


@pytest.fixture(scope="session")
def ddim() -> DDIMScheduler:
    return DDIMScheduler(**SD_BETAS, clip_sample=False, set_alpha_to_one=False, steps_offset=1)


@pytest.fixture(scope="session")
def mixture(ddim: DDIMScheduler) -> MixtureEps:
    return MixtureEps(ddim.alphas_cumprod)


@pytest.fixture(scope="session")
def mixture_noise() -> torch.Tensor:
    return torch.randn(12, 2, 6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


@pytest.fixture(scope="session")
def mixture_traj(ddim, mixture, mixture_noise) -> Trajectories:
    """DDIM, T=40, on the mixture model: 12 examples of 2x6x6 elements, float64."""
    teacher = DDIMScheduler.from_config(ddim.config)
    return record(teacher, 40, mixture_noise, mixture)


@pytest.fixture(scope="module")
def loaded_pipeline(tiny_pipeline_dir: Path):
    """The tiny pipeline loaded once per module (CPU, float32, progress bars off)."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_pipeline_dir)
    pipe.set_progress_bar_config(disable=True)
    return pipe

"""Fixtures for the schedules tests: an exact-score toy diffusion model, the tiny pipeline."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from diffusers import DDIMScheduler

from devtools.analytic import GaussianMixtureDiffusion, MixtureConfig, record_trajectories
from devtools.sd_configs import SD_DDIM_CONFIG
from schedules.sampling import ModelFn
from schedules.schedule_file import Schedule
from schedules.trajectory import Trajectories
from tests.support.schedules import build_schedule
from tests.support.torch_threads import single_torch_thread


@pytest.fixture()
def make_schedule() -> Callable[..., Schedule]:
    """``make_schedule(steps=3, guidance=7.5, model="tiny-sd")``: a small valid schedule."""
    return build_schedule


@pytest.fixture(scope="session")
def ddim() -> DDIMScheduler:
    return DDIMScheduler(**SD_DDIM_CONFIG)


@pytest.fixture(scope="session")
def mixture_model() -> GaussianMixtureDiffusion:
    """A 1-D mixture, ``N(1.54, 0.15^2)`` and ``N(-0.29, 0.15^2)`` equally likely, with exact
    model outputs (non-linear in x) for samples whose elements are i.i.d. draws of it."""
    config = MixtureConfig(
        dim=1, num_classes=2, components_per_class=1, separation=1.0, component_std=0.15
    )
    return GaussianMixtureDiffusion(config)


@pytest.fixture(scope="session")
def mixture(mixture_model: GaussianMixtureDiffusion) -> ModelFn:
    """Exact noise prediction of :func:`mixture_model` for samples of any shape."""
    return mixture_model.iid_model_fn()


@pytest.fixture(scope="session")
def mixture_noise() -> torch.Tensor:
    return torch.randn(12, 2, 6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


@pytest.fixture(scope="session")
def mixture_traj(ddim, mixture, mixture_noise) -> Trajectories:
    """DDIM, T=40, on the mixture model: 12 examples of 2x6x6 elements, float64."""
    teacher = DDIMScheduler.from_config(ddim.config)
    return record_trajectories(teacher, mixture, mixture_noise, 40)


@pytest.fixture(scope="module")
def loaded_pipeline(tiny_pipeline_dir: Path):
    """The tiny pipeline loaded once per module (CPU, float32, progress bars off)."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_pipeline_dir)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Tiny float64 tensors: intra-op threads only add contention on a shared CPU."""
    with single_torch_thread():
        yield

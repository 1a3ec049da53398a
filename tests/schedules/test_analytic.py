"""The analytic testbed: exact scores, guidance, schedules and sampling land where they should."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

from devtools.analytic import (
    GaussianMixtureDiffusion,
    MixtureConfig,
    alpha_bar_at,
    ays_timesteps,
    record_trajectories,
    sd_alphas_cumprod,
)
from devtools.sd_configs import sd_scheduler
from schedules.sampling import run_sampler

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def mixture() -> GaussianMixtureDiffusion:
    return GaussianMixtureDiffusion(MixtureConfig(dim=6, num_classes=3, components_per_class=2))


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def test_alphas_cumprod_match_diffusers_scaled_linear_betas() -> None:
    theirs = sd_scheduler(DDIMScheduler).alphas_cumprod.to(torch.float64)
    assert torch.allclose(sd_alphas_cumprod(), theirs, rtol=1e-5)


def test_alpha_bar_interpolation_is_exact_at_integers_and_inverts_sigma_to_t() -> None:
    abar = sd_alphas_cumprod()
    ints = torch.arange(0, 1000, 37, dtype=torch.float64)
    assert torch.allclose(alpha_bar_at(ints, abar), abar[ints.long()], rtol=1e-12)
    # A float timestep from diffusers' _sigma_to_t (Karras sigmas) maps back to that sigma.
    euler = sd_scheduler(EulerDiscreteScheduler, use_karras_sigmas=True)
    euler.set_timesteps(7)
    for t, sigma in zip(euler.timesteps[1:], euler.sigmas[1:-1], strict=True):
        ab = alpha_bar_at(torch.tensor(float(t)), abar)
        assert math.sqrt((1 - ab) / ab) == pytest.approx(float(sigma), rel=1e-4)


@pytest.mark.parametrize("timestep", [999, 640.5, 25, 0])
@pytest.mark.parametrize("conditional", [True, False])
def test_eps_is_minus_sqrt_one_minus_abar_times_autograd_score(
    mixture: GaussianMixtureDiffusion, timestep: float, conditional: bool
) -> None:
    x = (2.0 * _randn(9, mixture.dim, seed=1)).requires_grad_(True)
    labels = torch.arange(9) % mixture.config.num_classes if conditional else None
    (score,) = torch.autograd.grad(mixture.log_density(x, timestep, labels).sum(), x)
    abar = alpha_bar_at(torch.tensor(float(timestep)), mixture.alphas_cumprod)
    eps = mixture.eps(x.detach(), timestep, labels)
    assert torch.allclose(eps, -torch.sqrt(1 - abar) * score, atol=1e-10)


def test_eps_matches_finite_difference_of_log_density(mixture: GaussianMixtureDiffusion) -> None:
    x = _randn(1, mixture.dim, seed=2)
    labels = torch.tensor([1])
    t, h = 300, 1e-5
    abar = float(alpha_bar_at(torch.tensor(float(t)), mixture.alphas_cumprod))
    grad = torch.zeros_like(x)
    for i in range(mixture.dim):
        step = torch.zeros_like(x)
        step[0, i] = h
        up = mixture.log_density(x + step, t, labels)
        down = mixture.log_density(x - step, t, labels)
        grad[0, i] = (up - down).item() / (2 * h)
    assert torch.allclose(mixture.eps(x, t, labels), -math.sqrt(1 - abar) * grad, atol=1e-6)


def test_conditional_density_normalizes_over_the_class_components() -> None:
    """In 1-D, the class-conditional p_t integrates to one (its weights sum to one)."""
    model = GaussianMixtureDiffusion(MixtureConfig(dim=1, num_classes=2, components_per_class=3))
    grid = torch.linspace(-12, 12, 20001, dtype=torch.float64)[:, None]
    for labels in (torch.zeros(len(grid), dtype=torch.long), None):
        density = model.log_density(grid, 500, labels).exp()
        assert float(torch.trapezoid(density, grid[:, 0])) == pytest.approx(1.0, abs=1e-6)


def test_guidance_one_is_the_conditional_and_zero_the_unconditional(
    mixture: GaussianMixtureDiffusion,
) -> None:
    x = _randn(12, mixture.dim, seed=3)
    labels = torch.arange(12) % mixture.config.num_classes
    cond, uncond = mixture.eps(x, 400, labels), mixture.eps(x, 400)
    assert torch.allclose(mixture.guided(x, 400, labels, 1.0), cond, atol=1e-12)
    assert torch.allclose(mixture.guided(x, 400, labels, 0.0), uncond, atol=1e-12)
    g = 7.5
    expected = uncond + g * (cond - uncond)
    assert torch.allclose(mixture.model_fn(labels, g)(x, 400), expected, atol=1e-12)
    assert not torch.allclose(cond, uncond)


def test_model_fn_accepts_tensor_float_and_per_example_timesteps(
    mixture: GaussianMixtureDiffusion,
) -> None:
    x = _randn(4, mixture.dim, seed=4).to(torch.float32)
    fn = mixture.model_fn(torch.tensor([0, 1, 2, 0]), 3.0)
    out = fn(x, torch.tensor(250))
    assert out.dtype == torch.float32 and out.shape == x.shape
    assert torch.allclose(fn(x, 250.0), out)
    per_example = fn(x, torch.tensor([250, 250, 250, 250]))
    assert torch.allclose(per_example, out)
    with pytest.raises(ValueError, match="examples"):
        fn(x[:3], 250)


def test_ddim_1000_steps_lands_on_the_class_components(
    mixture: GaussianMixtureDiffusion,
) -> None:
    labels = torch.arange(60) % mixture.config.num_classes
    scheduler = sd_scheduler(
        DDIMScheduler, timestep_spacing="trailing", set_alpha_to_one=True, clip_sample=False
    )
    x0 = run_sampler(
        scheduler, mixture.model_fn(labels, 1.0), _randn(60, mixture.dim, seed=5), 1000
    )
    dist = torch.cdist(x0, mixture.means)
    nearest = dist.argmin(dim=1)
    assert torch.equal(mixture.component_class[nearest], labels)
    # Within a few component stds of the nearest mean (|z| ~ sqrt(dim) std).
    limit = 3.0 * mixture.config.component_std * math.sqrt(mixture.dim)
    assert float(dist.min(dim=1).values.max()) < limit


def test_reference_solver_matches_the_affine_ode_of_a_single_gaussian_class() -> None:
    """One Gaussian N(mu, s^2 I) per class: the probability-flow ODE is affine in the noise,
    ``x_t = sqrt(abar_t) mu + sqrt(v_t) z`` with ``v_t = abar_t s^2 + 1 - abar_t``, and
    diffusers' last step from t=0 to sigma=0 is the posterior mean ``mu + sqrt(abar_0) s^2 z /
    sqrt(v_0)``. Sampling starts from ``x_T ~ N(0, I)``, so ``z = (x_T - sqrt(abar_T) mu) /
    sqrt(v_T)``. The benchmark's reference solver (DPM-Solver++ 3M, 1000 steps) hits it.
    """
    s = 0.5
    model = GaussianMixtureDiffusion(
        MixtureConfig(dim=4, num_classes=2, components_per_class=1, component_std=s)
    )
    noise = _randn(64, 4, seed=6)
    labels = torch.zeros(64, dtype=torch.long)
    abar = model.alphas_cumprod
    v_T, v_0 = (float(abar[i] * s * s + 1 - abar[i]) for i in (999, 0))
    mu = model.means[0]
    z = (noise - math.sqrt(abar[999]) * mu) / math.sqrt(v_T)
    expected = mu + math.sqrt(abar[0]) * s * s / math.sqrt(v_0) * z
    scheduler = sd_scheduler(
        DPMSolverMultistepScheduler, solver_order=3, timestep_spacing="trailing"
    )
    x0 = run_sampler(scheduler, model.model_fn(labels, 1.0), noise, 1000)
    assert torch.allclose(x0, expected, atol=1e-4)


def test_sample_data_draws_from_the_class_components(mixture: GaussianMixtureDiffusion) -> None:
    labels = torch.full((500,), 2)
    data = mixture.sample_data(labels, torch.Generator().manual_seed(7))
    nearest = torch.cdist(data, mixture.means).argmin(dim=1)
    assert (mixture.component_class[nearest] == 2).float().mean() > 0.99


def test_ays_timesteps_keep_the_10_step_list_and_interpolate_in_log_sigma() -> None:
    from diffusers.schedulers import AysSchedules

    assert ays_timesteps(10) == list(AysSchedules["StableDiffusionTimesteps"])
    for k in (4, 5, 6, 8, 15, 20):
        steps = ays_timesteps(k)
        assert len(steps) == k and steps[0] == 999 and steps[-1] == 24
        assert all(b < a for a, b in itertools.pairwise(steps))
    abar = sd_alphas_cumprod().numpy()
    log_sigma = 0.5 * np.log((1 - abar) / abar)
    # 19 steps interleave the 10-step list: every other point is one of the originals.
    assert ays_timesteps(19)[::2] == list(AysSchedules["StableDiffusionTimesteps"])
    mid = ays_timesteps(19)[1]
    assert log_sigma[mid] == pytest.approx(0.5 * (log_sigma[999] + log_sigma[850]), abs=0.01)


def test_record_trajectories_keeps_model_inputs_outputs_and_final_sample(
    mixture: GaussianMixtureDiffusion,
) -> None:
    labels = torch.arange(8) % mixture.config.num_classes
    fn = mixture.model_fn(labels, 3.0)
    noise = _randn(8, mixture.dim, seed=8)
    teacher = sd_scheduler(DPMSolverMultistepScheduler)
    traj = record_trajectories(teacher, fn, noise, num_inference_steps=12)
    assert traj.samples.shape == (13, 8, mixture.dim) and traj.outputs.shape == (12, 8, mixture.dim)
    assert torch.equal(traj.samples[0], noise)
    final = run_sampler(sd_scheduler(DPMSolverMultistepScheduler), fn, noise, 12)
    assert torch.allclose(traj.samples[-1], final)
    assert torch.allclose(traj.outputs[3], fn(traj.samples[3], traj.timestep(3)))

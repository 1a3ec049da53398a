"""OLSSScheduler: the step formula, state resets, step-count errors, config round trip, fp16."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from schedules.sampling import run_sampler
from schedules.scheduler import OLSSScheduler

TIMESTEPS = [901, 601, 301]
COEFFICIENTS = [[0.9, -0.3], [0.8, -0.2, -0.1], [1.1, -0.5, 0.2, -0.4]]


def make_scheduler(**kwargs) -> OLSSScheduler:
    return OLSSScheduler(timesteps=TIMESTEPS, coefficients=COEFFICIENTS, **kwargs)


def toy_model(x: torch.Tensor, t) -> torch.Tensor:
    return torch.sin(x * 1.3 + float(t) / 500.0)


def reference_loop(noise: torch.Tensor) -> torch.Tensor:
    """Eq. 7 written out: x_{i+1} = w_{i,0} x_init + sum_j w_{i,j+1} e_j."""
    x_init, outputs, x = noise.double(), [], noise.double()
    for i, t in enumerate(TIMESTEPS):
        outputs.append(toy_model(x, t).double())
        w = COEFFICIENTS[i]
        x = w[0] * x_init + sum(w[j + 1] * e for j, e in enumerate(outputs))
    return x


def test_standard_loop_matches_equation_7() -> None:
    noise = torch.randn(3, 4, 5, 5, generator=torch.Generator().manual_seed(0))
    scheduler = make_scheduler()
    assert scheduler.order == 1 and scheduler.init_noise_sigma == 1.0
    assert scheduler.timesteps.tolist() == TIMESTEPS
    out = run_sampler(scheduler, toy_model, noise, 3)
    torch.testing.assert_close(out.double(), reference_loop(noise), rtol=1e-5, atol=1e-5)


def test_wrong_step_count_names_the_valid_one() -> None:
    with pytest.raises(ValueError, match="has 3 steps; num_inference_steps=5"):
        make_scheduler().set_timesteps(5)
    with pytest.raises(ValueError, match="custom timesteps"):
        make_scheduler().set_timesteps(timesteps=[900, 600, 300])


def test_state_resets_between_runs_and_after_an_interrupted_run() -> None:
    noise = torch.randn(2, 4, 5, 5, generator=torch.Generator().manual_seed(1))
    other = torch.randn(2, 4, 5, 5, generator=torch.Generator().manual_seed(2))
    scheduler = make_scheduler()
    first = run_sampler(scheduler, toy_model, noise, 3)
    run_sampler(scheduler, toy_model, other, 3)
    # An interrupted run: two of three steps only.
    scheduler.set_timesteps(3)
    x = other
    for t in scheduler.timesteps[:2]:
        x = scheduler.step(toy_model(x, t), t, x).prev_sample
    again = run_sampler(scheduler, toy_model, noise, 3)
    torch.testing.assert_close(again, first, rtol=0, atol=0)
    # Without set_timesteps, a CPU timestep equal to the first one also starts a new run.
    x = noise
    for t in TIMESTEPS:
        x = scheduler.step(toy_model(x, t), t, x).prev_sample
    torch.testing.assert_close(x, first, rtol=0, atol=0)


def test_unknown_timestep_and_mid_run_start_are_errors() -> None:
    scheduler = make_scheduler()
    scheduler.set_timesteps(3)
    x = torch.zeros(1, 4, 2, 2)
    with pytest.raises(ValueError, match="not in this OLSS schedule"):
        scheduler.step(x, 500, x)
    with pytest.raises(ValueError, match="must start at the first timestep"):
        scheduler.step(x, 601, x)


def test_config_round_trip(tmp_path: Path) -> None:
    scheduler = make_scheduler(init_noise_sigma=0.99, model_id="tiny-sd", guidance_scale=7.5)
    scheduler.save_pretrained(tmp_path)
    loaded = OLSSScheduler.from_pretrained(tmp_path)
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.config) == public(scheduler.config)
    assert loaded.config.timesteps == TIMESTEPS and loaded.config.coefficients == COEFFICIENTS
    clone = OLSSScheduler.from_config(scheduler.config)
    assert clone.init_noise_sigma == 0.99
    noise = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(3))
    expected = run_sampler(scheduler, toy_model, noise, 3)
    for other in (loaded, clone):
        torch.testing.assert_close(
            run_sampler(other, toy_model, noise, 3), expected, rtol=0, atol=0
        )


def test_fp16_step_accumulates_in_fp32() -> None:
    scheduler = OLSSScheduler(timesteps=[900], coefficients=[[1000.0, -1000.0]])
    scheduler.set_timesteps(1)
    x = torch.full((2, 4, 2, 2), 1.0009765625, dtype=torch.float16)  # 1 + 2^-10, exact in fp16
    e = torch.ones_like(x)
    out = scheduler.step(e, 900, x).prev_sample
    assert out.dtype == torch.float16
    expected = (1000.0 * x.float() - 1000.0 * e.float()).half()  # 0.9765625
    naive = x * 1000.0 - e * 1000.0  # fp16 rounding of 1000.98 to 1001 gives 1.0
    assert not torch.equal(expected, naive)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_invalid_schedules_are_rejected() -> None:
    with pytest.raises(ValueError, match="strictly decreasing"):
        OLSSScheduler(timesteps=[1, 2], coefficients=[[1.0, 0.0], [1.0, 0.0, 0.0]])
    with pytest.raises(ValueError, match=r"coefficients\[1\] must hold 3"):
        OLSSScheduler(timesteps=[2, 1], coefficients=[[1.0, 0.0], [1.0, 0.0]])

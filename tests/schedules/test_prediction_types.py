"""OLSS for any prediction type: epsilon and v give the same schedules' quality; zero terminal SNR.

OLSS is linear in the model output: with ``v = sqrt(abar) eps - sqrt(1 - abar) x0`` (Salimans &
Ho, 2022) and ``x0 = (x - sqrt(1 - abar) eps) / sqrt(abar)``, ``v`` is ``eps / sqrt(abar)`` minus
a multiple of the sample, so ``[x_0, v_0, ..., v_i]`` spans what ``[x_0, e_0, ..., e_i]`` spans
and the fitted schedules are equally good. Testbed: the analytic Gaussian mixture
(:mod:`devtools.analytic`) returning eps or v, guidance 5, teacher DPM-Solver++(3M) to t = 0.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

from devtools.analytic import GaussianMixtureDiffusion, MixtureConfig, record_trajectories
from devtools.sd_configs import SD_DDIM_CONFIG, sd_scheduler
from schedules import OLSSScheduler, search
from schedules.heldout import example_errors
from schedules.sampling import run_sampler
from schedules.teachers import parse_teacher

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CONFIG = MixtureConfig(dim=8, num_classes=3, components_per_class=2, separation=3.0)
GUIDANCE = 5.0
STEPS = 5


def _noise(n: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, CONFIG.dim, dtype=torch.float64, generator=generator)


def olss_and_peer(prediction_type: str, **schedule_config) -> tuple[float, float, list[int]]:
    """Held-out mean error of a 5-step closed-loop schedule and of DPM-Solver++(2M) at 5 steps,
    against the teacher, and the schedule's path."""
    config = {**SD_DDIM_CONFIG, "prediction_type": prediction_type, **schedule_config}
    alphas = DDIMScheduler(**config).alphas_cumprod.to(torch.float64)
    model = GaussianMixtureDiffusion(CONFIG, alphas_cumprod=alphas)
    labels = torch.arange(96) % CONFIG.num_classes
    cal = model.model_fn(labels[:64], GUIDANCE, prediction_type)
    held = model.model_fn(labels[64:], GUIDANCE, prediction_type)
    teacher = parse_teacher("dpmsolver++3m:100", config)
    traj = record_trajectories(teacher.scheduler, cal, _noise(64, 1), **teacher.run_kwargs())
    traj = traj.with_metadata(conditions=tuple(str(int(c)) for c in labels[:64]))
    noise = _noise(32, 2)
    target = run_sampler(teacher.scheduler, held, noise, **teacher.run_kwargs())
    schedule = search(traj, STEPS, cal)
    assert schedule.prediction_type == prediction_type
    olss = run_sampler(OLSSScheduler.from_schedule(schedule), held, noise, STEPS)
    peer = DPMSolverMultistepScheduler.from_config({**config, "timestep_spacing": "trailing"})
    peer_out = run_sampler(peer, held, noise, STEPS)
    errors = [float(example_errors(x, target).mean()) for x in (olss, peer_out)]
    return errors[0], errors[1], list(schedule.fit_report.path)


def test_v_prediction_schedules_match_epsilon_ones_within_noise() -> None:
    eps_olss, eps_peer, eps_path = olss_and_peer("epsilon")
    v_olss, v_peer, v_path = olss_and_peer("v_prediction")
    # The teachers and the peer are the same samplers on the same ODE: equal to float32
    # rounding (the v <-> epsilon conversions round differently; measured 1.8e-6 relative).
    assert v_peer == pytest.approx(eps_peer, rel=1e-5)
    # OLSS sees the same span of outputs: the same quality, and here the same path.
    assert v_olss == pytest.approx(eps_olss, rel=0.2), (v_olss, eps_olss)
    assert v_olss / v_peer == pytest.approx(eps_olss / eps_peer, rel=0.2)
    assert v_path == eps_path
    assert eps_olss < 0.25 * eps_peer


def test_zero_terminal_snr_v_prediction_with_trailing_teacher_is_fitted() -> None:
    """``rescale_betas_zero_snr`` (abar = 0 at t = 999, Lin et al., 2024) with v prediction: the
    teacher starts at t = 999 (pure noise) and ends at 0; OLSS fits it and beats the peer."""
    olss, peer, path = olss_and_peer("v_prediction", rescale_betas_zero_snr=True)
    assert path[0] == 0 and torch.isfinite(torch.tensor([olss, peer])).all()
    assert olss < 0.25 * peer, (olss, peer)


def test_scheduler_exposes_and_checks_the_prediction_type(make_schedule) -> None:
    schedule = make_schedule()
    scheduler = OLSSScheduler.from_schedule(schedule)
    assert scheduler.prediction_type == "epsilon" == scheduler.config.prediction_type
    scheduler.check_prediction_type("epsilon")
    with pytest.raises(ValueError, match=r"tiny-sd's OLSS schedule .* prediction_type='epsilon'"):
        scheduler.check_prediction_type("v_prediction")
    v_scheduler = OLSSScheduler.from_config({**scheduler.config, "prediction_type": "v_prediction"})
    v_scheduler.check_prediction_type("v_prediction")


def test_analytic_v_output_is_the_salimans_ho_combination() -> None:
    model = GaussianMixtureDiffusion(CONFIG)
    x = _noise(5, 3)
    labels = torch.arange(5) % CONFIG.num_classes
    abar = float(model.alphas_cumprod[400])
    eps = model.predict(x, 400, labels, "epsilon")
    x0 = model.predict(x, 400, labels, "sample")
    v = model.predict(x, 400, labels, "v_prediction")
    torch.testing.assert_close(x0, (x - (1 - abar) ** 0.5 * eps) / abar**0.5)
    torch.testing.assert_close(v, abar**0.5 * eps - (1 - abar) ** 0.5 * x0)
    assert sd_scheduler(DDIMScheduler).config.prediction_type == "epsilon"

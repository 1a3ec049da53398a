"""Path search and fitting on an exact-score mixture model with a DDIM teacher."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler

from devtools.analytic import record_trajectories
from schedules.gram import gram_matrix
from schedules.heldout import example_errors
from schedules.olss_search import search
from schedules.paper_search import GramFitter, paper_path
from schedules.paths import uniform_path
from schedules.sampling import run_sampler
from schedules.scheduler import OLSSScheduler


def relative_error(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x.double() - ref.double()).norm() / ref.double().norm())


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_paper_fit_on_all_teacher_steps_reproduces_ddim(
    ddim, mixture_model, mixture_noise, prediction_type: str
) -> None:
    """Each DDIM step is linear in the sample and the model output whatever the network
    predicts (eps, v = sqrt(abar) eps - sqrt(1-abar) x0, or x0), so OLSS on every teacher step
    is DDIM, to numerical precision."""
    model = mixture_model.iid_model_fn(prediction_type)
    teacher = DDIMScheduler.from_config(ddim.config, prediction_type=prediction_type)
    traj = record_trajectories(teacher, model, mixture_noise, 10)
    schedule = search(traj, num_steps=10, method="paper")
    assert schedule.prediction_type == prediction_type
    assert schedule.fit_report.path == list(range(10))
    assert max(schedule.fit_report.step_errors) < 1e-9
    olss = run_sampler(OLSSScheduler.from_schedule(schedule), model, mixture_noise, 10)
    assert relative_error(olss, traj.samples[-1]) < 1e-9


def test_euler_teacher_is_distilled_in_vp_space(ddim, mixture, mixture_noise) -> None:
    euler = EulerDiscreteScheduler.from_config(ddim.config)
    traj = record_trajectories(euler, mixture, mixture_noise, 8)
    euler.set_timesteps(8)
    sigma0 = float(euler.sigmas[0])
    expected = float(euler.init_noise_sigma) / (sigma0**2 + 1) ** 0.5
    assert traj.init_noise_sigma == pytest.approx(expected, rel=1e-6)  # float32 sigmas
    schedule = search(traj, num_steps=8, method="paper")
    olss = OLSSScheduler.from_schedule(schedule)
    assert olss.init_noise_sigma == pytest.approx(expected)
    final = run_sampler(olss, mixture, mixture_noise, 8)
    assert relative_error(final, traj.samples[-1]) < 1e-6  # Euler keeps sigmas in float32


def test_paper_search_finds_smallest_feasible_bound(mixture_traj) -> None:
    fitter = GramFitter(gram_matrix(mixture_traj))
    path, bound = paper_path(fitter, 4)
    assert path[0] == 0 and len(path) == 4 and all(b > a for a, b in itertools.pairwise(path))
    schedule = search(mixture_traj, num_steps=4, method="paper")
    assert schedule.fit_report.path == path
    assert max(schedule.fit_report.step_errors) <= bound * (1 + 1e-9)
    # Below the bound the greedy walk cannot reach the end in 4 steps.
    tighter, _ = paper_path(fitter, 5)
    assert max(search(mixture_traj, 5, method="paper", path=tighter).fit_report.step_errors) <= (
        bound * (1 + 1e-9)
    )


def test_uniform_is_olss_p() -> None:
    assert uniform_path(100, 5) == [0, 20, 40, 60, 80]
    assert uniform_path(10, 10) == list(range(10))


def test_closed_loop_needs_model_fn(mixture_traj) -> None:
    with pytest.raises(ValueError, match="model_fn"):
        search(mixture_traj, num_steps=3)


@pytest.mark.parametrize("k", [0, 41])
def test_step_count_out_of_range(mixture_traj, k: int) -> None:
    with pytest.raises(ValueError, match="between 1 and the teacher's 40 steps"):
        search(mixture_traj, num_steps=k, method="uniform")


def test_closed_loop_report_matches_sampling_and_beats_its_candidates(
    mixture_traj, mixture, mixture_noise
) -> None:
    schedule = search(
        mixture_traj, num_steps=4, model_fn=mixture, method="closed-loop", validation_fraction=0
    )
    report = schedule.fit_report
    tried = [c.error for c in report.candidates if c.error is not None]
    assert len(tried) > 10 and {"paper", "uniform", "scan"} <= {c.name for c in report.candidates}
    assert report.validation is None and report.fit_stats.num_examples == 12
    # The closed-loop fit simulates the scheduler exactly: its errors are what sampling gives.
    final = run_sampler(OLSSScheduler.from_schedule(schedule), mixture, mixture_noise, 4)
    errors = example_errors(final, mixture_traj.samples[-1])
    assert report.fit_stats.mean == pytest.approx(float(errors.mean()), rel=1e-4)
    assert report.fit_stats.max == pytest.approx(float(errors.max()), rel=1e-4)
    # No path it tried did better (the refinement only lowers the error), and it beats the
    # teacher-forced coefficients of the paper path.
    assert float(errors.pow(2).mean().sqrt()) <= min(tried) * (1 + 1e-6)
    paper = search(mixture_traj, num_steps=4, method="paper")
    paper_final = run_sampler(OLSSScheduler.from_schedule(paper), mixture, mixture_noise, 4)
    paper_errors = example_errors(paper_final, mixture_traj.samples[-1])
    assert float(errors.mean()) < float(paper_errors.mean())
    assert report.cost.evaluations > 0


def test_closed_loop_on_given_path(mixture_traj, mixture) -> None:
    schedule = search(mixture_traj, 3, model_fn=mixture, path=[0, 28, 34])
    assert schedule.fit_report.path == [0, 28, 34]
    assert schedule.timesteps == [mixture_traj.timestep(p) for p in (0, 28, 34)]
    assert [len(row) for row in schedule.coefficients] == [2, 3, 4]
    assert np.isfinite(schedule.fit_report.condition_numbers).all()


def test_a_default_teacher_schedule_saves_and_loads(mixture, mixture_noise, tmp_path) -> None:
    """DPM-Solver++'s config holds ``lambda_min_clipped = -inf``, which JSON cannot: the saved
    teacher config leaves it out, and the file loads and rebuilds the teacher's class."""
    from devtools.sd_configs import SD_DDIM_CONFIG
    from schedules.samplers import build_sampler
    from schedules.schedule_file import Schedule
    from schedules.teachers import DEFAULT_TEACHER, parse_teacher

    name = DEFAULT_TEACHER.split(":")[0]
    teacher = parse_teacher(f"{name}:40", SD_DDIM_CONFIG)
    traj = record_trajectories(teacher.scheduler, mixture, mixture_noise, **teacher.run_kwargs())
    assert traj.teacher_config["lambda_min_clipped"] == -np.inf
    schedule = search(traj, 4, method="uniform")
    loaded = Schedule.load(schedule.save(tmp_path / "s.json"))
    assert loaded.timesteps == schedule.timesteps
    assert "lambda_min_clipped" not in loaded.teacher.config
    rebuilt = build_sampler(name, loaded.teacher.config)
    assert rebuilt.config.lambda_min_clipped == -np.inf

"""Coefficients polynomial in g, fitted closed-loop over a guidance grid
(:mod:`schedules.guidance_fit`), on the analytic testbed: an 8-d, 3-class Gaussian mixture with
exact guided outputs, teacher DPM-Solver++(3M) with 50 steps, 48 examples per scale."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from devtools.analytic import GaussianMixtureDiffusion, MixtureConfig, record_trajectories
from devtools.sd_configs import SD_DDIM_CONFIG
from schedules import OLSSScheduler, search
from schedules.closed_loop import FitGroup
from schedules.guidance_fit import fit_guidance_polynomial, interval_neighbours
from schedules.heldout import example_errors
from schedules.sampling import run_sampler
from schedules.teachers import parse_teacher

CONFIG = MixtureConfig(dim=8, num_classes=3, components_per_class=2, separation=3.0)
GRID = (3.0, 5.0, 7.5)
PATH = [0, 20, 35, 45]


@pytest.fixture(scope="module")
def groups() -> list[FitGroup]:
    torch.set_num_threads(1)
    model = GaussianMixtureDiffusion(CONFIG)
    teacher = parse_teacher("dpmsolver++3m:50", SD_DDIM_CONFIG)
    labels = torch.arange(48) % CONFIG.num_classes
    noise = torch.randn(
        48, CONFIG.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(3)
    )
    out = []
    for g in GRID:
        fn = model.model_fn(labels, g)
        traj = record_trajectories(teacher.scheduler, fn, noise, **teacher.run_kwargs())
        traj = traj.with_metadata(conditions=tuple(str(int(c)) for c in labels), guidance_scale=g)
        out.append(FitGroup(traj, fn))
    return out


def test_the_fit_is_what_the_sampler_runs_at_every_grid_scale(groups) -> None:
    fit = fit_guidance_polynomial(groups, PATH, degree=1)
    assert fit.valid and len(fit.terms) == len(PATH) and all(len(t) == 2 for t in fit.terms)
    base = search(groups[0].traj, len(PATH), groups[0].model_fn, path=PATH)
    for group, path_fit, errors in zip(groups, fit.fits, fit.example_errors, strict=True):
        g = group.traj.guidance_scale
        rows = fit.coefficients(g)
        for fitted, row in zip(path_fit.coefficients, rows, strict=True):
            assert list(fitted) == pytest.approx(row)
        schedule = replace(base, guidance_scale=g, coefficients=rows)
        scheduler = OLSSScheduler.from_schedule(schedule)
        out = run_sampler(scheduler, group.model_fn, group.traj.samples[0], len(PATH))
        ran = example_errors(out, group.traj.samples[-1]).numpy()
        np.testing.assert_allclose(errors, ran, rtol=1e-6, atol=1e-9)
        assert float(np.mean(errors)) < 0.05


def test_degree_zero_is_one_schedule_for_every_scale_and_worse_than_degree_one(groups) -> None:
    flat = fit_guidance_polynomial(groups, PATH, degree=0)
    assert flat.coefficients(3.0) == flat.coefficients(7.5)
    sloped = fit_guidance_polynomial(groups, PATH, degree=1)
    assert sloped.coefficients(3.0) != sloped.coefficients(7.5)
    mean = [float(np.mean(np.concatenate(f.example_errors))) for f in (flat, sloped)]
    assert mean[1] < mean[0]


def test_bad_fits_are_value_errors(groups) -> None:
    with pytest.raises(ValueError, match="degree"):
        fit_guidance_polynomial(groups, PATH, degree=3)
    with pytest.raises(ValueError, match="own guidance scale"):
        fit_guidance_polynomial([groups[0], groups[0]], PATH, degree=1)
    with pytest.raises(ValueError, match="group_weights"):
        fit_guidance_polynomial(groups, PATH, degree=1, group_weights=[1.0, 0.0, 1.0])


def test_an_interval_is_fitted_on_its_ends_and_their_outer_neighbours() -> None:
    assert interval_neighbours(0, 5, 0.25) == ([0, 1, 2], [1.0, 1.0, 0.25])
    assert interval_neighbours(2, 5, 0.5) == ([1, 2, 3, 4], [0.5, 1.0, 1.0, 0.5])
    assert interval_neighbours(0, 2) == ([0, 1], [1.0, 1.0])
    with pytest.raises(ValueError):
        interval_neighbours(4, 5)

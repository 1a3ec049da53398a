"""Gram-matrix least squares: equal to a direct lstsq fit, guarded when ill-conditioned."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from schedules.gram import design_indices, gram_matrix, solve_from_gram, solve_normal
from schedules.trajectory import Trajectories
from tests.support.gram_fit import teacher_forced_fit_gram


def random_traj(T: int = 12, n: int = 5, seed: int = 0) -> Trajectories:
    g = torch.Generator().manual_seed(seed)
    samples = torch.randn(T + 1, n, 3, 4, 4, generator=g, dtype=torch.float64)
    outputs = torch.randn(T, n, 3, 4, 4, generator=g, dtype=torch.float64)
    # Structure: samples drift towards a mix of earlier outputs, as in a real sampler.
    for i in range(1, T + 1):
        samples[i] = 0.9 * samples[i - 1] + 0.3 * outputs[i - 1] + 0.05 * samples[i]
    return Trajectories(samples, outputs, torch.linspace(900, 10, T, dtype=torch.float64))


def test_gram_fit_equals_direct_lstsq() -> None:
    traj = random_traj()
    gram = gram_matrix(traj)
    path = [0, 3, 7, 9]
    fit = teacher_forced_fit_gram(gram, path)
    targets = [*path[1:], traj.num_steps]
    for i, target in enumerate(targets):
        columns = [traj.samples[0], *(traj.outputs[p] for p in path[: i + 1])]
        A = torch.stack([c.reshape(-1) for c in columns], dim=1)
        y = traj.samples[target].reshape(-1, 1)
        direct = torch.linalg.lstsq(A, y, driver="gelsd").solution[:, 0]
        np.testing.assert_allclose(fit.coefficients[i], direct.numpy(), rtol=1e-8, atol=1e-10)
        residual = (A @ direct.unsqueeze(1) - y).norm() / y.norm()
        assert fit.step_errors[i] == pytest.approx(float(residual), rel=1e-6)


def test_chunked_gram_equals_one_pass() -> None:
    traj = random_traj(n=7)
    full = gram_matrix(traj)
    chunked = gram_matrix(traj, chunk_elements=48 * 2)
    np.testing.assert_allclose(chunked.G, full.G, rtol=1e-12)
    V = torch.cat([traj.samples.reshape(13, -1), traj.outputs.reshape(12, -1)])
    np.testing.assert_allclose(full.G, (V @ V.T).numpy(), rtol=1e-12)


def test_many_targets_in_one_solve_match_single_solves() -> None:
    gram = gram_matrix(random_traj())
    design = design_indices(gram, [0, 2, 5], 2)
    batch = solve_from_gram(gram, design, [6, 8, 12])
    for column, target in enumerate([6, 8, 12]):
        single = solve_from_gram(gram, design, [target])
        np.testing.assert_allclose(batch.weights[:, column], single.weights[:, 0], rtol=1e-10)
        assert batch.errors[column] == pytest.approx(single.errors[0], rel=1e-10)


def test_ill_conditioned_design_is_guarded_and_reported() -> None:
    traj = random_traj()
    outputs = traj.outputs.clone()
    outputs[3] = outputs[0] * (1 + 1e-15)  # e_3 duplicates e_0: singular normal matrix
    traj = Trajectories(traj.samples, outputs, traj.timesteps)
    fit = teacher_forced_fit_gram(gram_matrix(traj), [0, 3, 6])
    assert all(np.all(np.isfinite(row)) for row in fit.coefficients)
    assert fit.condition_numbers[1] > 1e6
    assert fit.condition_numbers[0] < 1e3
    assert max(abs(c) for c in fit.coefficients[1]) < 10


def test_exploding_or_non_finite_coefficients_are_invalid() -> None:
    gaa = np.eye(2)
    sol = solve_normal(gaa, np.array([[1.0, 5e3], [0.5, 0.0]]), np.array([2.0, 3e7]), max_coef=1e3)
    assert sol.valid.tolist() == [True, False]
    bad = solve_normal(gaa, np.array([np.inf, 1.0]), 1.0)
    assert not bad.valid[0]

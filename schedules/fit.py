"""Fit OLSS coefficients on a given path: the paper's teacher-forced fit, and the solver.

A path ``p_0 = 0 < p_1 < ... < p_{k-1} < T`` picks k teacher steps. Step i of the schedule
evaluates the model at ``t_{p_i}`` and forms (Duan et al., arXiv:2305.14677, Eq. 7)

    x_{i+1} = w_{i,0} x_0 + sum_{j<=i} w_{i,j+1} e_j,

targeting the teacher sample ``x_{p_{i+1}}`` (``p_k = T``: the last step targets the final
sample). The paper fits ``w_i`` with the teacher's own outputs ``e_{p_j}`` (teacher forcing,
Eq. 8). The closed-loop fit (:mod:`schedules.closed_loop`) instead runs the schedule as it will
be used, fitting step i+1 on the model outputs at the fitted samples ``x_{i+1}``.

Path *search* scores thousands of candidate fits from the Gram matrix (:mod:`schedules.gram`).
The chosen path's coefficients are then solved on the data itself (QR, then an SVD of R with a
singular-value cutoff), which keeps the accuracy that normal equations lose for near-collinear
outputs (their condition number is squared).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from schedules.gram import DEFAULT_MAX_COEF
from schedules.trajectory import Trajectories

CONDITION_CAP = 1e300
DEFAULT_SVD_RCOND = 1e-10
"""Singular values of the column-scaled design below this times the largest are cut off."""


@dataclass(frozen=True)
class PathFit:
    """Coefficients of one path and how well they fit.

    Args:
        path: the teacher step indices.
        coefficients: row i holds the i+2 weights of step i.
        step_errors: relative RMS error of each step's sample against its teacher target.
        condition_numbers: of each step's column-scaled normal matrix.
        valid: false if some step needed non-finite or exploding coefficients.
    """

    path: list[int]
    coefficients: list[np.ndarray]
    step_errors: list[float]
    condition_numbers: list[float]
    valid: bool

    @property
    def final_error(self) -> float:
        """Relative error of the final sample (``inf`` for an invalid fit)."""
        return self.step_errors[-1] if self.valid and self.step_errors else float("inf")


def check_path(path: Sequence[int], num_teacher_steps: int) -> list[int]:
    """Validate a path: starts at 0, strictly increasing, below T."""
    path = [int(p) for p in path]
    if not path or path[0] != 0:
        raise ValueError(f"a path must start at teacher step 0, got {path}")
    if any(b <= a for a, b in itertools.pairwise(path)) or path[-1] >= num_teacher_steps:
        raise ValueError(
            f"a path must be strictly increasing teacher steps in [0, {num_teacher_steps - 1}], "
            f"got {path}"
        )
    return path


@dataclass(frozen=True)
class StepFit:
    """One least-squares step: weights, relative RMS error, condition number, validity."""

    weights: np.ndarray
    relative_error: float
    condition_number: float
    valid: bool


def solve_columns(
    columns: torch.Tensor,
    target: torch.Tensor,
    rcond: float = DEFAULT_SVD_RCOND,
    max_coef: float = DEFAULT_MAX_COEF,
) -> StepFit:
    """``min_w ||target - columns^T w||`` on the data, float64, guarded.

    Args:
        columns: ``(m, M)`` design vectors (rows), e.g. ``[x_0, e_0, ..., e_i]`` flattened.
        target: ``(M,)`` the teacher sample to reach.
        rcond: singular values of the column-scaled design below ``rcond * max`` are dropped.
        max_coef: larger weights mark the step invalid.
    """
    A = columns.to(torch.float64).T
    y = target.to(torch.float64).reshape(-1)
    scale = A.norm(dim=0).clamp_min(1e-300)
    Q, R = torch.linalg.qr(A / scale)
    U, S, Vh = torch.linalg.svd(R)
    keep = rcond * S[0] < S
    coeffs = (U.T @ (Q.T @ y))[keep] / S[keep]
    weights = (Vh[keep].T @ coeffs) / scale
    residual = y - A @ weights
    error = float(residual.norm() / y.norm().clamp_min(1e-300))
    smallest = float(S[-1])
    condition = float(S[0]) / smallest if smallest > 0 else CONDITION_CAP
    w = weights.numpy()
    valid = bool(np.all(np.isfinite(w)) and np.max(np.abs(w)) <= max_coef and np.isfinite(error))
    return StepFit(w, error, min(condition, CONDITION_CAP), valid)


StepSolver = Callable[[list[int], int], StepFit]
"""``solve(prefix, target)``: the step whose path so far is ``prefix = [p_0, ..., p_i]``, fitted
on ``[x_0, e_{p_0}, ..., e_{p_i}]`` against the teacher sample ``x_target``."""


def fit_teacher_forced(path: Sequence[int], num_teacher_steps: int, solve: StepSolver) -> PathFit:
    """The paper's fit (Eq. 8) of one path, one ``solve`` per step: step i on the teacher's
    outputs ``e_{p_0..p_i}``, targeting ``x_{p_{i+1}}`` (``p_k = T``)."""
    path = check_path(path, num_teacher_steps)
    targets = [*path[1:], num_teacher_steps]
    steps = [solve(path[: i + 1], target) for i, target in enumerate(targets)]
    return PathFit(
        path,
        [step.weights for step in steps],
        [step.relative_error for step in steps],
        [step.condition_number for step in steps],
        all(step.valid for step in steps),
    )


def teacher_forced_fit(
    traj: Trajectories,
    path: Sequence[int],
    rcond: float = DEFAULT_SVD_RCOND,
    max_coef: float = DEFAULT_MAX_COEF,
) -> PathFit:
    """The paper's fit (Eq. 8) of one path, solved on the recorded data."""

    def solve(prefix: list[int], target: int) -> StepFit:
        columns = [traj.samples[0], *(traj.outputs[p] for p in prefix)]
        design = torch.stack([column.reshape(-1) for column in columns])
        return solve_columns(design, traj.samples[target], rcond=rcond, max_coef=max_coef)

    return fit_teacher_forced(path, traj.num_steps, solve)


def with_idle_steps(fit: PathFit, num_steps: int, num_teacher_steps: int) -> PathFit:
    """``fit`` grown to ``num_steps`` steps that sample exactly as it does.

    Each added step goes in the middle of the widest gap of the path (the gap after the last
    step ends at T): the step before it hands on the same sample ``x_{i+1}`` (the model is then
    evaluated on it at the new timestep), and every later step gives the new output weight 0.
    The report's errors of an idle step repeat those of the step after it.
    """
    path, rows = list(fit.path), [np.asarray(row, dtype=np.float64) for row in fit.coefficients]
    errors, conditions = list(fit.step_errors), list(fit.condition_numbers)
    while len(path) < num_steps:
        ends = [*path, num_teacher_steps]
        width, i = max((ends[j + 1] - ends[j], j) for j in range(len(path)))
        if width < 2:
            raise ValueError(f"cannot add a step to path {path} of {num_teacher_steps} steps")
        path.insert(i + 1, ends[i] + width // 2)
        after = [np.insert(row, i + 2, 0.0) for row in rows[i:]]
        rows = [*rows[: i + 1], *after]
        errors.insert(i, errors[i])
        conditions.insert(i, conditions[i])
    return PathFit(path, rows, errors, conditions, fit.valid)

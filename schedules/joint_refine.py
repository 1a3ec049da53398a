"""Refine a closed-loop fit's coefficients jointly for the final error (Levenberg-Marquardt).

The closed-loop fit (:mod:`schedules.closed_loop`) is greedy: step i is fitted to the teacher
sample ``x_{p_{i+1}}``, then frozen. What matters is the final sample, and an earlier step may
serve the later ones better off the teacher's path. Starting from the greedy coefficients, this
minimises the weighted final residual ``r(w) = sqrt(omega_n) (x_k(w) - x_T)`` over all
coefficients of Eq. (7) of Duan et al. (arXiv:2305.14677) at once by Levenberg-Marquardt
(Marquardt 1963): ``(J^T J + lambda diag(J^T J)) delta = -J^T r``, a step kept only when it
lowers ``||r||^2``.

The model has no gradients here, so the Jacobian is a forward difference: perturbing a weight of
row i moves ``x_{i+1}`` along one basis vector and the schedule is run on from step i+1, which
costs ``k-1-i`` model calls (the last row's columns are exact and free). A Jacobian costs
``sum_i (i+2)(k-1-i)`` model calls: 16 for k=4, 50 for k=6, 112 for k=8.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from schedules.closed_loop import BudgetExhausted, EvaluationBudget, FitGroup

DEFAULT_ITERATIONS = 6
DEFAULT_RELATIVE_STEP = 1e-3
"""Finite-difference step: the perturbed sample moves by this fraction of its norm."""
INITIAL_DAMPING = 1e-3
MAX_DAMPING = 1e6


@dataclass(frozen=True)
class Refinement:
    """Refined coefficient rows and what the refinement did.

    Args:
        rows: one row per step, as :attr:`schedules.fit.PathFit.coefficients`.
        initial_loss, final_loss: ``||r||^2`` before and after.
        iterations: accepted Levenberg-Marquardt steps.
    """

    rows: list[np.ndarray]
    initial_loss: float
    final_loss: float
    iterations: int


class _Simulation:
    """Run one group's schedule with given coefficients, counting model evaluations."""

    def __init__(
        self,
        group: FitGroup,
        path: Sequence[int],
        mask: torch.Tensor,
        weights: torch.Tensor,
        budget: EvaluationBudget,
    ) -> None:
        traj = group.traj
        self.group, self.budget, self.mask = group, budget, mask
        self.timesteps = [traj.timestep(p) for p in path]
        self.shape = traj.samples.shape[1:]
        self.dtype = traj.samples.dtype
        flat = traj.samples.reshape(traj.samples.shape[0], traj.num_examples, -1)
        self.start = [flat[0].to(torch.float64), _flat(traj.outputs[0])]
        self.target = flat[-1].to(torch.float64)
        self.root = weights.to(torch.float64).sqrt()[:, None]

    def run(
        self, rows: Sequence[np.ndarray], first: int = 0, history: list[torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The final sample and the basis ``[x_0, e_0, ..., e_{k-1}]``, from row ``first`` on
        with ``history`` (the basis up to that row) reused."""
        basis = list(history if history is not None else self.start)[: first + 2]
        sample = self.start[0]
        for i in range(first, len(rows)):
            weights = torch.from_numpy(np.asarray(rows[i], dtype=np.float64))
            sample = torch.einsum("m,mnd->nd", weights, torch.stack(basis[: i + 2]))
            if i < len(rows) - 1:
                basis.append(self._model(sample, self.timesteps[i + 1]))
        return sample, basis

    def residual(self, sample: torch.Tensor) -> torch.Tensor:
        """``sqrt(omega_n) (x_n - x_T,n)`` over the fitted examples, flattened."""
        return self.weighted(sample - self.target)

    def weighted(self, change: torch.Tensor) -> torch.Tensor:
        """``sqrt(omega_n) v_n`` over the fitted examples, flattened."""
        return (change[self.mask] * self.root).reshape(-1)

    def _model(self, sample: torch.Tensor, timestep: int | float) -> torch.Tensor:
        if self.budget.exhausted():
            raise BudgetExhausted(f"used {self.budget.evaluations} model evaluations")
        x = sample.reshape(len(sample), *self.shape[1:]).to(self.dtype)
        out = torch.as_tensor(self.group.model_fn(x, timestep)).detach()
        self.budget.evaluations += len(sample)
        out = out.to("cpu", torch.float64).reshape(len(sample), -1)
        if not torch.isfinite(out).all():
            raise FloatingPointError("the model gave non-finite outputs")
        return out


def refine_jointly(
    group: FitGroup,
    path: Sequence[int],
    rows: Sequence[np.ndarray],
    weights: torch.Tensor,
    mask: torch.Tensor | None = None,
    budget: EvaluationBudget | None = None,
    iterations: int = DEFAULT_ITERATIONS,
    relative_step: float = DEFAULT_RELATIVE_STEP,
) -> Refinement:
    """Levenberg-Marquardt on all coefficients of ``rows`` for one group's final error.

    Args:
        group: the examples and their model.
        path: the schedule's teacher steps.
        rows: the starting coefficients (the greedy closed-loop fit).
        weights: per fitted example, its least-squares weight (``omega_n``).
        mask: which examples are fitted (default all; ``weights`` has one entry per fitted one).
        budget: model evaluations and time; when they run out the best rows so far are returned.
        iterations: most Jacobians computed.
        relative_step: finite-difference step (:data:`DEFAULT_RELATIVE_STEP`).
    """
    mask = mask if mask is not None else torch.ones(group.traj.num_examples, dtype=torch.bool)
    sim = _Simulation(group, path, mask, weights, budget or EvaluationBudget())
    best = [np.asarray(row, dtype=np.float64).copy() for row in rows]
    k = len(best)
    try:
        sample, basis = sim.run(best)
    except (BudgetExhausted, FloatingPointError):
        return Refinement(best, float("nan"), float("nan"), 0)
    residual = sim.residual(sample)
    loss = initial = float(residual @ residual)
    damping, accepted = INITIAL_DAMPING, 0
    try:
        for _ in range(iterations):
            jacobian = _jacobian(sim, best, sample, basis, residual, relative_step)
            normal = jacobian.T @ jacobian
            gradient = jacobian.T @ residual
            while damping <= MAX_DAMPING:
                system = normal + damping * torch.diag(torch.diag(normal).clamp_min(1e-300))
                delta = -torch.linalg.solve(system, gradient).numpy()
                trial = _shifted(best, delta)
                trial_sample, trial_basis = sim.run(trial)
                trial_residual = sim.residual(trial_sample)
                trial_loss = float(trial_residual @ trial_residual)
                if trial_loss < loss:
                    best, sample, basis, residual, loss = (
                        trial,
                        trial_sample,
                        trial_basis,
                        trial_residual,
                        trial_loss,
                    )
                    damping, accepted = damping / 3.0, accepted + 1
                    break
                damping *= 4.0
            if damping > MAX_DAMPING or k == 1:
                break
    except (BudgetExhausted, FloatingPointError, torch.linalg.LinAlgError):
        pass
    return Refinement(best, initial, loss, accepted)


def _jacobian(
    sim: _Simulation,
    rows: list[np.ndarray],
    sample: torch.Tensor,
    basis: list[torch.Tensor],
    residual: torch.Tensor,
    relative_step: float,
) -> torch.Tensor:
    """Forward-difference ``d r / d w`` for every weight, row by row; the last row is exact."""
    columns = []
    k = len(rows)
    for i in range(k):
        scale = float(sample.norm()) if i == k - 1 else float(basis[0].norm())
        for m in range(i + 2):
            if i == k - 1:  # x_k is linear in the last row: d x_k / d w_{k-1,m} = basis[m]
                columns.append(sim.weighted(basis[m]))
                continue
            step = relative_step * scale / max(float(basis[m].norm()), 1e-300)
            moved = [row.copy() for row in rows]
            moved[i][m] += step
            perturbed, _ = sim.run(moved, first=i, history=basis)
            columns.append((sim.residual(perturbed) - residual) / step)
    return torch.stack(columns, dim=1)


def _shifted(rows: list[np.ndarray], delta: np.ndarray) -> list[np.ndarray]:
    """``rows`` plus ``delta`` (flattened row by row)."""
    out, start = [], 0
    for row in rows:
        out.append(row + delta[start : start + len(row)])
        start += len(row)
    return out


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1).to(torch.float64)

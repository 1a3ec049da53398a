"""OLSS coefficients that are polynomials in the guidance scale, fitted over a whole grid.

A guidance grid fitted scale by scale (:func:`schedules.olss_search.search_guidance_grid`) gives
each scale its own least-squares coefficients (Duan et al., arXiv:2305.14677, Eq. 7). Those
solves are ill-conditioned, so neighbouring scales can land on different branches and their
linear blend is then a poor schedule. Here every step's coefficients are one polynomial in g,

    w_i(g) = sum_p  C_{i,p} s^p,   s = (g - g_0) / h,   p = 0 .. degree,

fitted jointly over the trajectories of every grid scale, closed-loop (each scale's sample
``x_{i+1} = w_i(g) . [x_0, e_0, .., e_i]`` is run through its guided model before step i+1 is
fitted, as in :mod:`schedules.closed_loop`). The guided output ``eps_u + g (eps_c - eps_u)``
(Ho & Salimans, 2022, eq. 6) is affine in g, so a low degree is natural; the fit is smooth in g by
construction and a served scale between grid points evaluates ``w_i(g)`` instead of blending.
Each scale's examples weigh by ``1 / (||x_T||^2 n_c)`` (its mean squared relative error per
condition, :meth:`schedules.closed_loop.ClosedLoopFitter.weights`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from schedules.closed_loop import ClosedLoopFitter, FitGroup
from schedules.fit import DEFAULT_SVD_RCOND, PathFit, check_path, solve_columns
from schedules.gram import DEFAULT_MAX_COEF
from schedules.guidance_blend import polynomial_coefficients
from schedules.schedule_file import GuidanceInterval, Schedule

DEFAULT_DEGREE = 1
"""Degree of the coefficients' polynomial in g of one interval's fit (chosen on held-out
guidance scales, see docs/BENCHMARKS.md, "Off-grid guidance")."""
DEFAULT_OUTER_WEIGHT = 0.1
"""Least-squares weight of the scales just outside an interval in its fit (its ends weigh 1)."""


@dataclass(frozen=True)
class GuidanceFit:
    """A joint fit: per step the polynomial's terms in ``s = (g - center) / scale``
    (``terms[i][p]``: the ``i + 2`` weights of ``s^p``), and per group (grid scale) its
    closed-loop fit at its own g."""

    center: float
    scale: float
    terms: list[list[list[float]]]
    fits: list[PathFit]
    example_errors: list[np.ndarray]

    @property
    def valid(self) -> bool:
        return all(fit.valid for fit in self.fits)

    def coefficients(self, guidance: float) -> list[list[float]]:
        """``w_i(g)`` for every step i."""
        return polynomial_coefficients(self.center, self.scale, self.terms, guidance)

    def interval(self, low: float, high: float) -> GuidanceInterval:
        """The fit as a schedule file's :class:`GuidanceInterval` from ``low`` to ``high``."""
        return GuidanceInterval(float(low), float(high), self.center, self.scale, self.terms)


def fit_guidance_polynomial(
    groups: Sequence[FitGroup],
    path: Sequence[int],
    degree: int = DEFAULT_DEGREE,
    *,
    group_weights: Sequence[float] | None = None,
    rcond: float = DEFAULT_SVD_RCOND,
    max_coef: float = DEFAULT_MAX_COEF,
) -> GuidanceFit:
    """Fit ``path`` closed-loop on every group at once with coefficients polynomial in g.

    Args:
        groups: one per guidance scale (its trajectories' ``guidance_scale``), same teacher steps.
        path: the teacher step indices all groups share.
        degree: the polynomial's degree; at most ``len(groups) - 1`` (more could not be fitted).
        group_weights: per group, a factor on its examples' least-squares weights (default 1).
        rcond: singular-value cutoff of each step's joint solve.
        max_coef: a step whose polynomial terms exceed this marks the fit invalid.
    """
    scales = [float(g.traj.guidance_scale) for g in groups]
    if len(set(scales)) != len(scales):
        raise ValueError(f"every group needs its own guidance scale, got {scales}")
    if not 0 <= degree < len(groups):
        raise ValueError(f"degree must be 0 to {len(groups) - 1} for {len(groups)} scales")
    weigher = ClosedLoopFitter(groups)  # checks the groups share their teacher steps
    T = weigher.num_teacher_steps
    path = check_path(path, T)
    center = (min(scales) + max(scales)) / 2
    half = (max(scales) - min(scales)) / 2 or 1.0
    powers = [[((g - center) / half) ** p for p in range(degree + 1)] for g in scales]
    factors = [1.0] * len(groups) if group_weights is None else [float(w) for w in group_weights]
    if len(factors) != len(groups) or min(factors) <= 0:
        raise ValueError("group_weights needs one positive weight per group")
    roots = [(weigher.weights(n) * f).sqrt()[:, None] for n, f in enumerate(factors)]
    bases = [torch.stack([_flat(g.traj.samples[0]), _flat(g.traj.outputs[0])]) for g in groups]
    targets = [*path[1:], T]
    terms: list[list[list[float]]] = []
    rows: list[list[np.ndarray]] = [[] for _ in groups]
    errors: list[list[float]] = [[] for _ in groups]
    conditions: list[float] = []
    valid = True
    for i, target_step in enumerate(targets):
        goals = [_flat(g.traj.samples[target_step]) for g in groups]
        design = torch.cat(
            [
                torch.cat([basis * root * s for s in power]).reshape(
                    basis.shape[0] * len(power), -1
                )
                for basis, root, power in zip(bases, roots, powers, strict=True)
            ],
            dim=1,
        )
        goal = torch.cat([(y * root).reshape(-1) for y, root in zip(goals, roots, strict=True)])
        step = solve_columns(design, goal, rcond=rcond, max_coef=max_coef)
        conditions.append(step.condition_number)
        matrix = step.weights.reshape(degree + 1, -1)
        terms.append(matrix.tolist())
        nexts = []
        for n, (basis, root, power, y) in enumerate(zip(bases, roots, powers, goals, strict=True)):
            row = np.asarray(power) @ matrix
            rows[n].append(row)
            x = torch.einsum("m,mnd->nd", torch.from_numpy(row), basis)
            errors[n].append(float(((x - y) * root).norm() / (y * root).norm().clamp_min(1e-300)))
            nexts.append(x)
        if not step.valid:
            valid = False
            break
        if i == len(targets) - 1:
            break
        outputs = []
        for group, x in zip(groups, nexts, strict=True):
            shaped = x.reshape(group.traj.samples.shape[1:]).to(group.traj.samples.dtype)
            out = group.model_fn(shaped, group.traj.timestep(path[i + 1]))
            outputs.append(
                torch.as_tensor(out).detach().to("cpu", torch.float64).reshape(len(x), -1)
            )
        if not all(bool(torch.isfinite(out).all()) for out in outputs):
            valid = False
            break
        bases = [torch.cat([b, out[None]]) for b, out in zip(bases, outputs, strict=True)]
    finals = []
    for group, x in zip(groups, nexts, strict=True):
        reference = _flat(group.traj.samples[T])
        if not valid:
            finals.append(np.full(group.traj.num_examples, np.inf))
            continue
        finals.append(
            ((x - reference).norm(dim=1) / reference.norm(dim=1).clamp_min(1e-300)).numpy()
        )
    fits = [
        PathFit(path, rows[n], errors[n], conditions[: len(rows[n])], valid)
        for n in range(len(groups))
    ]
    return GuidanceFit(center, half, terms, fits, finals)


def _flat(x: torch.Tensor) -> torch.Tensor:
    """``(N, ...)`` as ``(N, D)`` float64."""
    return x.reshape(x.shape[0], -1).to(torch.float64)


def interval_neighbours(
    i: int, num_scales: int, outer_weight: float = DEFAULT_OUTER_WEIGHT
) -> tuple[list[int], list[float]]:
    """The grid scales (ascending indices) fitted for the interval from scale i to i+1, and
    their weights: both ends at 1, the next scale out on either side (where there is one) at
    ``outer_weight``, a local linear fit in g that the outer scales only steady."""
    if not 0 <= i < num_scales - 1:
        raise ValueError(f"no interval {i} in a grid of {num_scales} scales")
    chosen = [j for j in (i - 1, i, i + 1, i + 2) if 0 <= j < num_scales]
    return chosen, [1.0 if j in (i, i + 1) else outer_weight for j in chosen]


def with_guidance_intervals(
    schedules: Sequence[Schedule],
    groups: Sequence[FitGroup],
    degree: int = DEFAULT_DEGREE,
    outer_weight: float = DEFAULT_OUTER_WEIGHT,
) -> list[Schedule]:
    """``schedules`` of :func:`schedules.olss_search.search_guidance_grid` (by step count, then
    group) with, for every scale but the highest, its :class:`GuidanceInterval` up to the next
    scale: :func:`fit_guidance_polynomial` on :func:`interval_neighbours`' groups, along the grid's
    path for that step count. A fit that needs non-finite or exploding coefficients leaves its
    schedule without one (it is then served by the linear blend)."""
    if len(schedules) % len(groups):
        raise ValueError("need one schedule per (step count, group)")
    out = list(schedules)
    order = sorted(range(len(groups)), key=lambda n: float(groups[n].traj.guidance_scale))
    if len(groups) < 2:
        return out
    for first in range(0, len(out), len(groups)):
        row = [out[first + n] for n in range(len(groups))]
        if len({tuple(s.timesteps) for s in row}) != 1:
            continue
        path = row[0].fit_report.path
        for i in range(len(order) - 1):
            chosen, weights = interval_neighbours(i, len(order), outer_weight)
            members = [groups[order[j]] for j in chosen]
            fit = fit_guidance_polynomial(
                members, path, min(degree, len(members) - 1), group_weights=weights
            )
            if not fit.valid:
                continue
            low, high = row[order[i]], row[order[i + 1]]
            out[first + order[i]] = replace(
                low, guidance_interval=fit.interval(low.guidance_scale, high.guidance_scale)
            )
    return out

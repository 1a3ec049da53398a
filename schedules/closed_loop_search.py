"""Closed-loop path selection (beyond the paper): fit candidate paths as they will be sampled.

The paper (Duan et al., arXiv:2305.14677, Sec. 3.3) picks the path by teacher-forced fit error.
Here candidate paths (the paper's path for its smallest bound D and for looser bounds, uniform,
power spacings; :func:`schedules.paths.candidate_paths`) are each fitted closed-loop
(:func:`schedules.fit.closed_loop_fit`); the path with the lowest final closed-loop error wins,
then single-step moves refine it. The cost is bounded by ``max_paths`` closed-loop fits of
``k-1`` model calls each.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from schedules.fit import PathFit, closed_loop_fit
from schedules.gram import DEFAULT_MAX_COEF, DEFAULT_RCOND, GramMatrix
from schedules.paper_search import CandidateFitter, GramFitter, paper_path, paper_path_for_bound
from schedules.paths import NamedPath, candidate_paths, local_moves
from schedules.sampling import ModelFn
from schedules.schedule_file import Candidate
from schedules.trajectory import Trajectories

LOOSER_BOUNDS = (2.0, 4.0, 16.0)
"""Factors on the paper's smallest feasible bound D whose greedy paths are also candidates."""


def closed_loop_candidates(fitter: CandidateFitter, num_steps: int) -> list[NamedPath]:
    """:func:`schedules.paths.candidate_paths` with the paper's paths from ``fitter``.

    Without a teacher-forced path free of exploding coefficients, only the fixed spacings.
    """
    T = fitter.num_steps
    try:
        path, bound = paper_path(fitter, num_steps)
    except ValueError:
        return candidate_paths(T, num_steps)
    looser = []
    for factor in LOOSER_BOUNDS:
        other = paper_path_for_bound(fitter, num_steps, bound * factor)
        if other is not None:
            looser.append((f"paper-D*{factor:g}", other))
    return candidate_paths(T, num_steps, paper=path, looser=looser)


def closed_loop_select(
    traj: Trajectories,
    num_steps: int,
    model_fn: ModelFn,
    gram: GramMatrix,
    max_paths: int = 16,
    rcond: float = DEFAULT_RCOND,
    max_coef: float = DEFAULT_MAX_COEF,
    progress: Callable[[str], None] | None = None,
) -> tuple[PathFit, list[Candidate]]:
    """Fit candidate paths closed-loop and keep the lowest final error; then refine locally.

    At most ``max_paths`` closed-loop fits are run: first the candidates of
    :func:`closed_loop_candidates`, then single-step moves of the best path (each interior
    ``p_i`` shifted by about a third of its gap to a neighbour), accepted when they lower the
    error. Returns the best fit and every path tried, in order.
    """
    T = traj.num_steps
    fitter = GramFitter(gram, rcond=rcond, max_coef=max_coef)
    tried: dict[tuple[int, ...], PathFit] = {}
    log: list[Candidate] = []

    def evaluate(name: str, path: list[int]) -> PathFit | None:
        key = tuple(path)
        if key in tried or len(tried) >= max_paths:
            return tried.get(key)
        fit = closed_loop_fit(traj, path, model_fn, max_coef=max_coef)
        tried[key] = fit
        error = fit.final_error
        log.append(Candidate(name, list(fit.path), error if np.isfinite(error) else None))
        if progress is not None:
            progress(f"{name}: {error:.4g}")
        return fit

    for name, path in closed_loop_candidates(fitter, num_steps):
        evaluate(name, path)
    best = min(tried.values(), key=lambda f: f.final_error)
    improved = True
    while improved and len(tried) < max_paths and num_steps > 1:
        improved = False
        for move in local_moves(best.path, T):
            fit = evaluate("refine", move)
            if fit is not None and fit.final_error < best.final_error:
                best, improved = fit, True
                break
            if len(tried) >= max_paths:
                break
    if not np.isfinite(best.final_error):
        raise ValueError(
            "closed-loop search found no valid path: every candidate needed non-finite or "
            f"exploding coefficients (max_coef={max_coef:g})"
        )
    return best, log

"""The paper's path search: bisection on the error bound D with a greedy walk.

Duan et al. (arXiv:2305.14677, Sec. 3.3): for an error bound D, walk greedily from step 0 to the
farthest teacher step whose one-step (teacher-forced, Eq. 8) fit error is at most D; bisect for
the smallest D that reaches the final sample in k steps. Every fit is a tiny solve from the Gram
matrix (:mod:`schedules.gram`), one solve per greedy step for all candidate targets at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np

from schedules.gram import (
    DEFAULT_MAX_COEF,
    DEFAULT_RCOND,
    GramMatrix,
    design_indices,
    solve_from_gram,
)
from schedules.paths import check_step_count, pad_path

CandidateErrors = Callable[[tuple[int, ...]], tuple[np.ndarray, np.ndarray]]


class CandidateFitter(Protocol):
    """Scores every possible next target for a path prefix (one batched solve)."""

    num_steps: int

    def candidate_errors(self, prefix: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        """Targets ``prefix[-1]+1 .. T`` and their relative fit errors (``inf`` if invalid)."""
        ...


class GramFitter:
    """:class:`CandidateFitter` from a precomputed Gram matrix (the fast path)."""

    def __init__(
        self, gram: GramMatrix, rcond: float = DEFAULT_RCOND, max_coef: float = DEFAULT_MAX_COEF
    ) -> None:
        self.gram = gram
        self.num_steps = gram.num_steps
        self.rcond = rcond
        self.max_coef = max_coef

    def candidate_errors(self, prefix: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        targets = np.arange(prefix[-1] + 1, self.num_steps + 1)
        sol = solve_from_gram(
            self.gram,
            design_indices(self.gram, list(prefix), len(prefix) - 1),
            self.gram.x(targets),
            rcond=self.rcond,
            max_coef=self.max_coef,
        )
        return targets, np.where(sol.valid, sol.relative_errors, np.inf)


def paper_path(
    fitter: CandidateFitter, num_steps: int, rtol: float = 1e-4, max_iter: int = 200
) -> tuple[list[int], float]:
    """The paper's search: bisect on the error bound D; return ``(path, D)``.

    ``greedy(D)`` goes from step 0 to the farthest next step whose fit error is at most D and
    succeeds when the final sample is within D after at most k steps. A path that reaches it in
    fewer steps is padded (:func:`schedules.paths.pad_path`). Candidate errors are cached per
    prefix, so later bisection iterations mostly reuse earlier solves.
    """
    T = fitter.num_steps
    check_step_count(T, num_steps)
    if num_steps == T:
        return list(range(T)), 0.0
    cache: dict[tuple[int, ...], tuple[np.ndarray, np.ndarray]] = {}

    def errors(prefix: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        if prefix not in cache:
            cache[prefix] = fitter.candidate_errors(prefix)
        return cache[prefix]

    def greedy(bound: float) -> list[int] | None:
        return greedy_path(errors, num_steps, bound)

    # Feasibility need not be monotone in D once exploding fits are invalid (a loose bound can
    # jump so far that the last step needs huge coefficients), so scan a log grid for the
    # smallest feasible bound first, then bisect below it.
    grid = np.logspace(-10, 2, 25)
    feasible = [bound for bound in grid if greedy(float(bound)) is not None]
    if not feasible:
        raise ValueError(
            "the paper search found no valid path: every candidate fit needs non-finite or "
            "exploding coefficients; try a larger max_coef or more calibration examples"
        )
    hi = float(feasible[0])
    lo = hi / 10**0.5 if hi > grid[0] else 0.0  # the grid point below: infeasible
    for _ in range(max_iter):
        if hi <= lo * (1.0 + rtol) or lo == 0.0:
            break
        mid = float(np.sqrt(lo * hi))
        if greedy(mid) is None:
            lo = mid
        else:
            hi = mid
    path = greedy(hi)
    assert path is not None
    return pad_path(path, T, num_steps), hi


def paper_path_for_bound(fitter: CandidateFitter, num_steps: int, bound: float) -> list[int] | None:
    """The greedy path for one error bound D (padded to k steps), or ``None`` if infeasible."""
    path = greedy_path(fitter.candidate_errors, num_steps, bound)
    return None if path is None else pad_path(path, fitter.num_steps, num_steps)


def greedy_path(errors: CandidateErrors, num_steps: int, bound: float) -> list[int] | None:
    """From step 0, jump to the farthest next step with fit error <= bound; ``None`` if the final
    sample is not within the bound after ``num_steps`` steps."""
    path = [0]
    while True:
        targets, err = errors(tuple(path))
        if err[-1] <= bound:
            return path
        if len(path) == num_steps:
            return None
        ok = targets[:-1][err[:-1] <= bound]
        if ok.size == 0:
            return None
        path.append(int(ok.max()))

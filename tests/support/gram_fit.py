"""The teacher-forced fit (arXiv:2305.14677, Eq. 8) from Gram entries only, for the tests.

Production fits solve on the data (:func:`schedules.fit.teacher_forced_fit`); the path search
scores candidates from the Gram matrix. Fitting a whole path from Gram entries checks those
solves against a direct least-squares fit.
"""

from __future__ import annotations

from collections.abc import Sequence

from schedules.fit import CONDITION_CAP, PathFit, StepFit, fit_teacher_forced
from schedules.gram import (
    DEFAULT_MAX_COEF,
    DEFAULT_RCOND,
    GramMatrix,
    design_indices,
    solve_from_gram,
)


def teacher_forced_fit_gram(
    gram: GramMatrix,
    path: Sequence[int],
    rcond: float = DEFAULT_RCOND,
    max_coef: float = DEFAULT_MAX_COEF,
) -> PathFit:
    """The teacher-forced fit from Gram entries only (fast; accurate to ~sqrt(eps))."""

    def solve(prefix: list[int], target: int) -> StepFit:
        design = design_indices(gram, prefix, len(prefix) - 1)
        sol = solve_from_gram(gram, design, [gram.x(target)], rcond=rcond, max_coef=max_coef)
        condition = min(sol.condition_number, CONDITION_CAP)
        return StepFit(
            sol.weights[:, 0], float(sol.relative_errors[0]), condition, bool(sol.valid[0])
        )

    return fit_teacher_forced(path, gram.num_steps, solve)

"""Choose an OLSS path and fit it: the paper's bisection, OLSS-P (uniform) and closed-loop.

* ``"paper"`` (Duan et al., arXiv:2305.14677, Sec. 3.3): for an error bound D, walk greedily
  from step 0 to the farthest teacher step whose one-step (teacher-forced) fit error is at most
  D; bisect for the smallest D that reaches the final sample in k steps. Every fit is a tiny
  solve from the Gram matrix (:mod:`schedules.gram`), one solve per greedy step for all candidate
  targets at once.
* ``"uniform"`` (the paper's OLSS-P): the same teacher-forced fit on evenly spaced steps.
* ``"closed-loop"`` (default, beyond the paper): candidate paths (paper paths for a range of D,
  uniform, power spacings) are fitted closed-loop (:func:`schedules.fit.closed_loop_fit`) and the
  path with the lowest final closed-loop error wins, then a few local moves refine it. The cost
  is bounded by ``max_paths`` closed-loop fits of ``k-1`` model calls each.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from schedules.fit import ModelFn, PathFit, check_path, closed_loop_fit, teacher_forced_fit
from schedules.gram import (
    DEFAULT_MAX_COEF,
    DEFAULT_RCOND,
    GramMatrix,
    design_indices,
    gram_matrix,
    solve_from_gram,
)
from schedules.schedule_file import METHODS, FitReport, Schedule, TeacherInfo
from schedules.trajectory import Trajectories


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


def uniform_path(num_teacher_steps: int, num_steps: int) -> list[int]:
    """OLSS-P: ``p_i = round(i T / k)``."""
    _check_k(num_teacher_steps, num_steps)
    return [round(i * num_teacher_steps / num_steps) for i in range(num_steps)]


def power_path(
    num_teacher_steps: int, num_steps: int, gamma: float, reverse: bool = False
) -> list[int]:
    """``p_i = T (i/k)^gamma`` (dense near the noise for gamma > 1), or ``T (1 - (1 - i/k)^gamma)``
    when ``reverse`` (dense near the final sample), made strictly increasing."""
    _check_k(num_teacher_steps, num_steps)
    u = np.arange(num_steps) / num_steps
    f = 1.0 - (1.0 - u) ** gamma if reverse else u**gamma
    return _regularize([round(v) for v in num_teacher_steps * f], num_teacher_steps)


def paper_path(
    fitter: CandidateFitter, num_steps: int, rtol: float = 1e-4, max_iter: int = 200
) -> tuple[list[int], float]:
    """The paper's search: bisect on the error bound D; return ``(path, D)``.

    ``greedy(D)`` goes from step 0 to the farthest next step whose fit error is at most D and
    succeeds when the final sample is within D after at most k steps. A path that reaches it in
    fewer steps is padded (:func:`pad_path`). Candidate errors are cached per prefix, so later
    bisection iterations mostly reuse earlier solves.
    """
    T = fitter.num_steps
    _check_k(T, num_steps)
    if num_steps == T:
        return list(range(T)), 0.0
    cache: dict[tuple[int, ...], tuple[np.ndarray, np.ndarray]] = {}

    def errors(prefix: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        if prefix not in cache:
            cache[prefix] = fitter.candidate_errors(prefix)
        return cache[prefix]

    def greedy(bound: float) -> list[int] | None:
        return _greedy(errors, num_steps, bound)

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
    path = _greedy(fitter.candidate_errors, num_steps, bound)
    return None if path is None else pad_path(path, fitter.num_steps, num_steps)


def _greedy(
    errors: Callable[[tuple[int, ...]], tuple[np.ndarray, np.ndarray]], num_steps: int, bound: float
) -> list[int] | None:
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


def pad_path(path: list[int], num_teacher_steps: int, num_steps: int) -> list[int]:
    """Add steps in the middle of the largest gaps until the path has k steps."""
    path = sorted(path)
    while len(path) < num_steps:
        ends = [*path, num_teacher_steps]
        gaps = [(ends[i + 1] - ends[i], i) for i in range(len(path))]
        width, i = max(gaps)
        if width < 2:
            raise ValueError(f"cannot pad path {path} to {num_steps} steps")
        path.insert(i + 1, ends[i] + width // 2)
    return path


def candidate_paths(
    num_teacher_steps: int, num_steps: int, fitter: CandidateFitter | None = None
) -> list[tuple[str, list[int]]]:
    """Named candidate paths for the closed-loop selection, deduplicated, best guesses first."""
    T, k = num_teacher_steps, num_steps
    named: list[tuple[str, list[int]]] = []
    bound = None
    if fitter is not None:
        try:
            path, bound = paper_path(fitter, k)
            named.append(("paper", path))
        except ValueError:  # no teacher-forced path without exploding coefficients
            bound = None
    named.append(("uniform", uniform_path(T, k)))
    for gamma in (1.5, 2.0):
        named.append((f"power{gamma:g}", power_path(T, k, gamma)))
        named.append((f"reverse-power{gamma:g}", power_path(T, k, gamma, reverse=True)))
    if fitter is not None and bound is not None:
        for factor in (2.0, 4.0, 16.0):
            other = paper_path_for_bound(fitter, k, bound * factor)
            if other is not None:
                named.append((f"paper-D*{factor:g}", other))
    for gamma in (0.7, 3.0):
        named.append((f"power{gamma:g}", power_path(T, k, gamma)))
    seen: set[tuple[int, ...]] = set()
    unique = []
    for name, path in named:
        if tuple(path) not in seen:
            seen.add(tuple(path))
            unique.append((name, path))
    return unique


def closed_loop_select(
    traj: Trajectories,
    num_steps: int,
    model_fn: ModelFn,
    gram: GramMatrix,
    max_paths: int = 16,
    rcond: float = DEFAULT_RCOND,
    max_coef: float = DEFAULT_MAX_COEF,
    progress: Callable[[str], None] | None = None,
) -> tuple[PathFit, list[dict[str, Any]]]:
    """Fit candidate paths closed-loop and keep the lowest final error; then refine locally.

    At most ``max_paths`` closed-loop fits are run: first the candidates of
    :func:`candidate_paths`, then single-step moves of the best path (each interior ``p_i``
    shifted by about a third of its gap to a neighbour), accepted when they lower the error.
    """
    T = traj.num_steps
    fitter = GramFitter(gram, rcond=rcond, max_coef=max_coef)
    tried: dict[tuple[int, ...], PathFit] = {}
    log: list[dict[str, Any]] = []

    def evaluate(name: str, path: list[int]) -> PathFit | None:
        key = tuple(path)
        if key in tried or len(tried) >= max_paths:
            return tried.get(key)
        fit = closed_loop_fit(traj, path, model_fn, max_coef=max_coef)
        tried[key] = fit
        error = fit.final_error
        log.append(
            {"name": name, "path": list(path), "error": error if np.isfinite(error) else None}
        )
        if progress is not None:
            progress(f"{name}: {error:.4g}")
        return fit

    for name, path in candidate_paths(T, num_steps, fitter):
        evaluate(name, path)
    best = min(tried.values(), key=lambda f: f.final_error)
    improved = True
    while improved and len(tried) < max_paths and num_steps > 1:
        improved = False
        for move in _local_moves(best.path, T):
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


def search(
    traj: Trajectories,
    num_steps: int = 5,
    model_fn: ModelFn | None = None,
    method: str = "closed-loop",
    *,
    path: list[int] | None = None,
    gram: GramMatrix | None = None,
    max_paths: int = 16,
    rcond: float = DEFAULT_RCOND,
    max_coef: float = DEFAULT_MAX_COEF,
    progress: Callable[[str], None] | None = None,
) -> Schedule:
    """Fit a k-step OLSS schedule to teacher trajectories.

    Args:
        traj: recorded teacher trajectories (:class:`schedules.trajectory.Trajectories`).
        num_steps: k, the schedule's step count (``1 <= k <= T``).
        model_fn: ``model_fn(sample, timestep) -> guided output`` for the N examples of ``traj``
            in recorded order (``sample`` is ``(N, ...)`` in the recordings' dtype, ``timestep``
            a Python number). Required for ``"closed-loop"``.
        method: ``"closed-loop"`` (default), ``"paper"`` or ``"uniform"``.
        path: fit this path instead of searching one (``len(path)`` must be k).
        gram: a precomputed :func:`schedules.gram.gram_matrix` of ``traj``.
        max_paths: closed-loop fits allowed to the closed-loop search.
        rcond: eigenvalue cutoff of the Gram solves used to score candidate paths (final
            coefficients are solved on the data, see :func:`schedules.fit.solve_columns`).
        max_coef: coefficients above this in magnitude make a search candidate invalid. A
            teacher-forced fit that still needs them (e.g. the uniform path) is kept, with a
            ``RuntimeWarning`` and a note in ``fit_report.warnings``; non-finite ones raise.
        progress: optional callback receiving one line per closed-loop candidate.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if method == "closed-loop" and model_fn is None:
        raise ValueError(
            'method="closed-loop" needs model_fn(sample, timestep) -> guided model output; '
            'pass one, or use method="paper" or "uniform"'
        )
    T = traj.num_steps
    _check_k(T, num_steps)
    if path is not None:
        path = check_path(path, T)
        if len(path) != num_steps:
            raise ValueError(f"path has {len(path)} steps but num_steps={num_steps}")
    if gram is None and (path is None and method != "uniform"):
        gram = gram_matrix(traj)
    candidates: list[dict[str, Any]] = []
    if method == "closed-loop":
        assert model_fn is not None
        if path is not None:
            fit = closed_loop_fit(traj, path, model_fn, max_coef=max_coef)
        else:
            fit, candidates = closed_loop_select(
                traj, num_steps, model_fn, gram, max_paths, rcond, max_coef, progress
            )
    else:
        if path is None:
            if method == "paper":
                path, _ = paper_path(GramFitter(gram, rcond, max_coef), num_steps)
            else:
                path = uniform_path(T, num_steps)
        fit = teacher_forced_fit(traj, path, max_coef=max_coef)
    warnings_: list[str] = []
    if not fit.valid:
        finite = all(np.all(np.isfinite(row)) for row in fit.coefficients)
        if method == "closed-loop" or not finite or len(fit.coefficients) < len(fit.path):
            raise ValueError(
                f"the {method} fit of path {fit.path} needs non-finite or exploding coefficients "
                f"(max_coef={max_coef:g}); pick another path or method"
            )
        largest = max(float(np.max(np.abs(row))) for row in fit.coefficients)
        message = (
            f"{method} fit of path {fit.path} has coefficients up to {largest:.3g} "
            f"(> max_coef={max_coef:g}); sampling with it may diverge"
        )
        warnings.warn(message, RuntimeWarning, stacklevel=2)
        warnings_.append(message)
    return schedule_from_fit(traj, fit, method, candidates, warnings_)


def schedule_from_fit(
    traj: Trajectories,
    fit: PathFit,
    method: str,
    candidates: list[dict[str, Any]] | None = None,
    warnings: list[str] | None = None,
) -> Schedule:
    """Wrap a fit and the trajectories' metadata into a :class:`Schedule`."""
    return Schedule(
        model_id=traj.model_id,
        teacher=TeacherInfo(
            scheduler_class=traj.teacher_class,
            config=dict(traj.teacher_config or {}),
            num_steps=traj.num_steps,
        ),
        guidance_scale=float(traj.guidance_scale),
        resolution=traj.resolution,
        num_examples=traj.num_examples,
        timesteps=[traj.timestep(p) for p in fit.path],
        coefficients=[[float(c) for c in row] for row in fit.coefficients],
        init_noise_sigma=float(traj.init_noise_sigma),
        method=method,
        fit_report=FitReport(
            path=list(fit.path),
            step_errors=list(fit.step_errors),
            condition_numbers=list(fit.condition_numbers),
            candidates=list(candidates or []),
            warnings=list(warnings or []),
        ),
    )


def _check_k(num_teacher_steps: int, num_steps: int) -> None:
    if not 1 <= num_steps <= num_teacher_steps:
        raise ValueError(
            f"num_steps must be between 1 and the teacher's {num_teacher_steps} steps, "
            f"got {num_steps}"
        )


def _regularize(path: list[int], num_teacher_steps: int) -> list[int]:
    """Force ``p_0 = 0``, strictly increasing, ``p_{k-1} <= T-1`` with minimal moves."""
    k = len(path)
    out = [0] * k
    for i in range(1, k):
        out[i] = max(path[i], out[i - 1] + 1)
    for i in range(k - 1, 0, -1):
        out[i] = min(out[i], num_teacher_steps - (k - i))
    return out


def _local_moves(path: list[int], num_teacher_steps: int) -> list[list[int]]:
    """Paths that move one interior step about a third of the way to a neighbour."""
    ends = [*path, num_teacher_steps]
    moves = []
    for i in range(1, len(path)):
        for neighbour in (ends[i - 1], ends[i + 1]):
            shift = round((neighbour - path[i]) / 3)
            if shift == 0:
                continue
            moved = list(path)
            moved[i] += shift
            if all(b > a for a, b in itertools.pairwise(moved)) and moved[-1] < num_teacher_steps:
                moves.append(moved)
    return moves

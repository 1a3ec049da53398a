"""Choose an OLSS path and fit it, by :class:`~schedules.schedule_file.Method`; build the Schedule.

* ``"paper"`` (Duan et al., arXiv:2305.14677, Sec. 3.3): the bisection on the error bound with a
  greedy walk (:mod:`schedules.paper_search`), then the teacher-forced fit (Eq. 8).
* ``"uniform"`` (the paper's OLSS-P): the same teacher-forced fit on evenly spaced steps.
* ``"closed-loop"`` (default, beyond the paper): candidate paths fitted closed-loop, the lowest
  final error wins (:mod:`schedules.closed_loop_search`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np

from schedules.closed_loop_search import closed_loop_select
from schedules.fit import PathFit, check_path, closed_loop_fit, teacher_forced_fit
from schedules.gram import DEFAULT_MAX_COEF, DEFAULT_RCOND, GramMatrix, gram_matrix
from schedules.paper_search import GramFitter, paper_path
from schedules.paths import check_step_count, uniform_path
from schedules.sampling import ModelFn
from schedules.schedule_file import Candidate, FitReport, Method, Schedule, TeacherInfo
from schedules.trajectory import Trajectories


def search(
    traj: Trajectories,
    num_steps: int = 5,
    model_fn: ModelFn | None = None,
    method: Method | str = Method.CLOSED_LOOP,
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
        method: a :class:`Method` or its value: ``"closed-loop"`` (default), ``"paper"`` or
            ``"uniform"``.
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
    method = _method(method)
    if method is Method.CLOSED_LOOP and model_fn is None:
        raise ValueError(
            'method="closed-loop" needs model_fn(sample, timestep) -> guided model output; '
            'pass one, or use method="paper" or "uniform"'
        )
    T = traj.num_steps
    check_step_count(T, num_steps)
    if path is not None:
        path = check_path(path, T)
        if len(path) != num_steps:
            raise ValueError(f"path has {len(path)} steps but num_steps={num_steps}")
    if gram is None and (path is None and method is not Method.UNIFORM):
        gram = gram_matrix(traj)
    candidates: list[Candidate] = []
    if method is Method.CLOSED_LOOP:
        assert model_fn is not None
        if path is not None:
            fit = closed_loop_fit(traj, path, model_fn, max_coef=max_coef)
        else:
            fit, candidates = closed_loop_select(
                traj, num_steps, model_fn, gram, max_paths, rcond, max_coef, progress
            )
    else:
        if path is None:
            if method is Method.PAPER:
                path, _ = paper_path(GramFitter(gram, rcond, max_coef), num_steps)
            else:
                path = uniform_path(T, num_steps)
        fit = teacher_forced_fit(traj, path, max_coef=max_coef)
    warnings_: list[str] = []
    if not fit.valid:
        finite = all(np.all(np.isfinite(row)) for row in fit.coefficients)
        if method is Method.CLOSED_LOOP or not finite or len(fit.coefficients) < len(fit.path):
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
    method: Method | str,
    candidates: Sequence[Candidate] = (),
    warnings: Sequence[str] = (),
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
            candidates=list(candidates),
            warnings=list(warnings),
        ),
    )


def _method(method: Method | str) -> Method:
    try:
        return Method(method)
    except ValueError:
        choices = ", ".join(Method)
        raise ValueError(f"unknown method {method!r}; choose one of {choices}") from None

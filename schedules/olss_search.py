"""Choose an OLSS path and fit it, by :class:`~schedules.schedule_file.Method`; build Schedules.

* ``"paper"`` (Duan et al., arXiv:2305.14677, Sec. 3.3): the bisection on the error bound with a
  greedy walk (:mod:`schedules.paper_search`), then the teacher-forced fit (Eq. 8).
* ``"uniform"`` (the paper's OLSS-P): the same teacher-forced fit on evenly spaced steps.
* ``"closed-loop"`` (default, beyond the paper): candidate paths fitted closed-loop and refined by
  coordinate descent, each step count seeded by the shorter one and never worse than it on
  validation examples (:mod:`schedules.schedule_search`).

:func:`search` fits one step count; :func:`search_steps` fits several at once (seeded and
monotone); :func:`search_guidance_grid` fits several guidance scales that share one path, for
:mod:`schedules.guidance_blend`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from schedules.closed_loop import ClosedLoopFitter, EvaluationBudget, FitGroup
from schedules.error_stats import error_stats
from schedules.fit import PathFit, check_path, teacher_forced_fit
from schedules.gram import DEFAULT_MAX_COEF, DEFAULT_RCOND, GramMatrix, gram_matrix
from schedules.paper_search import GramFitter, paper_path
from schedules.paths import check_step_count, uniform_path
from schedules.sampling import ModelFn
from schedules.schedule_file import (
    MAX_COEFFICIENT,
    Candidate,
    FitCost,
    FitReport,
    Method,
    Schedule,
    TeacherInfo,
)
from schedules.schedule_search import SteppedFit, search_step_counts
from schedules.search_examples import DEFAULT_SEARCH_EXAMPLES, DEFAULT_VALIDATION_FRACTION
from schedules.trajectory import Trajectories


def search(
    traj: Trajectories,
    num_steps: int = 5,
    model_fn: ModelFn | None = None,
    method: Method | str = Method.CLOSED_LOOP,
    *,
    path: list[int] | None = None,
    gram: GramMatrix | None = None,
    budget: EvaluationBudget | None = None,
    search_examples: int | None = DEFAULT_SEARCH_EXAMPLES,
    validation_fraction: float = DEFAULT_VALIDATION_FRACTION,
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
        path: fit this path instead of searching one (``len(path)`` must be k); closed-loop on
            every example.
        gram: a precomputed :func:`schedules.gram.gram_matrix` of ``traj`` (paper method).
        budget: model evaluations and time for the closed-loop path search
            (:class:`schedules.closed_loop.EvaluationBudget`; default: until the coordinate
            descent stops by itself).
        search_examples: most examples the closed-loop path search runs on
            (:func:`schedules.schedule_search.search_step_counts`).
        validation_fraction: share of each condition's examples the closed-loop fit holds out
            to validate.
        rcond: eigenvalue cutoff of the Gram solves used to score teacher-forced paths (final
            coefficients are solved on the data, see :func:`schedules.fit.solve_columns`).
        max_coef: coefficients above this in magnitude make a search candidate invalid. A
            teacher-forced fit that still needs them (e.g. the uniform path) is kept, with a
            ``RuntimeWarning`` and a note in ``fit_report.warnings``, up to
            :data:`schedules.schedule_file.MAX_COEFFICIENT`; beyond, or non-finite, it raises.
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
    if method is Method.CLOSED_LOOP:
        assert model_fn is not None
        if path is None:
            (schedule,) = search_steps(
                traj,
                [num_steps],
                model_fn,
                budget=budget,
                search_examples=search_examples,
                validation_fraction=validation_fraction,
                rcond=rcond,
                max_coef=max_coef,
                progress=progress,
            )
            return schedule
        fitter = ClosedLoopFitter([FitGroup(traj, model_fn)], max_coef=max_coef)
        fitted = fitter.fit(path)
        if not fitted.valid:
            raise ValueError(
                f"the closed-loop fit of path {path} needs non-finite or exploding coefficients "
                f"(max_coef={max_coef:g}); pick another path"
            )
        stats = error_stats(fitted.example_errors[0], traj.condition_labels())
        schedule = schedule_from_fit(traj, fitted.fits[0], method)
        return schedule.with_report(fit_stats=stats)
    if path is None:
        if method is Method.PAPER:
            fitter_gram = gram if gram is not None else gram_matrix(traj)
            path, _ = paper_path(GramFitter(fitter_gram, rcond, max_coef), num_steps)
        else:
            path = uniform_path(T, num_steps)
    fit = teacher_forced_fit(traj, path, max_coef=max_coef)
    return schedule_from_fit(traj, fit, method, warnings=_large_coefficients(fit, method, max_coef))


def search_steps(
    traj: Trajectories,
    step_counts: Sequence[int],
    model_fn: ModelFn,
    **options: Any,
) -> list[Schedule]:
    """Closed-loop schedules for several step counts, ascending: each seeded by the one before
    and never worse than it on validation examples. ``options`` are those of
    :func:`search_guidance_grid`."""
    return search_guidance_grid([FitGroup(traj, model_fn)], step_counts, **options)


def search_guidance_grid(
    groups: Sequence[FitGroup],
    step_counts: Sequence[int],
    *,
    budget: EvaluationBudget | None = None,
    search_examples: int | None = DEFAULT_SEARCH_EXAMPLES,
    validation_fraction: float = DEFAULT_VALIDATION_FRACTION,
    rcond: float = DEFAULT_RCOND,
    max_coef: float = DEFAULT_MAX_COEF,
    progress: Callable[[str], None] | None = None,
) -> list[Schedule]:
    """Closed-loop schedules for every (step count, group), all groups of a step count on one
    path (:func:`schedules.schedule_search.search_step_counts`); ordered by step count, then
    group. Each group is typically one guidance scale (its trajectories' ``guidance_scale``)."""
    results = search_step_counts(
        groups,
        step_counts,
        budget=budget,
        search_examples=search_examples,
        validation_fraction=validation_fraction,
        rcond=rcond,
        max_coef=max_coef,
        progress=progress,
    )
    grid = [float(g.traj.guidance_scale) for g in groups] if len(groups) > 1 else []
    return [
        _grid_schedule(group, g, result, grid)
        for result in results
        for g, group in enumerate(groups)
    ]


def _grid_schedule(group: FitGroup, g: int, result: SteppedFit, grid: list[float]) -> Schedule:
    """Group g's schedule of ``result``, with its error statistics and the search cost."""
    traj = group.traj
    conditions = np.asarray(traj.condition_labels(), dtype=object)
    mask = result.fit_mask[g].numpy()
    errors = result.example_errors[g]
    notes = []
    if result.idle_from is not None:
        notes.append(
            f"no {result.num_steps}-step path beat the {result.idle_from}-step schedule on the "
            f"validation examples, so this schedule repeats it with "
            f"{result.num_steps - result.idle_from} idle step(s) (model calls whose output is "
            "not used)"
        )
    schedule = schedule_from_fit(traj, result.fits[g], Method.CLOSED_LOOP, result.candidates, notes)
    return schedule.with_report(
        fit_stats=error_stats(errors[mask], list(conditions[mask])),
        validation=error_stats(errors[~mask], list(conditions[~mask])) if (~mask).any() else None,
        cost=FitCost(evaluations=int(result.evaluations), seconds=float(result.seconds)),
        guidance_grid=grid,
    )


def _large_coefficients(fit: PathFit, method: Method, max_coef: float) -> list[str]:
    """Warnings for a teacher-forced fit past ``max_coef``; ``ValueError`` past the file's
    bound or for non-finite ones."""
    if fit.valid:
        return []
    finite = all(np.all(np.isfinite(row)) for row in fit.coefficients)
    largest = max(float(np.max(np.abs(row))) for row in fit.coefficients) if finite else np.inf
    if not finite or len(fit.coefficients) < len(fit.path) or largest > MAX_COEFFICIENT:
        raise ValueError(
            f"the {method} fit of path {fit.path} needs non-finite or exploding coefficients "
            f"(largest {largest:.3g}, max_coef={max_coef:g}); pick another path or method"
        )
    message = (
        f"{method} fit of path {fit.path} has coefficients up to {largest:.3g} "
        f"(> max_coef={max_coef:g}); sampling with it may diverge"
    )
    warnings.warn(message, RuntimeWarning, stacklevel=3)
    return [message]


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
            config=json_safe_config(traj.teacher_config or {}),
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


def json_safe_config(config: dict[str, Any]) -> dict[str, Any]:
    """A scheduler config without its non-finite floats, which JSON cannot hold: diffusers' only
    one is ``DPMSolverMultistepScheduler``'s default ``lambda_min_clipped = -inf``, which
    ``from_config`` restores when the key is absent."""
    return {
        key: value
        for key, value in config.items()
        if not (isinstance(value, float) and not np.isfinite(value))
    }


def _method(method: Method | str) -> Method:
    try:
        return Method(method)
    except ValueError:
        choices = ", ".join(Method)
        raise ValueError(f"unknown method {method!r}; choose one of {choices}") from None

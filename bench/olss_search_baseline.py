"""The closed-loop OLSS search as it shipped before issue 9 (commit e300f6d), kept as a baseline.

``bench.olss_quality`` and ``tests/schedules`` compare the current search
(:mod:`schedules.schedule_search`) against it on the same trajectories. What it did: each
candidate path (:func:`schedules.closed_loop_search.closed_loop_candidates`) fitted closed-loop by
one pooled, unweighted least squares per step over all examples; then single-step moves of the
best path (an interior step shifted a third of the way to a neighbour) while they helped; at most
``max_paths=16`` fits; no seeding from shorter schedules, no validation, no joint refinement.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import torch

from schedules.closed_loop_search import closed_loop_candidates
from schedules.fit import PathFit, check_path, solve_columns
from schedules.gram import gram_matrix
from schedules.olss_search import schedule_from_fit
from schedules.paper_search import GramFitter
from schedules.sampling import ModelFn
from schedules.schedule_file import Candidate, Method, Schedule
from schedules.trajectory import Trajectories

MAX_PATHS = 16


def pooled_closed_loop_fit(traj: Trajectories, path: Sequence[int], model_fn: ModelFn) -> PathFit:
    """The old closed-loop fit: step by step on the schedule's own samples, each step one
    unweighted least squares over every element of every example."""
    T = traj.num_steps
    path = check_path(path, T)
    targets = [*path[1:], T]
    shape = traj.samples.shape[1:]
    basis = [traj.samples[0].reshape(-1).double(), traj.outputs[0].reshape(-1).double()]
    rows, errors, conditions = [], [], []
    for i in range(len(path)):
        design = torch.stack(basis)
        step = solve_columns(design, traj.samples[targets[i]])
        rows.append(step.weights)
        errors.append(step.relative_error)
        conditions.append(step.condition_number)
        if not step.valid:
            return PathFit(path, rows, errors, conditions, valid=False)
        if i == len(path) - 1:
            break
        x_next = (torch.from_numpy(step.weights) @ design).reshape(shape)
        output = model_fn(x_next.to(traj.samples.dtype), traj.timestep(path[i + 1]))
        output = torch.as_tensor(output).detach().to("cpu", torch.float64).reshape(-1)
        if not torch.isfinite(output).all():
            return PathFit(path, rows, errors, conditions, valid=False)
        basis.append(output)
    return PathFit(path, rows, errors, conditions, valid=True)


def third_of_gap_moves(path: list[int], num_teacher_steps: int) -> list[list[int]]:
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


def baseline_search(
    traj: Trajectories, num_steps: int, model_fn: ModelFn, max_paths: int = MAX_PATHS
) -> Schedule:
    """The pre-issue-9 closed-loop schedule for ``num_steps`` steps."""
    T = traj.num_steps
    tried: dict[tuple[int, ...], PathFit] = {}
    log: list[Candidate] = []

    def evaluate(name: str, path: list[int]) -> PathFit | None:
        key = tuple(path)
        if key in tried or len(tried) >= max_paths:
            return tried.get(key)
        fit = pooled_closed_loop_fit(traj, path, model_fn)
        tried[key] = fit
        error = fit.final_error
        log.append(Candidate(name, list(fit.path), error if np.isfinite(error) else None))
        return fit

    for name, path in closed_loop_candidates(GramFitter(gram_matrix(traj)), num_steps):
        evaluate(name, path)
    best = min(tried.values(), key=lambda f: f.final_error)
    improved = True
    while improved and len(tried) < max_paths and num_steps > 1:
        improved = False
        for move in third_of_gap_moves(best.path, T):
            fit = evaluate("refine", move)
            if fit is not None and fit.final_error < best.final_error:
                best, improved = fit, True
                break
            if len(tried) >= max_paths:
                break
    if not np.isfinite(best.final_error):
        raise ValueError("the baseline search found no valid path")
    return schedule_from_fit(traj, best, Method.CLOSED_LOOP, log)

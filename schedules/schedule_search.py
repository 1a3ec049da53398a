"""Closed-loop OLSS schedules for several step counts at once, monotone in the step count.

For step counts ``k_1 < k_2 < ...`` (Duan et al., arXiv:2305.14677, fitted closed-loop, see
:mod:`schedules.closed_loop_search`):

1. Each group's examples are split, condition by condition, into a fit part and a validation
   part (``validation_fraction``). The path search runs on at most ``search_examples`` fitted
   examples per group (spread over its conditions), under an :class:`EvaluationBudget` shared
   out over the step counts in proportion to k.
2. The search for ``k_j`` is seeded with the best ``k_{j-1}`` path with steps inserted, one at a
   time, each in the gap where it helps most.
3. The chosen path is fitted on every fitted example, then its coefficients are refined jointly
   for the final error (:mod:`schedules.joint_refine`, on the search examples; kept per group
   where the validation error drops; skipped, its budget share going to the path search, when
   that share cannot pay for one iteration); the validation examples run through it.
   It is accepted only if no group's validation error is higher than that of the schedule for
   ``k_{j-1}``; otherwise the ``k_{j-1}`` schedule is kept with idle steps inserted
   (:func:`schedules.fit.with_idle_steps`), which samples exactly as it does.
4. A pruning pass, longest first: the ``k_{j+1}`` schedule's path is cut to ``k_j`` steps, one
   interior step removed at a time, each removal the one that fits best (seeding from above
   finds paths that growing from below missed, when the longer schedule's search moved its
   steps); the removals are fitted like the final fits, on top of the budget
   (:func:`_pruned_seeds`). The best ``k_j``-step path replaces the ``k_j`` schedule when it
   scores better on the search examples than the ``k_j`` path's greedy fit and its final fit
   validates better than the ``k_j`` schedule; then each schedule that now validates worse
   than the one before it is replaced by that one with idle steps. So the error never rises
   with the step count on the validation examples.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial

import numpy as np
import torch

from schedules.closed_loop import ClosedLoopFit, ClosedLoopFitter, EvaluationBudget, FitGroup
from schedules.closed_loop_search import (
    DEFAULT_SWEEPS,
    DEFAULT_TOLERANCE,
    PathSearch,
    closed_loop_candidates,
    insertions,
    removals,
)
from schedules.fit import PathFit, with_idle_steps
from schedules.gram import DEFAULT_MAX_COEF, DEFAULT_RCOND, gram_matrix
from schedules.joint_refine import DEFAULT_ITERATIONS, refine_jointly
from schedules.paper_search import GramFitter
from schedules.paths import check_step_count
from schedules.schedule_file import Candidate
from schedules.search_examples import (
    DEFAULT_SEARCH_EXAMPLES,
    DEFAULT_VALIDATION_FRACTION,
    concat_trajectories,
    search_fitter,
    validation_masks,
)

DEFAULT_REFINE_SHARE = 0.5
"""Share of a step count's budget kept for the joint refinement of its coefficients."""
REFINE_MAX_STEPS = 10
"""Longest schedule refined jointly: a Jacobian costs ``sum_i (i+2)(k-1-i)`` model calls (210
at k=10, 680 at k=15), and from about 10 steps on the greedy fit is near the teacher's floor."""


@dataclass(frozen=True)
class SteppedFit:
    """The result for one step count.

    Args:
        num_steps: k.
        fits: per group, the path's coefficients fitted on the group's fitted examples.
        validation_errors: per group, the balanced RMS error of its validation examples
            (:func:`schedules.closed_loop_search.balanced_rms`), or ``None`` without any.
        example_errors: per group, every example's final relative error.
        fit_mask: per group, which examples were fitted (the others validate).
        candidates: every path the search scored for this k, in order.
        evaluations: model evaluations spent on this k (search and final fit).
        seconds: wall time spent on this k.
        idle_from: the shorter step count whose schedule this one repeats with idle steps, when
            no searched path beat it on the validation examples.
        pruned_from: the longer step count whose path, with steps removed, seeded the search
            that found this schedule (the pruning pass).
    """

    num_steps: int
    fits: list[PathFit]
    validation_errors: list[float | None]
    example_errors: list[np.ndarray]
    fit_mask: list[torch.Tensor]
    candidates: list[Candidate]
    evaluations: int
    seconds: float
    idle_from: int | None = None
    pruned_from: int | None = None


def search_step_counts(
    groups: Sequence[FitGroup],
    step_counts: Sequence[int],
    *,
    budget: EvaluationBudget | None = None,
    search_examples: int | None = DEFAULT_SEARCH_EXAMPLES,
    validation_fraction: float = DEFAULT_VALIDATION_FRACTION,
    sweeps: int = DEFAULT_SWEEPS,
    tolerance: float = DEFAULT_TOLERANCE,
    refine_iterations: int = DEFAULT_ITERATIONS,
    refine_share: float = DEFAULT_REFINE_SHARE,
    prune: bool = True,
    rcond: float = DEFAULT_RCOND,
    max_coef: float = DEFAULT_MAX_COEF,
    progress: Callable[[str], None] | None = None,
) -> list[SteppedFit]:
    """Closed-loop schedules for every step count (ascending), sharing one path over groups.

    Args:
        groups: example groups (e.g. one per guidance scale), same teacher timesteps.
        step_counts: the k to fit (any order; the results come back ascending).
        budget: model evaluations and time for the path searches and refinements, shared out
            over the step counts in proportion to k; the final fits of the chosen paths and the
            pruning pass's removals always run, on top of its evaluations (within its time).
            Its ``evaluations`` count everything spent. Default: no limit (each coordinate descent
            stops by its own rule).
        search_examples: most examples per group the path search runs on (``None``: every
            fitted one).
            Needs models that are :class:`schedules.sampling.SelectableModel`; others search on
            every fitted example.
        validation_fraction: share of each condition's examples held out of the fit.
        sweeps, tolerance: coordinate-descent limits (:class:`PathSearch`).
        refine_iterations: Levenberg-Marquardt iterations of the joint refinement of the
            chosen path's coefficients (:mod:`schedules.joint_refine`); 0 skips it.
        refine_share: share of each step count's budget kept for the refinement.
        prune: run the pruning pass (step 4 of the module docstring); its removals
            (:func:`_pruned_seeds`) and final fits run on top of the budget's evaluations, and
            what the searches left of it goes to a coordinate descent from the best removal.
        rcond: eigenvalue cutoff of the Gram solves that build the paper's candidate paths.
        max_coef: coefficients above this make a path invalid.
        progress: receives one line per scored path.
    """
    steps = sorted(set(step_counts))
    if not steps:
        raise ValueError("step_counts must name at least one step count")
    T = groups[0].traj.num_steps
    for k in steps:
        check_step_count(T, k)
    budget = budget or EvaluationBudget()
    fit_masks = [~mask for mask in validation_masks(groups, validation_fraction)]
    searcher = search_fitter(groups, fit_masks, search_examples, max_coef)
    gram = gram_matrix(concat_trajectories([g.traj for g in searcher.groups]))
    paper_fitter = GramFitter(gram, rcond=rcond, max_coef=max_coef)
    steps_search = _StepSearch(
        final=ClosedLoopFitter(groups, fit_masks, max_coef=max_coef),
        searcher=searcher,
        sweeps=sweeps,
        tolerance=tolerance,
        refine_iterations=refine_iterations,
        refine_share=refine_share,
        progress=progress,
    )
    pruned = list(range(len(steps) - 1)) if prune else []
    results: list[SteppedFit] = []
    searched = 0  # evaluations of the path searches and refinements so far (not final fits)
    for j, k in enumerate(steps):
        started = time.perf_counter()
        shorter = results[-1] if results else None
        allowance = _share(budget, searched, steps[j:], k)
        seeds = partial(_grown_seeds, path=shorter.fits[0].path, k=k) if shorter else _no_seeds
        result, spent = steps_search.step(
            k, allowance, shorter, seeds, closed_loop_candidates(paper_fitter, k)
        )
        if result is None:
            raise ValueError(
                f"no {k}-step path the search found has finite coefficients below "
                f"max_coef={max_coef:g} on every calibration example"
            )
        searched += spent.searched
        budget.evaluations += spent.total
        results.append(
            replace(result, evaluations=spent.total, seconds=time.perf_counter() - started)
        )
    for j in reversed(pruned):
        allowance = _share(budget, searched, [steps[j]], steps[j])
        results[j], spent = steps_search.prune(results, j, allowance)
        searched += spent.searched
        budget.evaluations += spent.total
    return _monotone(results, T)


@dataclass
class _Spent:
    """Model evaluations one step count's search used: ``searched`` by the path search and the
    refinement (drawn from the budget), ``total`` with the final fits on top."""

    searched: int = 0
    total: int = 0


@dataclass
class _StepSearch:
    """The search of one step count: path search, final fit, joint refinement, monotone guard.

    Args:
        final: fits the chosen path on every fitted example and runs the validation ones.
        searcher: the path search's fitter (the search examples); holds the budget.
        sweeps, tolerance: coordinate-descent limits (:class:`PathSearch`).
        refine_iterations, refine_share: the joint refinement's iterations and budget share.
        progress: receives one line per scored path.
    """

    final: ClosedLoopFitter
    searcher: ClosedLoopFitter
    sweeps: int
    tolerance: float
    refine_iterations: int
    refine_share: float
    progress: Callable[[str], None] | None

    def step(
        self,
        k: int,
        allowance: EvaluationBudget,
        shorter: SteppedFit | None,
        seeds: Callable[[PathSearch], list[list[int]]],
        candidates: Sequence[tuple[str, list[int]]],
        incumbent: list[int] | None = None,
    ) -> tuple[SteppedFit | None, _Spent]:
        """The k-step result within ``allowance``: the path search from ``seeds(search)`` and
        ``candidates``, the final fit of its best valid path, its joint refinement, and
        ``shorter`` with idle steps when nothing validates better than it. ``None`` when no path
        is valid and there is no ``shorter``, or when the search found no path scoring below
        ``incumbent``'s."""
        started = time.perf_counter()
        T = self.searcher.num_teacher_steps
        refine = bool(self.refine_iterations) and 1 < k <= REFINE_MAX_STEPS
        if refine and allowance.max_evaluations is not None:
            iteration = refinement_iteration_calls(k) * self.searcher.num_examples
            refine = allowance.max_evaluations * self.refine_share >= iteration
        self.searcher.budget = _scaled(allowance, 1.0 - self.refine_share if refine else 1.0)
        self.final.budget = EvaluationBudget()
        search = PathSearch(
            self.searcher, sweeps=self.sweeps, tolerance=self.tolerance, progress=self.progress
        )
        named = seeds(search)
        if not named and not candidates:
            return None, _Spent(self.searcher.budget.evaluations, self.searcher.budget.evaluations)
        search.run(k, candidates, named)
        if incumbent is not None:
            ranked = search.ranked(k)
            score = search.evaluate("incumbent", incumbent, within_budget=False)
            if not ranked or not search.scores[tuple(ranked[0])] < score:
                evaluations = self.searcher.budget.evaluations
                return None, _Spent(evaluations, evaluations)
        spent = _Spent(self.searcher.budget.evaluations)
        fit = _first_valid(self.final, search.ranked(k))
        if fit is not None and refine:
            refine_budget = _remainder(allowance, spent.searched, time.perf_counter() - started)
            refined = _refined(
                self.searcher, self.final, fit, self.refine_iterations, refine_budget
            )
            spent.searched += refine_budget.evaluations
            fit = refined
        spent.total = spent.searched + self.final.budget.evaluations
        if fit is None:
            if shorter is None:
                return None, spent
            return _idle_copy(shorter, k, T, search.log), spent
        result = _stepped(k, fit, self.final, search.log)
        if shorter is not None and _worse(result, shorter):
            result = _idle_copy(shorter, k, T, search.log)
        return result, spent

    def prune(
        self, results: list[SteppedFit], j: int, allowance: EvaluationBudget
    ) -> tuple[SteppedFit, _Spent]:
        """``results[j]``, or a better one searched from the next longer schedule's path with
        steps removed (:func:`_pruned_seeds`): kept when its path scores below ``results[j]``'s
        on the search examples and it validates better."""
        current, longer = results[j], results[j + 1]
        if longer.idle_from is not None:
            return current, _Spent()
        started = time.perf_counter()
        k = current.num_steps
        result, spent = self.step(
            k,
            allowance,
            results[j - 1] if j else None,
            partial(_pruned_seeds, path=longer.fits[0].path, k=k),
            [],
            incumbent=current.fits[0].path,
        )
        seconds = current.seconds + time.perf_counter() - started
        chosen = current
        if result is not None and result.idle_from is None and _worse(current, result):
            chosen = replace(result, pruned_from=longer.num_steps)
        evaluations = current.evaluations + spent.total
        return replace(chosen, evaluations=evaluations, seconds=seconds), spent


def refinement_iteration_calls(k: int) -> int:
    """Model calls (per example) of one Levenberg-Marquardt iteration of a k-step refinement:
    its forward-difference Jacobian, ``sum_i (i+2)(k-1-i)``, and one trial run, ``k-1``
    (:mod:`schedules.joint_refine`). A step count whose refinement share cannot pay for one
    gives the whole share to the path search instead."""
    return sum((i + 2) * (k - 1 - i) for i in range(k)) + k - 1


def _share(
    budget: EvaluationBudget, searched: int, remaining_steps: Sequence[int], k: int
) -> EvaluationBudget:
    """This k's part, in proportion to k, of what the searches so far (``searched``
    evaluations) left of ``budget``'s evaluations, and of its time. The final fits do not draw
    on the evaluations: on many calibration examples they would starve the longer step counts'
    searches."""
    part = k / sum(remaining_steps)
    evaluations = None
    if budget.max_evaluations is not None:
        evaluations = max(0, int((budget.max_evaluations - searched) * part))
    seconds = None
    if budget.max_seconds is not None:
        seconds = max(0.0, budget.max_seconds - budget.seconds) * part
    return EvaluationBudget(max_evaluations=evaluations, max_seconds=seconds)


def _scaled(budget: EvaluationBudget, fraction: float) -> EvaluationBudget:
    """A fresh budget with ``fraction`` of ``budget``'s limits."""
    return EvaluationBudget(
        max_evaluations=None
        if budget.max_evaluations is None
        else int(budget.max_evaluations * fraction),
        max_seconds=None if budget.max_seconds is None else budget.max_seconds * fraction,
    )


def _remainder(budget: EvaluationBudget, evaluations: int, seconds: float) -> EvaluationBudget:
    """A fresh budget with what is left of ``budget``'s limits after spending these."""
    return EvaluationBudget(
        max_evaluations=None
        if budget.max_evaluations is None
        else max(0, budget.max_evaluations - evaluations),
        max_seconds=None if budget.max_seconds is None else max(0.0, budget.max_seconds - seconds),
    )


def _refined(
    refiner: ClosedLoopFitter,
    final: ClosedLoopFitter,
    greedy: ClosedLoopFit,
    iterations: int,
    budget: EvaluationBudget,
) -> ClosedLoopFit:
    """Each group's greedy coefficients refined jointly (:func:`refine_jointly`) on the fitted
    examples of ``refiner``, kept where they lower the group's validation error (its fit error
    when it has no validation examples) on the final fitter."""
    rows = [
        refine_jointly(
            group,
            greedy.path,
            fit.coefficients,
            refiner.weights(g),
            refiner.fit_masks[g],
            budget,
            iterations,
        ).rows
        for g, (group, fit) in enumerate(zip(refiner.groups, greedy.fits, strict=True))
    ]
    refined = final.run(greedy.path, rows, within_budget=False)
    if not refined.valid:
        return greedy
    fits, errors = [], []
    for g, mask in enumerate(final.fit_masks):
        held_out = not bool(mask.all())
        better = final.score(refined, fitted=not held_out, group=g) < final.score(
            greedy, fitted=not held_out, group=g
        )
        chosen = refined if better else greedy
        fit = chosen.fits[g]
        if better:  # keep the greedy fit's condition numbers: refined rows were not solved
            fit = replace(fit, condition_numbers=list(greedy.fits[g].condition_numbers))
        fits.append(fit)
        errors.append(chosen.example_errors[g])
    return ClosedLoopFit(greedy.path, fits, errors)


def _no_seeds(search: PathSearch) -> list[list[int]]:
    """No seed paths (the first step count)."""
    return []


def _pruned_seeds(search: PathSearch, path: list[int], k: int) -> list[list[int]]:
    """``path`` cut to k steps, one interior step removed at a time (:func:`removals`: 6 model
    calls per search example from 5 steps to 4, 10 from 6 to 5, 21 + 15 from 8 to 6), each the
    removal that scores best: the pruned path, then the other removals of the last round."""
    return _walked_seeds(search, path, k, "prune", removals)


def _monotone(results: list[SteppedFit], T: int) -> list[SteppedFit]:
    """``results`` with every schedule that validates worse than the one before it replaced by
    that one with idle steps (after the pruning pass improved a shorter one)."""
    out = results[:1]
    for result in results[1:]:
        if _worse(result, out[-1]):
            result = replace(
                _idle_copy(out[-1], result.num_steps, T, result.candidates),
                evaluations=result.evaluations,
                seconds=result.seconds,
            )
        out.append(result)
    return out


def _grown_seeds(search: PathSearch, path: list[int], k: int) -> list[list[int]]:
    """``path`` grown to k steps, each step inserted where it scores best: the grown path, then
    the other insertions of the last step."""
    T = search.fitter.num_teacher_steps
    return _walked_seeds(search, path, k, "insert", lambda p: insertions(p, T))


def _walked_seeds(
    search: PathSearch,
    path: list[int],
    k: int,
    name: str,
    moves: Callable[[list[int]], list[list[int]]],
) -> list[list[int]]:
    """``path`` walked to k steps by ``moves`` (each giving the paths one step longer or
    shorter), each time to the move that scores best, fitted even past the budget: the path
    reached, then the other moves of the last round; empty when a round has no move."""
    walked = list(path)
    options: list[list[int]] = []
    while len(walked) != k:
        options = moves(walked)
        if not options:
            return []
        walked = min(options, key=lambda p: search.evaluate(name, p, within_budget=False))
    return [walked, *(p for p in options if p != walked)]


def _first_valid(
    final: ClosedLoopFitter, ranked: Sequence[list[int]], tries: int = 8
) -> ClosedLoopFit | None:
    """The final fit of the best-scored path that is valid on every example (a path valid on
    the search examples may need exploding coefficients on the rest), or ``None``."""
    for path in ranked[:tries]:
        fit = final.fit(path, within_budget=False)
        if fit.valid:
            return fit
    return None


def _stepped(
    k: int, fit: ClosedLoopFit, fitter: ClosedLoopFitter, log: list[Candidate]
) -> SteppedFit:
    """The final fit of the chosen path as a result, with each group's validation error."""
    validation = [
        None if bool(mask.all()) else fitter.score(fit, fitted=False, group=g)
        for g, mask in enumerate(fitter.fit_masks)
    ]
    return SteppedFit(
        num_steps=k,
        fits=list(fit.fits),
        validation_errors=validation,
        example_errors=list(fit.example_errors),
        fit_mask=list(fitter.fit_masks),
        candidates=list(log),
        evaluations=0,
        seconds=0.0,
    )


def _worse(new: SteppedFit, old: SteppedFit) -> bool:
    """Whether the groups validate worse with ``new`` than with ``old``: the root mean square
    of their validation errors (so a grid decides as a whole, keeping its path shared)."""
    pairs = [
        (a, b)
        for a, b in zip(new.validation_errors, old.validation_errors, strict=True)
        if a is not None and b is not None
    ]
    if not pairs:
        return False
    return float(np.mean([a * a for a, _ in pairs])) > float(np.mean([b * b for _, b in pairs]))


def _idle_copy(old: SteppedFit, k: int, T: int, log: list[Candidate]) -> SteppedFit:
    """``old`` grown to k steps with idle steps: it samples exactly as ``old``."""
    return replace(
        old,
        num_steps=k,
        fits=[with_idle_steps(fit, k, T) for fit in old.fits],
        candidates=list(log),
        idle_from=old.num_steps if old.idle_from is None else old.idle_from,
    )

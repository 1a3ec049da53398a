"""Closed-loop OLSS fits over groups of examples, with a count of every model evaluation.

The paper (Duan et al., arXiv:2305.14677, Eq. 8) fits each step on the teacher's own outputs.
The closed-loop fit runs the schedule as it will be used: step i is fitted on the model outputs
along the schedule's own trajectory, then the model is evaluated on the fitted sample
``x_{i+1}`` at ``t_{p_{i+1}}`` and step i+1 is fitted on *those* outputs (see
:mod:`schedules.fit`).

Here the examples come in groups (:class:`FitGroup`, e.g. one per guidance scale of a guidance
grid): every group shares the path, each fits its own coefficients. Within a group, the least
squares weights example n by ``1 / (||y_n||^2 n_c)`` (``y_n`` its target, ``n_c`` the number of
fitted examples of its condition, its class or prompt), so the fit minimises the mean over
conditions of each condition's mean squared *relative* error: a rare condition weighs as much as
a common one. Some examples of a group may be held out of the fit (``fit_masks``); they still run
through the schedule, so every candidate path also gets a validation error.

Model outputs are cached by path prefix: the output at step i+1 depends only on
``p_0 .. p_{i+1}``, so paths that share a prefix (the moves of a coordinate descent, or a path
and its extension) share those evaluations. :class:`EvaluationBudget` counts evaluations (one
guided output for one example) and wall time, and stops a search that runs out of either.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from schedules.fit import DEFAULT_SVD_RCOND, PathFit, check_path, solve_columns
from schedules.gram import DEFAULT_MAX_COEF
from schedules.sampling import ModelFn, SelectableModel
from schedules.trajectory import Trajectories

DEFAULT_CACHE_BYTES = 1 << 30
"""Model outputs kept for reuse by later candidate paths (least recently used dropped first)."""


@dataclass(frozen=True)
class FitGroup:
    """Examples fitted with one set of coefficients: trajectories and their guided model.

    Args:
        traj: the group's teacher trajectories (every group of a search has the same teacher
            timesteps).
        model_fn: the guided model for the group's N examples, in recorded order.
    """

    traj: Trajectories
    model_fn: ModelFn

    def select(self, index: torch.Tensor) -> FitGroup | None:
        """The group restricted to examples ``index``, or ``None`` when its model cannot be
        restricted (it is not a :class:`schedules.sampling.SelectableModel`)."""
        if not isinstance(self.model_fn, SelectableModel):
            return None
        return FitGroup(self.traj.select(index), self.model_fn.select(index))


class BudgetExhausted(RuntimeError):
    """The search used its model evaluations or its time."""


@dataclass
class EvaluationBudget:
    """Model evaluations and wall time a search may spend, and what it has spent.

    An evaluation is one guided model output for one example (a model call on N examples is N
    evaluations). ``None`` means no limit.
    """

    max_evaluations: int | None = None
    max_seconds: float | None = None
    evaluations: int = 0
    started: float = field(default_factory=time.perf_counter)

    @property
    def seconds(self) -> float:
        """Wall time since the budget was created."""
        return time.perf_counter() - self.started

    def exhausted(self) -> bool:
        """Whether the evaluations or the time are used up."""
        over_evals = self.max_evaluations is not None and self.evaluations >= self.max_evaluations
        over_time = self.max_seconds is not None and self.seconds >= self.max_seconds
        return over_evals or over_time

    def remaining_evaluations(self) -> float:
        """Evaluations left (``inf`` without a limit)."""
        if self.max_evaluations is None:
            return float("inf")
        return self.max_evaluations - self.evaluations


@dataclass(frozen=True)
class ClosedLoopFit:
    """One path fitted closed-loop in every group.

    Args:
        path: the teacher step indices.
        fits: per group, its coefficients and per-step errors on its fitted examples.
        example_errors: per group, the final relative error ``||x_k - x_T|| / ||x_T||`` of every
            example (fitted or held out), ``inf`` where the fit failed.
    """

    path: list[int]
    fits: list[PathFit]
    example_errors: list[np.ndarray]

    @property
    def valid(self) -> bool:
        return all(fit.valid for fit in self.fits)


class ClosedLoopFitter:
    """Fit paths closed-loop on groups of examples; cache outputs by prefix; count evaluations.

    Args:
        groups: the example groups (same teacher timesteps).
        fit_masks: per group, a boolean mask of the examples the coefficients are fitted on
            (default: all); the others are only run through the schedule (validation).
        budget: evaluations and time; :class:`BudgetExhausted` is raised when a fit would need
            a model call past it (default: unlimited).
        max_coef: a step needing larger coefficients makes the path invalid.
        rcond: singular-value cutoff of each step's solve (:func:`schedules.fit.solve_columns`).
        cache_bytes: memory for cached model outputs.
    """

    def __init__(
        self,
        groups: Sequence[FitGroup],
        fit_masks: Sequence[torch.Tensor] | None = None,
        budget: EvaluationBudget | None = None,
        max_coef: float = DEFAULT_MAX_COEF,
        rcond: float = DEFAULT_SVD_RCOND,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> None:
        if not groups:
            raise ValueError("a closed-loop fit needs at least one group of examples")
        timesteps = groups[0].traj.timesteps
        for group in groups[1:]:
            if not torch.equal(group.traj.timesteps, timesteps):
                raise ValueError("every group of a closed-loop fit needs the same teacher steps")
        self.groups = list(groups)
        self.num_teacher_steps = groups[0].traj.num_steps
        masks = fit_masks or [torch.ones(g.traj.num_examples, dtype=torch.bool) for g in groups]
        self.fit_masks = [mask.to(torch.bool) for mask in masks]
        for group, mask in zip(self.groups, self.fit_masks, strict=True):
            if mask.shape != (group.traj.num_examples,) or not bool(mask.any()):
                raise ValueError("each fit mask needs one entry per example and one fitted example")
        self.budget = budget or EvaluationBudget()
        self.max_coef = max_coef
        self.rcond = rcond
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[tuple[int, ...], list[torch.Tensor]] = OrderedDict()
        self._cached_bytes = 0
        self._weights = [
            _condition_weights(g.traj, m) for g, m in zip(groups, self.fit_masks, strict=True)
        ]

    @property
    def num_examples(self) -> int:
        """Examples over all groups: the evaluations of one model step."""
        return sum(group.traj.num_examples for group in self.groups)

    def score(self, fit: ClosedLoopFit, fitted: bool = True, group: int | None = None) -> float:
        """:func:`balanced_rms` of ``fit``'s fitted examples (or of its held-out ones), over every
        group or one; ``inf`` for an invalid fit."""
        if not fit.valid:
            return float("inf")
        chosen = range(len(self.groups)) if group is None else [group]
        masks = [self.fit_masks[g].numpy() for g in chosen]
        return balanced_rms(
            [fit.example_errors[g] for g in chosen],
            [self.groups[g].traj.condition_labels() for g in chosen],
            [mask if fitted else ~mask for mask in masks],
        )

    def fit(self, path: Sequence[int], within_budget: bool = True) -> ClosedLoopFit:
        """Fit ``path`` closed-loop in every group (k-1 model steps minus the cached ones).

        A path whose step needs non-finite or exploding coefficients, or whose model outputs are
        not finite, comes back invalid with infinite errors. Past the budget a model step raises
        :class:`BudgetExhausted`, unless ``within_budget`` is false (the step is still counted).
        """
        return self._trace(path, None, within_budget)

    def run(
        self, path: Sequence[int], rows: Sequence[Sequence[np.ndarray]], within_budget: bool = True
    ) -> ClosedLoopFit:
        """Run ``path`` with given coefficients (``rows[g]``: group g's rows) instead of fitting
        them; the per-step errors are against the same teacher targets, the condition numbers
        0. Nothing is cached (the outputs depend on the coefficients)."""
        return self._trace(path, rows, within_budget)

    def weights(self, g: int) -> torch.Tensor:
        """Group g's least-squares weight of each fitted example (``1 / (||x_T||^2 n_c)``,
        normalised to mean 1)."""
        return self._weights[g]

    def _trace(
        self,
        path: Sequence[int],
        given: Sequence[Sequence[np.ndarray]] | None,
        within_budget: bool,
    ) -> ClosedLoopFit:
        T = self.num_teacher_steps
        path = check_path(path, T)
        k = len(path)
        targets = [*path[1:], T]
        bases = [
            torch.stack([_flat(g.traj.samples[0]), _flat(g.traj.outputs[0])]) for g in self.groups
        ]
        steps: list[list[tuple[np.ndarray, float, float, bool]]] = [[] for _ in self.groups]
        finals: list[torch.Tensor] = []
        for i in range(k):
            nexts = []
            for g, group in enumerate(self.groups):
                target = _flat(group.traj.samples[targets[i]])
                if given is None:
                    step = self._solve(g, bases[g], target)
                else:
                    row = np.asarray(given[g][i], dtype=np.float64)
                    step = (row, self._step_error(g, bases[g], row, target), 0.0, True)
                steps[g].append(step)
                if not step[3]:
                    return self._invalid(path, steps)
                nexts.append(torch.einsum("m,mnd->nd", torch.from_numpy(step[0]), bases[g]))
            if i == k - 1:
                finals = nexts
                break
            prefix = tuple(path[: i + 2])
            outputs = self._outputs(prefix, nexts, within_budget, cache=given is None)
            if outputs is None:
                return self._invalid(path, steps)
            bases = [
                torch.cat([basis, out[None]]) for basis, out in zip(bases, outputs, strict=True)
            ]
        fits, errors = [], []
        for g, group in enumerate(self.groups):
            rows = steps[g]
            fits.append(
                PathFit(
                    path,
                    [row[0] for row in rows],
                    [row[1] for row in rows],
                    [row[2] for row in rows],
                    True,
                )
            )
            reference = _flat(group.traj.samples[T])
            diff = (finals[g] - reference).norm(dim=1)
            errors.append((diff / reference.norm(dim=1).clamp_min(1e-300)).numpy())
        return ClosedLoopFit(path, fits, errors)

    def _step_error(
        self, g: int, basis: torch.Tensor, row: np.ndarray, target: torch.Tensor
    ) -> float:
        """The weighted relative error of ``row`` applied to ``basis`` against ``target`` on
        group g's fitted examples (what :meth:`_solve` reports for its own weights)."""
        mask, root = self.fit_masks[g], self._weights[g].sqrt()[:, None]
        sample = torch.einsum("m,mnd->nd", torch.from_numpy(row), basis[:, mask])
        goal = target[mask]
        return float(((sample - goal) * root).norm() / (goal * root).norm().clamp_min(1e-300))

    def _solve(
        self, g: int, basis: torch.Tensor, target: torch.Tensor
    ) -> tuple[np.ndarray, float, float, bool]:
        """The weighted least-squares step of group g on its fitted examples."""
        mask, weights = self.fit_masks[g], self._weights[g]
        root = weights.sqrt()[:, None]
        design = (basis[:, mask] * root).reshape(basis.shape[0], -1)
        step = solve_columns(
            design, (target[mask] * root).reshape(-1), rcond=self.rcond, max_coef=self.max_coef
        )
        return step.weights, step.relative_error, step.condition_number, step.valid

    def _outputs(
        self,
        prefix: tuple[int, ...],
        samples: list[torch.Tensor],
        within_budget: bool,
        cache: bool = True,
    ) -> list[torch.Tensor] | None:
        """The model outputs at ``t_{prefix[-1]}`` on ``samples``, cached by prefix."""
        cached = self._cache.get(prefix) if cache else None
        if cached is not None:
            self._cache.move_to_end(prefix)
            return cached
        if within_budget and self.budget.exhausted():
            raise BudgetExhausted(
                f"used {self.budget.evaluations} model evaluations in {self.budget.seconds:.0f} s"
            )
        outputs = []
        for group, sample in zip(self.groups, samples, strict=True):
            traj = group.traj
            x = sample.reshape(traj.samples.shape[1:]).to(traj.samples.dtype)
            out = group.model_fn(x, traj.timestep(prefix[-1]))
            out = torch.as_tensor(out).detach().to("cpu", torch.float64).reshape(len(x), -1)
            self.budget.evaluations += traj.num_examples
            if not torch.isfinite(out).all():
                return None
            outputs.append(out)
        if cache:
            self._store(prefix, outputs)
        return outputs

    def _store(self, prefix: tuple[int, ...], outputs: list[torch.Tensor]) -> None:
        size = sum(out.numel() * out.element_size() for out in outputs)
        self._cache[prefix] = outputs
        self._cached_bytes += size
        while self._cached_bytes > self.cache_bytes and len(self._cache) > 1:
            _, dropped = self._cache.popitem(last=False)
            self._cached_bytes -= sum(out.numel() * out.element_size() for out in dropped)

    def _invalid(
        self, path: list[int], steps: list[list[tuple[np.ndarray, float, float, bool]]]
    ) -> ClosedLoopFit:
        fits = [
            PathFit(
                path,
                [row[0] for row in rows],
                [row[1] for row in rows],
                [row[2] for row in rows],
                False,
            )
            for rows in steps
        ]
        errors = [np.full(g.traj.num_examples, np.inf) for g in self.groups]
        return ClosedLoopFit(path, fits, errors)


def balanced_rms(
    errors: Sequence[np.ndarray], conditions: Sequence[Sequence[str]], keep: Sequence[np.ndarray]
) -> float:
    """``sqrt(mean_g mean_c mean_{n in c} e_n^2)`` over the examples each group keeps.

    ``errors[g][n]`` is example n's final relative error, ``conditions[g][n]`` its condition:
    every condition of every group counts the same, however many examples it has. ``inf`` when
    an error is not finite, ``nan`` when no example is kept.
    """
    per_group = []
    for group_errors, labels, kept in zip(errors, conditions, keep, strict=True):
        if not kept.any():
            continue
        squared = np.asarray(group_errors)[kept] ** 2
        labels = np.asarray(labels, dtype=object)[kept]
        per_group.append(np.mean([squared[labels == c].mean() for c in dict.fromkeys(labels)]))
    if not per_group:
        return float("nan")
    value = float(np.sqrt(np.mean(per_group)))
    return value if np.isfinite(value) else float("inf")


def _flat(x: torch.Tensor) -> torch.Tensor:
    """``(N, ...)`` as ``(N, D)`` float64."""
    return x.reshape(x.shape[0], -1).to(torch.float64)


def _condition_weights(traj: Trajectories, mask: torch.Tensor) -> torch.Tensor:
    """Per fitted example ``1 / (||x_T||^2 n_c)``: each condition's fitted examples weigh as much
    in total as any other condition's, and each example by its relative error."""
    final = _flat(traj.samples[-1])[mask]
    norms = final.pow(2).sum(dim=1).clamp_min(1e-300)
    conditions = [c for c, keep in zip(traj.condition_labels(), mask.tolist(), strict=True) if keep]
    counts: dict[str, int] = {}
    for c in conditions:
        counts[c] = counts.get(c, 0) + 1
    per_condition = torch.tensor([1.0 / counts[c] for c in conditions], dtype=torch.float64)
    weights = per_condition / norms
    return weights / weights.sum() * len(weights)

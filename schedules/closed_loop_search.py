"""Closed-loop path search (beyond the paper): candidate paths, then coordinate descent.

The paper (Duan et al., arXiv:2305.14677, Sec. 3.3) picks the path by teacher-forced fit error.
Here every path is scored by its closed-loop fit (:class:`schedules.closed_loop.ClosedLoopFitter`)
and the search runs in two stages:

1. Candidates: the paper's path for its smallest error bound D and for looser bounds, uniform
   and power spacings (:func:`schedules.paths.candidate_paths`), and any seed paths, such as the
   best path of a shorter schedule with steps inserted (:func:`insertions`).
2. Coordinate descent from each of the best few candidates (and the first seed): each interior
   step ``p_i`` in turn is moved within ``(p_{i-1}, p_{i+1})``: a scan of evenly spaced positions
   over that range, then a pattern search around the best (steps halved when neither direction
   helps), sweeping until a sweep gains less than ``tolerance`` or the budget is spent. Steps are
   visited from the last to the first: moving ``p_i`` keeps the cached model outputs of
   ``p_0 .. p_{i-1}``, so late steps are cheap to move.

The score of a path is :func:`schedules.closed_loop.balanced_rms` of its fitted examples: the
root mean square, over conditions and groups, of the examples' final relative errors.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from schedules.closed_loop import BudgetExhausted, ClosedLoopFitter
from schedules.paper_search import CandidateFitter, paper_path, paper_path_for_bound
from schedules.paths import NamedPath, candidate_paths
from schedules.schedule_file import Candidate

LOOSER_BOUNDS = (2.0, 4.0, 16.0)
"""Factors on the paper's smallest feasible bound D whose greedy paths are also candidates."""

DEFAULT_SWEEPS = 4
DEFAULT_TOLERANCE = 1e-3
DEFAULT_SCAN = 6
"""Positions of a step scored across its whole free range before the local refinement."""
DEFAULT_STARTS = 3
"""Paths the coordinate descent starts from: the seed, then the best candidates."""


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


def insertions(path: Sequence[int], num_teacher_steps: int) -> list[list[int]]:
    """The paths with one more step: a step in the middle of each gap of ``path`` (the gap after
    the last step ends at T) that is at least two teacher steps wide."""
    ends = [*path, num_teacher_steps]
    grown = []
    for i in range(len(path)):
        if ends[i + 1] - ends[i] >= 2:
            grown.append(sorted([*path, (ends[i] + ends[i + 1]) // 2]))
    return grown


def removals(path: Sequence[int]) -> list[list[int]]:
    """The paths with one interior step of ``path`` removed (``p_0`` stays). Removing step i of
    an r-step path re-runs the ``r - 1 - i`` steps after it (the model outputs before it are
    cached), so all of them cost at most ``(r-1)(r-2)/2`` model calls per example."""
    return [[*path[:i], *path[i + 1 :]] for i in range(1, len(path))]


@dataclass
class PathSearch:
    """A closed-loop path search on one fitter; keeps every path it scored.

    Args:
        fitter: fits and caches paths, and holds the budget; scores a path by
            :meth:`ClosedLoopFitter.score` (fitted examples).
        sweeps: most coordinate-descent sweeps.
        tolerance: a sweep that lowers the score by less than this fraction ends the descent.
        scan: positions of a step scored across its free range before refining locally.
        starts: paths the descent starts from (the first seed, then the best candidates).
        progress: receives one line per scored path.
    """

    fitter: ClosedLoopFitter
    sweeps: int = DEFAULT_SWEEPS
    tolerance: float = DEFAULT_TOLERANCE
    scan: int = DEFAULT_SCAN
    starts: int = DEFAULT_STARTS
    progress: Callable[[str], None] | None = None

    def __post_init__(self) -> None:
        self.scores: dict[tuple[int, ...], float] = {}
        self.log: list[Candidate] = []

    def evaluate(self, name: str, path: Sequence[int], within_budget: bool = True) -> float:
        """The score of ``path`` (fitted once; :class:`BudgetExhausted` past the budget unless
        ``within_budget`` is false)."""
        key = tuple(int(p) for p in path)
        if key not in self.scores:
            value = self.fitter.score(self.fitter.fit(key, within_budget))
            self.scores[key] = value
            self.log.append(Candidate(name, list(key), value if np.isfinite(value) else None))
            if self.progress is not None:
                self.progress(f"{name} {list(key)}: {value:.4g}")
        return self.scores[key]

    def ranked(self, num_steps: int) -> list[list[int]]:
        """The valid ``num_steps``-step paths scored so far, best first."""
        scored = [(s, list(p)) for p, s in self.scores.items() if len(p) == num_steps]
        return [path for score, path in sorted(scored) if np.isfinite(score)]

    def best(self, num_steps: int) -> tuple[list[int], float]:
        """The best scored path with ``num_steps`` steps (``ValueError`` if none is valid)."""
        scored = [(s, list(p)) for p, s in self.scores.items() if len(p) == num_steps]
        valid = [item for item in scored if np.isfinite(item[0])]
        if not valid:
            raise ValueError(
                f"closed-loop search found no valid {num_steps}-step path: every candidate "
                f"needed non-finite or exploding coefficients (max_coef={self.fitter.max_coef:g})"
            )
        score, path = min(valid)
        return path, score

    def run(
        self,
        num_steps: int,
        candidates: Sequence[NamedPath],
        seeds: Sequence[Sequence[int]] = (),
    ) -> tuple[list[int], float]:
        """Score the seeds and candidates, then refine the best ``starts`` of them (the first
        seed among them) by coordinate descent; the best path found wins.

        Stops early, keeping the best path so far, when the budget runs out; the first seed (or
        candidate) is always scored, past the budget if need be.
        """
        named = [("seed", list(seed)) for seed in seeds] + list(candidates)
        self.evaluate(*named[0], within_budget=False)
        try:
            for name, path in named[1:]:
                self.evaluate(name, path)
            ranked = sorted(
                (self.scores[tuple(path)], path) for _, path in named if len(path) == num_steps
            )
            starts = [list(named[0][1])] if seeds else []
            for _, path in ranked:
                if len(starts) >= self.starts:
                    break
                if path not in starts and np.isfinite(self.scores[tuple(path)]):
                    starts.append(list(path))
            for path in starts:
                self._descend(path, self.scores[tuple(path)])
        except BudgetExhausted:
            pass
        return self.best(num_steps)

    def _descend(self, path: list[int], score: float) -> tuple[list[int], float]:
        """Coordinate descent from ``path``: sweeps of :meth:`_line_search` from the last
        interior step to the first, until a sweep gains less than ``tolerance``."""
        for _ in range(self.sweeps):
            start = score
            for i in range(len(path) - 1, 0, -1):
                path, score = self._line_search(path, i, score)
            if not score < start * (1.0 - self.tolerance):
                break
        return path, score

    def _line_search(self, path: list[int], i: int, score: float) -> tuple[list[int], float]:
        """Move ``p_i`` alone: score ``scan`` evenly spaced positions over its free range, take
        the best, then pattern-search around it (try ``+- s``, move to the better, halve ``s``
        when neither helps, from half the scan spacing down to 1)."""
        T = self.fitter.num_teacher_steps
        low = path[i - 1] + 1
        high = path[i + 1] - 1 if i + 1 < len(path) else T - 1
        if high <= low:
            return path, score

        def moved(value: int) -> list[int]:
            return [*path[:i], value, *path[i + 1 :]]

        positions = np.unique(np.linspace(low, high, self.scan + 2).round().astype(int)[1:-1])
        trials = [(self.evaluate("scan", moved(int(v))), moved(int(v))) for v in positions]
        score, path = min([(score, path), *trials])
        shift = max(1, (high - low) // (2 * (self.scan + 1)))
        while shift >= 1:
            trials = [
                (self.evaluate("refine", moved(v)), moved(v))
                for v in (path[i] - shift, path[i] + shift)
                if low <= v <= high
            ]
            better = [trial for trial in trials if trial[0] < score]
            if better:
                score, path = min(better)
            else:
                shift //= 2
        return path, score

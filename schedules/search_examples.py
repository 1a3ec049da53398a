"""Which calibration examples a closed-loop search fits, validates on and searches on.

Each group's examples (e.g. one guidance scale's) are split condition by condition into a fit
part and a validation part; the path search runs on a few fitted examples per group, spread over
the conditions, and the chosen path is then fitted on all of them
(:mod:`schedules.schedule_search`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from schedules.closed_loop import ClosedLoopFitter, FitGroup
from schedules.trajectory import Trajectories

DEFAULT_SEARCH_EXAMPLES = 64
"""Examples per group the path search runs on; the chosen path is then fitted on all."""
DEFAULT_VALIDATION_FRACTION = 0.25
"""Share of each condition's examples held out of the fit to check each schedule."""


def validation_masks(
    groups: Sequence[FitGroup], fraction: float = DEFAULT_VALIDATION_FRACTION
) -> list[torch.Tensor]:
    """Per group, which examples validate: the last ``round(fraction * n_c)`` of each
    condition's ``n_c`` examples, or, when conditions have too few examples for that, every
    ``1/fraction``-th example of the group. Every group keeps at least one fitted example."""
    masks = []
    for group in groups:
        labels = group.traj.condition_labels()
        n = len(labels)
        mask = torch.zeros(n, dtype=torch.bool)
        if fraction > 0 and n > 1:
            by_condition: dict[str, list[int]] = {}
            for i, label in enumerate(labels):
                by_condition.setdefault(label, []).append(i)
            for members in by_condition.values():
                count = round(fraction * len(members))
                if count and count < len(members):
                    mask[members[-count:]] = True
            if not mask.any():
                stride = max(2, round(1 / fraction))
                mask[stride - 1 :: stride] = True
        masks.append(mask)
    return masks


def search_subset(
    groups: Sequence[FitGroup], fit_masks: Sequence[torch.Tensor], limit: int | None
) -> list[torch.Tensor]:
    """Per group, the indices of the fitted examples the path search uses: at most ``limit``
    per group, taken round-robin over the group's conditions (so every condition is
    represented before any has two); every fitted example when ``limit`` is ``None``."""
    subsets = []
    for group, mask in zip(groups, fit_masks, strict=True):
        members = torch.nonzero(mask).flatten().tolist()
        quota = len(members) if limit is None else min(limit, len(members))
        labels = group.traj.condition_labels()
        queues: dict[str, list[int]] = {}
        for i in members:
            queues.setdefault(labels[i], []).append(i)
        order: list[int] = []
        while len(order) < quota:
            for queue in queues.values():
                if queue and len(order) < quota:
                    order.append(queue.pop(0))
        subsets.append(torch.tensor(sorted(order), dtype=torch.long))
    return subsets


def concat_trajectories(trajs: Sequence[Trajectories]) -> Trajectories:
    """Trajectories with the same teacher timesteps, concatenated along the examples."""
    first = trajs[0]
    conditions = None
    if all(t.conditions is not None for t in trajs):
        conditions = tuple(c for t in trajs for c in t.condition_labels())
    return replace(
        first,
        samples=torch.cat([t.samples for t in trajs], dim=1),
        outputs=torch.cat([t.outputs for t in trajs], dim=1),
        conditions=conditions,
    )


def search_fitter(
    groups: Sequence[FitGroup],
    fit_masks: Sequence[torch.Tensor],
    search_examples: int | None,
    max_coef: float,
) -> ClosedLoopFitter:
    """The fitter the path search runs on: the groups' subsets of :func:`search_subset`, or
    every group (fitting its fitted examples) when that is all of them or a model cannot be
    restricted."""
    subsets = search_subset(groups, fit_masks, search_examples)
    if sum(len(s) for s in subsets) < sum(int(m.sum()) for m in fit_masks):
        restricted = [g.select(s) for g, s in zip(groups, subsets, strict=True)]
        if all(r is not None for r in restricted):
            return ClosedLoopFitter([r for r in restricted if r is not None], max_coef=max_coef)
    return ClosedLoopFitter(groups, fit_masks, max_coef=max_coef)

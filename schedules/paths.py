"""Path geometry: which k of the T teacher steps an OLSS schedule evaluates the model at.

A path ``p_0 = 0 < p_1 < ... < p_{k-1} < T`` picks teacher steps (Duan et al., arXiv:2305.14677,
Sec. 3.3); step i of the schedule runs the model at ``t_{p_i}``. This module builds fixed
spacings (uniform, power), repairs and pads paths, and lists the named candidates the
closed-loop search (:mod:`schedules.closed_loop_search`) fits.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

NamedPath = tuple[str, list[int]]


def check_step_count(num_teacher_steps: int, num_steps: int) -> None:
    """Raise ``ValueError`` unless ``1 <= k <= T``."""
    if not 1 <= num_steps <= num_teacher_steps:
        raise ValueError(
            f"num_steps must be between 1 and the teacher's {num_teacher_steps} steps, "
            f"got {num_steps}"
        )


def uniform_path(num_teacher_steps: int, num_steps: int) -> list[int]:
    """OLSS-P: ``p_i = round(i T / k)``."""
    check_step_count(num_teacher_steps, num_steps)
    return [round(i * num_teacher_steps / num_steps) for i in range(num_steps)]


def power_path(
    num_teacher_steps: int, num_steps: int, gamma: float, reverse: bool = False
) -> list[int]:
    """``p_i = T (i/k)^gamma`` (dense near the noise for gamma > 1), or ``T (1 - (1 - i/k)^gamma)``
    when ``reverse`` (dense near the final sample), made strictly increasing."""
    check_step_count(num_teacher_steps, num_steps)
    u = np.arange(num_steps) / num_steps
    f = 1.0 - (1.0 - u) ** gamma if reverse else u**gamma
    return regularize([round(v) for v in num_teacher_steps * f], num_teacher_steps)


def regularize(path: list[int], num_teacher_steps: int) -> list[int]:
    """Force ``p_0 = 0``, strictly increasing, ``p_{k-1} <= T-1`` with minimal moves."""
    k = len(path)
    out = [0] * k
    for i in range(1, k):
        out[i] = max(path[i], out[i - 1] + 1)
    for i in range(k - 1, 0, -1):
        out[i] = min(out[i], num_teacher_steps - (k - i))
    return out


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
    num_teacher_steps: int,
    num_steps: int,
    paper: list[int] | None = None,
    looser: Sequence[NamedPath] = (),
) -> list[NamedPath]:
    """Named candidate paths, deduplicated, best guesses first.

    The paper's path (if given), uniform, power spacings with gamma 1.5 and 2 both ways, the
    ``looser`` paper paths (greedy walks under larger error bounds), then the extreme spacings
    gamma 0.7 and 3.
    """
    T, k = num_teacher_steps, num_steps
    named: list[NamedPath] = [("paper", paper)] if paper is not None else []
    named.append(("uniform", uniform_path(T, k)))
    for gamma in (1.5, 2.0):
        named.append((f"power{gamma:g}", power_path(T, k, gamma)))
        named.append((f"reverse-power{gamma:g}", power_path(T, k, gamma, reverse=True)))
    named.extend(looser)
    for gamma in (0.7, 3.0):
        named.append((f"power{gamma:g}", power_path(T, k, gamma)))
    seen: set[tuple[int, ...]] = set()
    unique = []
    for name, path in named:
        if tuple(path) not in seen:
            seen.add(tuple(path))
            unique.append((name, path))
    return unique

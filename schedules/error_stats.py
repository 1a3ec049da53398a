"""Per-example error statistics: the mean, its tail and the worst condition.

A schedule's mean final error can hide a few examples that blow up, or a rare condition (a
class, a prompt) that always does worse. :func:`error_stats` reports the 95th percentile, the
largest error and the condition with the highest mean error next to the mean.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from schedules.schedule_file import ErrorStats

ERROR_CAP = 1e300
"""A diverged example's error (JSON has no infinity)."""


def error_stats(errors: Sequence[float] | np.ndarray, conditions: Sequence[str]) -> ErrorStats:
    """:class:`ErrorStats` of per-example ``errors`` whose conditions are ``conditions``.

    Non-finite errors count as :data:`ERROR_CAP`. Examples without a known condition share the
    condition ``""``.
    """
    values = np.nan_to_num(np.asarray(errors, dtype=np.float64), nan=ERROR_CAP, posinf=ERROR_CAP)
    values = np.clip(values, 0.0, ERROR_CAP)
    if values.size == 0 or values.size != len(conditions):
        raise ValueError(
            f"need one condition per error and at least one error, got {values.size} errors "
            f"and {len(conditions)} conditions"
        )
    labels = np.asarray(conditions, dtype=object)
    means = {c: float(values[labels == c].mean()) for c in dict.fromkeys(conditions)}
    worst = max(means, key=means.__getitem__)
    return ErrorStats(
        num_examples=int(values.size),
        mean=float(values.mean()),
        p95=float(np.percentile(values, 95)),
        max=float(values.max()),
        worst_condition=str(worst),
        worst_condition_error=means[worst],
    )

"""The one rule that matches a requested guidance scale to a calibrated one.

A schedule fitted at guidance g serves requests within :data:`GUIDANCE_TOLERANCE` of g; among
several, the nearest wins. The gateway (choosing a schedule from heartbeats), the worker
(choosing the scheduler instance) and the schedule registry (choosing a file) all use it.
"""

from __future__ import annotations

from collections.abc import Iterable

GUIDANCE_TOLERANCE = 0.5


def nearest_guidance(
    available: Iterable[float], requested: float, tolerance: float = GUIDANCE_TOLERANCE
) -> float | None:
    """The calibrated guidance nearest to ``requested`` within ``tolerance``, else ``None``.

    Ties go to the smaller guidance scale, so the choice never depends on iteration order.
    """
    close = [g for g in available if abs(g - requested) <= tolerance]
    if not close:
        return None
    return min(close, key=lambda g: (abs(g - requested), g))

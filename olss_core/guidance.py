"""The one rule that says which guidance scales an OLSS step count serves.

A step count with at least one calibrated schedule serves every guidance scale in
:data:`OLSS_GUIDANCE_RANGE`, widened to reach :data:`GUIDANCE_TOLERANCE` past each calibrated
one (a schedule fitted at 0.8 serves 0.3 to 15). The worker builds the schedule for the requested
scale (``schedules.guidance_blend.schedule_for_guidance``): the calibrated one, a blend of the
two around it when they share a path (the guided output ``eps_u + g (eps_c - eps_u)`` of Ho &
Salimans, 2022, eq. 6, and with it the least-squares coefficients of Eq. (7) of Duan et al.,
arXiv:2305.14677, move smoothly in g), else the nearest. The gateway (from heartbeats) and the
worker both ask :func:`serves_guidance`; the schedule registry matches files with
:func:`nearest_guidance`.
"""

from __future__ import annotations

from collections.abc import Iterable

GUIDANCE_TOLERANCE = 0.5
OLSS_GUIDANCE_RANGE = (1.0, 15.0)
"""Guidance scales an OLSS step count serves once it has any calibrated schedule (inclusive)."""


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


def served_guidance(calibrated: Iterable[float]) -> tuple[float, float] | None:
    """The interval of scales that schedules calibrated at ``calibrated`` (one model, one step
    count) serve: :data:`OLSS_GUIDANCE_RANGE`, widened to reach :data:`GUIDANCE_TOLERANCE` past
    every calibrated scale; ``None`` without any calibrated scale."""
    scales = list(calibrated)
    if not scales:
        return None
    low, high = OLSS_GUIDANCE_RANGE
    return min(low, min(scales) - GUIDANCE_TOLERANCE), max(high, max(scales) + GUIDANCE_TOLERANCE)


def serves_guidance(calibrated: Iterable[float], requested: float) -> bool:
    """Whether schedules calibrated at ``calibrated`` serve a request at ``requested``."""
    served = served_guidance(calibrated)
    return served is not None and served[0] <= requested <= served[1]

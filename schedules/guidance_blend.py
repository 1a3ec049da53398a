"""An OLSS schedule for any guidance scale, from the schedules of a calibrated guidance grid.

A guidance grid (:func:`schedules.olss_search.search_guidance_grid`) fits one set of
coefficients per guidance scale on one shared path. The guided model output
``eps_u + g (eps_c - eps_u)`` (Ho & Salimans, 2022, eq. 6) moves smoothly with g, and so do the
least-squares coefficients of Eq. (7) of Duan et al. (arXiv:2305.14677): between two grid points
that share their timesteps, :func:`schedule_for_guidance` evaluates the lower one's coefficients
fitted as polynomials in g over the grid (:mod:`schedules.guidance_fit`, stored as its
``guidance_interval``), else interpolates the two schedules' coefficients linearly in g (older
files). Numbers only: no torch, no numpy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from schedules.schedule_file import FitReport, GuidanceInterval, Schedule

EXACT = 1e-9
"""Guidance scales closer than this count as the same."""


@dataclass(frozen=True)
class GuidanceChoice:
    """The schedule to use at a requested guidance scale, and what it is made of.

    Args:
        schedule: a calibrated schedule, or a blend of two (its ``guidance_scale`` is the
            requested one).
        label: e.g. ``"cfg4"``, ``"blend of cfg3 and cfg5 at 4.2"`` or ``"nearest: cfg12 for 15
            (outside the calibrated 1.5 to 12)"``.
        blended: whether the coefficients were interpolated.
    """

    schedule: Schedule
    label: str
    blended: bool = False


def schedule_for_guidance(schedules: Sequence[Schedule], guidance: float) -> GuidanceChoice:
    """The schedule for ``guidance`` from schedules of one model and step count.

    A schedule calibrated at ``guidance`` is returned as is. Between two calibrated scales
    ``a < guidance < b`` whose schedules share their timesteps, method and teacher, the
    coefficients are ``a``'s ``guidance_interval`` polynomial at ``guidance`` when it reaches to
    ``b``, else ``(1 - l) w_a + l w_b`` with ``l = (guidance - a) / (b - a)``; when they do
    not share them, or outside the calibrated range, the nearest calibrated schedule is used (the
    label says so). Raises ``ValueError`` for no schedules, mixed models or step counts, or a
    non-finite guidance.
    """
    if not schedules:
        raise ValueError("need at least one schedule to choose from")
    if not math.isfinite(guidance):
        raise ValueError(f"guidance must be finite, got {guidance}")
    kinds = {(s.model_id, s.num_steps) for s in schedules}
    if len(kinds) > 1:
        raise ValueError(f"schedules must share one model and step count, got {sorted(kinds)}")
    ordered = sorted(schedules, key=lambda s: s.guidance_scale)
    for schedule in ordered:
        if abs(schedule.guidance_scale - guidance) <= EXACT:
            return GuidanceChoice(schedule, f"cfg{schedule.guidance_scale:g}")
    low = [s for s in ordered if s.guidance_scale < guidance]
    high = [s for s in ordered if s.guidance_scale > guidance]
    if not low or not high:
        nearest = high[0] if not low else low[-1]
        span = f"{ordered[0].guidance_scale:g} to {ordered[-1].guidance_scale:g}"
        label = f"nearest: cfg{nearest.guidance_scale:g} for {guidance:g} (outside {span})"
        return GuidanceChoice(nearest, label)
    a, b = low[-1], high[0]
    if not _blendable(a, b):
        nearest = min((a, b), key=lambda s: (abs(s.guidance_scale - guidance), s.guidance_scale))
        label = (
            f"nearest: cfg{nearest.guidance_scale:g} for {guidance:g} (cfg{a.guidance_scale:g} "
            f"and cfg{b.guidance_scale:g} have different paths)"
        )
        return GuidanceChoice(nearest, label)
    weight = (guidance - a.guidance_scale) / (b.guidance_scale - a.guidance_scale)
    interval = _fitted_in_g(a, b)
    if interval is not None:
        label = f"fit in g of cfg{a.guidance_scale:g} to cfg{b.guidance_scale:g} at {guidance:g}"
        coefficients = polynomial_coefficients(
            interval.center, interval.scale, interval.terms, guidance
        )
    else:
        label = f"blend of cfg{a.guidance_scale:g} and cfg{b.guidance_scale:g} at {guidance:g}"
        coefficients = None
    schedule = _blend(a, b, weight, guidance, label, coefficients)
    return GuidanceChoice(schedule, label, blended=True)


def _blendable(a: Schedule, b: Schedule) -> bool:
    """Same timesteps, method, teacher and prediction type: only the coefficients differ."""
    return (
        a.timesteps == b.timesteps
        and a.method == b.method
        and a.teacher == b.teacher
        and a.prediction_type == b.prediction_type
        and a.resolution == b.resolution
        and math.isclose(a.init_noise_sigma, b.init_noise_sigma, rel_tol=1e-9)
    )


def _mix(x: float, y: float, weight: float) -> float:
    return (1.0 - weight) * x + weight * y


def _blend(
    a: Schedule,
    b: Schedule,
    weight: float,
    guidance: float,
    label: str,
    coefficients: list[list[float]] | None = None,
) -> Schedule:
    """``a`` and ``b`` mixed with ``weight`` on ``b``: the given coefficients (fitted in g), else
    the two interpolated; the report's per-step errors the larger of the two (no example was
    run at ``guidance``)."""
    if coefficients is None:
        coefficients = [
            [_mix(x, y, weight) for x, y in zip(row_a, row_b, strict=True)]
            for row_a, row_b in zip(a.coefficients, b.coefficients, strict=True)
        ]
    ra, rb = a.fit_report, b.fit_report
    report = FitReport(
        path=list(ra.path),
        step_errors=[max(x, y) for x, y in zip(ra.step_errors, rb.step_errors, strict=True)],
        condition_numbers=[
            max(x, y) for x, y in zip(ra.condition_numbers, rb.condition_numbers, strict=True)
        ],
        warnings=[f"{label}: coefficients not fitted or validated at {guidance:g}"],
        guidance_grid=list(ra.guidance_grid),
    )
    return replace(
        a,
        guidance_scale=float(guidance),
        coefficients=coefficients,
        num_examples=min(a.num_examples, b.num_examples),
        init_noise_sigma=_mix(a.init_noise_sigma, b.init_noise_sigma, weight),
        fit_report=report,
        guidance_interval=None,
    )


def polynomial_coefficients(
    center: float, scale: float, terms: Sequence[Sequence[Sequence[float]]], guidance: float
) -> list[list[float]]:
    """Step i's weights ``w_i(g) = sum_p terms[i][p] s^p`` with ``s = (g - center) / scale``
    (:mod:`schedules.guidance_fit`)."""
    s = (float(guidance) - center) / scale
    return [
        [sum(row[j] * s**p for p, row in enumerate(step)) for j in range(len(step[0]))]
        for step in terms
    ]


def _fitted_in_g(a: Schedule, b: Schedule) -> GuidanceInterval | None:
    """``a``'s guidance interval when it reaches exactly to ``b``'s scale."""
    interval = a.guidance_interval
    if interval is None or abs(interval.high - b.guidance_scale) > EXACT:
        return None
    return interval

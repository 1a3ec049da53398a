"""An OLSS schedule at any guidance scale, from a calibrated grid.

Unit checks of :func:`schedules.guidance_blend.schedule_for_guidance` (exact scales, guidance
intervals fitted in g, linear blends, the nearest schedule outside the grid or across different
paths, labels, errors, the interval's file checks), then the served schedule's quality on the
analytic testbed: an 8-d, 3-class mixture, a grid of guidance 3, 5 and 7.5 sharing one path per
step count with its intervals fitted in g, scored at 4 and 6.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from devtools.analytic import GaussianMixtureDiffusion, MixtureConfig, record_trajectories
from devtools.sd_configs import SD_DDIM_CONFIG
from schedules import OLSSScheduler, search
from schedules.closed_loop import FitGroup
from schedules.guidance_blend import schedule_for_guidance
from schedules.guidance_fit import with_guidance_intervals
from schedules.heldout import example_errors
from schedules.olss_search import search_guidance_grid, search_steps
from schedules.sampling import run_sampler
from schedules.schedule_file import GuidanceInterval, Schedule, ScheduleFileError
from schedules.teachers import parse_teacher
from tests.support.schedules import build_schedule


def grid(*scales: float):
    """Schedules at ``scales`` on one path; the coefficients' first weight is the scale."""
    base = build_schedule(steps=3)
    return [
        replace(
            base,
            guidance_scale=g,
            coefficients=[[g, *row[1:]] for row in base.coefficients],
        )
        for g in scales
    ]


def test_a_calibrated_scale_gets_its_own_schedule() -> None:
    schedules = grid(3.0, 5.0)
    choice = schedule_for_guidance(schedules, 5.0)
    assert choice.schedule is schedules[1] and choice.label == "cfg5" and not choice.blended


def test_between_two_scales_the_coefficients_are_interpolated_linearly() -> None:
    choice = schedule_for_guidance(grid(7.5, 3.0, 5.0), 4.2)
    assert choice.blended and choice.label == "blend of cfg3 and cfg5 at 4.2"
    schedule = choice.schedule
    assert schedule.guidance_scale == 4.2 and schedule.timesteps == grid(3.0)[0].timesteps
    assert [row[0] for row in schedule.coefficients] == pytest.approx([4.2] * 3)
    assert schedule.fit_report.heldout is None
    assert "not fitted or validated at 4.2" in schedule.fit_report.warnings[0]
    scheduler = OLSSScheduler.from_schedule(schedule)
    assert scheduler.config.guidance_scale == 4.2


def with_interval(schedule, high: float, terms):
    interval = GuidanceInterval(schedule.guidance_scale, high, 4.0, 2.0, terms)
    return replace(schedule, guidance_interval=interval)


def test_a_guidance_interval_serves_its_polynomial_up_to_the_next_scale() -> None:
    a, b, c = grid(3.0, 5.0, 7.5)
    # step i's weights: first = 1 + s (s = (g - 4) / 2), the others as in the base schedule
    terms = [[[1.0, *row[1:]], [1.0] + [0.0] * (len(row) - 1)] for row in a.coefficients]
    choice = schedule_for_guidance([with_interval(a, 5.0, terms), b, c], 4.5)
    assert choice.blended and choice.label == "fit in g of cfg3 to cfg5 at 4.5"
    assert [row[0] for row in choice.schedule.coefficients] == pytest.approx([1.25] * 3)
    assert [row[1:] for row in choice.schedule.coefficients] == [row[1:] for row in a.coefficients]
    assert choice.schedule.guidance_interval is None
    # an interval that does not reach the next scale is ignored: the linear blend
    short = schedule_for_guidance([with_interval(a, 4.9, terms), b, c], 4.5)
    assert short.label == "blend of cfg3 and cfg5 at 4.5"
    # the interval above 5 has none: the linear blend
    assert schedule_for_guidance([with_interval(a, 5.0, terms), b, c], 6.0).label.startswith(
        "blend of cfg5 and cfg7.5"
    )


def test_guidance_intervals_are_checked_and_survive_a_file(tmp_path) -> None:
    a = grid(3.0)[0]
    terms = [[list(row)] for row in a.coefficients]
    saved = with_interval(a, 5.0, terms).save(tmp_path / "a.json")
    assert Schedule.load(saved).guidance_interval == with_interval(a, 5.0, terms).guidance_interval
    with pytest.raises(ScheduleFileError, match="below high"):
        with_interval(a, 2.0, terms)
    with pytest.raises(ScheduleFileError, match="ragged"):
        with_interval(a, 5.0, [[[1.0]] for _ in a.coefficients])
    with pytest.raises(ScheduleFileError, match="start at guidance_scale"):
        replace(a, guidance_interval=GuidanceInterval(2.0, 5.0, 4.0, 2.0, terms))
    with pytest.raises(ScheduleFileError):
        with_interval(a, 5.0, [[[1e7, *row[1:]]] for row in a.coefficients])


def test_outside_the_grid_the_nearest_end_is_used() -> None:
    low = schedule_for_guidance(grid(3.0, 5.0), 1.0)
    high = schedule_for_guidance(grid(3.0, 5.0), 15.0)
    assert low.schedule.guidance_scale == 3.0 and high.schedule.guidance_scale == 5.0
    assert low.label == "nearest: cfg3 for 1 (outside 3 to 5)" and not high.blended


def test_neighbours_on_different_paths_are_not_blended() -> None:
    a, b = grid(3.0, 5.0)
    b = replace(b, timesteps=[981, 781, 581])
    choice = schedule_for_guidance([a, b], 4.5)
    assert choice.schedule is b and "different paths" in choice.label and not choice.blended


def test_bad_inputs_are_value_errors() -> None:
    with pytest.raises(ValueError, match="at least one"):
        schedule_for_guidance([], 4.0)
    with pytest.raises(ValueError, match="finite"):
        schedule_for_guidance(grid(3.0), float("nan"))
    mixed = [build_schedule(steps=3), build_schedule(steps=4, guidance=5.0)]
    with pytest.raises(ValueError, match="one model and step count"):
        schedule_for_guidance(mixed, 4.0)


CONFIG = MixtureConfig(dim=8, num_classes=3, components_per_class=2, separation=3.0)
GRID = (3.0, 5.0, 7.5)
STEPS = (4, 6)


class Beds:
    """Teacher trajectories at any guidance scale, on fixed calibration and held-out noises."""

    def __init__(self) -> None:
        self.model = GaussianMixtureDiffusion(CONFIG)
        self.teacher = parse_teacher("dpmsolver++3m:100", SD_DDIM_CONFIG)
        self.labels = torch.arange(288) % CONFIG.num_classes
        generator = torch.Generator().manual_seed(5)
        self.noise = torch.randn(288, CONFIG.dim, dtype=torch.float64, generator=generator)

    def at(self, guidance: float):
        cal = self.model.model_fn(self.labels[:192], guidance)
        held = self.model.model_fn(self.labels[192:], guidance)
        run = self.teacher.run_kwargs()
        traj = record_trajectories(self.teacher.scheduler, cal, self.noise[:192], **run)
        traj = traj.with_metadata(
            conditions=tuple(str(int(c)) for c in self.labels[:192]), guidance_scale=guidance
        )
        target = run_sampler(self.teacher.scheduler, held, self.noise[192:], **run)
        return traj, cal, held, target

    def error(self, schedule, held, target) -> float:
        scheduler = OLSSScheduler.from_schedule(schedule)
        out = run_sampler(scheduler, held, self.noise[192:], len(schedule))
        return float(example_errors(out, target).mean())


@pytest.mark.usefixtures("one_torch_thread")
def test_a_blended_schedule_is_close_to_one_fitted_at_that_scale() -> None:
    beds = Beds()
    fitted = [beds.at(g)[:2] for g in GRID]
    groups = [FitGroup(t, m) for t, m in fitted]
    schedules = with_guidance_intervals(search_guidance_grid(groups, STEPS), groups)
    assert all(s.fit_report.guidance_grid == list(GRID) for s in schedules)
    assert [s.guidance_interval is not None for s in schedules] == [True, True, False] * 2
    for guidance in (4.0, 6.0):
        traj, cal, held, target = beds.at(guidance)
        searched = {s.num_steps: s for s in search_steps(traj, STEPS, cal)}
        for k in STEPS:
            choice = schedule_for_guidance([s for s in schedules if s.num_steps == k], guidance)
            assert choice.blended and choice.label.startswith("fit in g of")
            blended = beds.error(choice.schedule, held, target)
            # Fitted at exactly this scale on the grid's path: the interpolation costs <= 1.3x.
            same_path = search(traj, k, cal, path=choice.schedule.fit_report.path)
            assert blended <= 1.3 * beds.error(same_path, held, target)
            # Against a schedule searched at this scale alone (its own path) the grid's shared
            # path costs more (docs/BENCHMARKS.md has the numbers).
            assert blended <= 2.5 * beds.error(searched[k], held, target)

"""The closed-loop search: monotone in k, stronger than the old one, robust stats, a real budget.

Testbed: an 8-d, 3-class Gaussian mixture at guidance 7.5 (:mod:`devtools.analytic`), teacher
DPM-Solver++(3M) with 100 steps down to t = 0, 192 calibration and 96 held-out noises. Every
error is measured on held-out noises no fit saw, against the teacher's samples.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from bench.olss_search_baseline import baseline_search
from devtools.analytic import GaussianMixtureDiffusion, MixtureConfig, record_trajectories
from devtools.sd_configs import SD_DDIM_CONFIG
from schedules import OLSSScheduler
from schedules.closed_loop import ClosedLoopFitter, EvaluationBudget, FitGroup
from schedules.fit import with_idle_steps
from schedules.heldout import example_errors, heldout_report
from schedules.joint_refine import refine_jointly
from schedules.olss_search import schedule_from_fit, search_steps
from schedules.sampling import run_sampler
from schedules.schedule_file import Method
from schedules.schedule_search import search_step_counts
from schedules.teachers import parse_teacher

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CONFIG = MixtureConfig(dim=8, num_classes=3, components_per_class=2, separation=3.0)
GUIDANCE = 7.5
STEPS = (3, 4, 5, 6)


class Testbed:
    def __init__(self, guidance: float = GUIDANCE, steps: tuple[int, ...] = STEPS) -> None:
        self.model = GaussianMixtureDiffusion(CONFIG)
        labels = torch.arange(288) % CONFIG.num_classes
        noise = torch.randn(
            288, CONFIG.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(5)
        )
        self.teacher = parse_teacher("dpmsolver++3m:100", SD_DDIM_CONFIG)
        self.cal_fn = self.model.model_fn(labels[:192], guidance)
        self.held_fn = self.model.model_fn(labels[192:], guidance)
        traj = record_trajectories(
            self.teacher.scheduler, self.cal_fn, noise[:192], **self.teacher.run_kwargs()
        )
        self.traj = traj.with_metadata(conditions=tuple(f"class {int(c)}" for c in labels[:192]))
        held = record_trajectories(
            self.teacher.scheduler, self.held_fn, noise[192:], **self.teacher.run_kwargs()
        )
        self.held = held.with_metadata(conditions=tuple(f"class {int(c)}" for c in labels[192:]))
        searched = search_steps(self.traj, steps, self.cal_fn) if steps else []
        self.schedules = {s.num_steps: s for s in searched}

    def heldout_errors(self, schedule) -> torch.Tensor:
        noise = self.held.samples[0]
        out = run_sampler(OLSSScheduler.from_schedule(schedule), self.held_fn, noise, len(schedule))
        return example_errors(out, self.held.samples[-1])


@pytest.fixture(scope="module")
def bed(one_torch_thread: None) -> Testbed:
    return Testbed()


def test_more_steps_never_give_a_higher_heldout_error(bed: Testbed) -> None:
    errors = [float(bed.heldout_errors(bed.schedules[k]).mean()) for k in STEPS]
    assert all(b <= a for a, b in itertools.pairwise(errors)), errors
    validation = [bed.schedules[k].fit_report.validation.mean for k in STEPS]
    assert validation[-1] < validation[0]


def test_an_idle_step_copy_samples_exactly_like_the_shorter_schedule(bed: Testbed) -> None:
    """The fallback that keeps k+1 steps from validating worse than k: one more model call
    whose output gets weight 0 everywhere."""
    short = bed.schedules[4]
    fitter = ClosedLoopFitter([FitGroup(bed.traj, bed.cal_fn)])
    fit = fitter.fit(short.fit_report.path).fits[0]
    grown = with_idle_steps(fit, 6, bed.traj.num_steps)
    assert len(grown.path) == 6 and set(fit.path) < set(grown.path)
    longer = schedule_from_fit(bed.traj, grown, Method.CLOSED_LOOP)
    shorter = schedule_from_fit(bed.traj, fit, Method.CLOSED_LOOP)
    torch.testing.assert_close(
        bed.heldout_errors(longer), bed.heldout_errors(shorter), rtol=1e-9, atol=1e-12
    )


def test_the_new_search_beats_the_old_one(bed: Testbed) -> None:
    ratios = []
    for k in (4, 5, 6):
        old = float(bed.heldout_errors(baseline_search(bed.traj, k, bed.cal_fn)).mean())
        new = float(bed.heldout_errors(bed.schedules[k]).mean())
        ratios.append(new / old)
    assert max(ratios) <= 1.0 and min(ratios) < 0.8, ratios


def test_fit_report_has_tail_and_worst_condition_stats(bed: Testbed) -> None:
    report = bed.schedules[5].fit_report
    fitted, validation = report.fit_stats, report.validation
    assert fitted.num_examples + validation.num_examples == 192
    assert validation.num_examples == 48  # a quarter of each class's 64 examples
    for stats in (fitted, validation):
        assert stats.worst_condition in {"class 0", "class 1", "class 2"}
        assert stats.max >= stats.p95 and stats.worst_condition_error >= stats.mean
        assert stats.mean <= stats.p95  # no blow-ups hiding in the tail
        assert stats.worst_condition_error <= 3 * stats.mean
    held = heldout_report(bed.schedules[5], bed.held, bed.held_fn)  # samples in float32
    errors = bed.heldout_errors(bed.schedules[5]).numpy()
    assert held.olss_stats.mean == pytest.approx(float(errors.mean()), rel=1e-4)
    assert held.olss_stats.p95 == pytest.approx(float(np.percentile(errors, 95)), rel=1e-4)
    assert report.cost.evaluations > 0 and report.cost.seconds > 0


class CountingModel:
    """A selectable model that counts evaluations (one guided output for one example)."""

    def __init__(self, model, counter: list[int]) -> None:
        self.model, self.counter = model, counter

    def __call__(self, sample: torch.Tensor, timestep) -> torch.Tensor:
        self.counter[0] += sample.shape[0]
        return self.model(sample, timestep)

    def select(self, index: torch.Tensor) -> CountingModel:
        return CountingModel(self.model.select(index), self.counter)


def test_the_budget_bounds_and_counts_model_evaluations(bed: Testbed) -> None:
    counter = [0]
    budget = EvaluationBudget(max_evaluations=3000)
    model = CountingModel(bed.cal_fn, counter)
    schedules = search_steps(bed.traj, [4, 6], model, budget=budget)
    spent = sum(s.fit_report.cost.evaluations for s in schedules)
    assert spent == counter[0] == budget.evaluations
    # Past the budget only the forced first candidate and the final fits (of up to 192 examples,
    # k-1 model steps each, a few tries) run.
    assert spent <= 3000 + 4 * 192 * (3 + 5)
    unlimited = search_steps(bed.traj, [4, 6], bed.cal_fn)
    assert sum(s.fit_report.cost.evaluations for s in unlimited) > 3 * spent
    assert all(np.isfinite(s.fit_report.final_error) for s in schedules)


def test_joint_refinement_lowers_the_final_error(bed: Testbed) -> None:
    group = FitGroup(bed.traj, bed.cal_fn)
    fitter = ClosedLoopFitter([group])
    path = bed.schedules[4].fit_report.path
    greedy = fitter.fit(path)
    refined = refine_jointly(group, path, greedy.fits[0].coefficients, fitter.weights(0))
    assert refined.iterations > 0 and refined.final_loss < 0.9 * refined.initial_loss
    after = fitter.run(path, [refined.rows])
    assert fitter.score(after) < fitter.score(greedy)


def test_the_pruning_pass_finds_a_shorter_path_inside_the_longer_one() -> None:
    """At guidance 12 on a small budget, the 4-step search misses a path that the 5-step one
    found: removing one of its steps fits better, validates better and samples better on
    held-out noises than the 4-step schedule searched from below."""
    bed = Testbed(guidance=12.0, steps=())
    group, budget = FitGroup(bed.traj, bed.cal_fn), 3000
    plain = search_step_counts(
        [group], [4, 5], budget=EvaluationBudget(max_evaluations=budget), prune=False
    )
    pruned = search_step_counts([group], [4, 5], budget=EvaluationBudget(max_evaluations=budget))
    four, five = pruned
    assert four.pruned_from == 5 and plain[0].pruned_from is None
    assert set(four.fits[0].path) < set(five.fits[0].path)
    assert four.validation_errors[0] < plain[0].validation_errors[0]
    assert five.validation_errors[0] <= four.validation_errors[0]
    held = [
        float(bed.heldout_errors(schedule_from_fit(bed.traj, r.fits[0], Method.CLOSED_LOOP)).mean())
        for r in (plain[0], four)
    ]
    assert held[1] < held[0], held

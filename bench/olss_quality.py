"""OLSS quality on analytic diffusion testbeds, against diffusers' few-step samplers.

The model is exact (:mod:`devtools.analytic`: class-conditional Gaussian mixtures, isotropic or
low-rank, under Stable Diffusion's VP schedule, classifier-free guidance, epsilon or v
prediction), so every error below is the sampler's own. For each mixture and guidance scale:

1. Reference: DPM-Solver++(3M) with 1000 trailing steps (every integer timestep, ending at
   sigma = 0) from each held-out noise; DPM-Solver++(2M) with 1000 steps checks it, and
   ``bench/reference_accuracy.py`` measures its error against an adaptive ODE solution.
2. Teacher: a ``name:T`` teacher of :mod:`schedules.teachers` (default the project's,
   ``schedules.teachers.DEFAULT_TEACHER``) run on *separate* calibration noises and recorded
   with ``TrajectoryRecorder``; OLSS is fitted on it: ``closed-loop`` is the default search of
   every step count at once (:func:`schedules.olss_search.search_steps`) with ``olss
   calibrate``'s search examples and evaluation budget (``--search-examples``,
   ``--max-evaluations``), ``closed-loop (old)``
   the search as shipped before (:mod:`bench.olss_search_baseline`), ``paper`` and ``uniform``
   the paper's teacher-forced fits.
3. Every sampler runs k model evaluations from the held-out noises; the metric is the mean over
   examples of ``||x - x_ref|| / ||x_ref||``; OLSS cells also get the 95th percentile and the
   worst class's mean.

Peers run at each of the timestep spacings "leading" (SD's shipped config, steps_offset=1),
"linspace" and "trailing"; the tables show each peer at its best spacing for that step count,
chosen on the held-out set itself (which favours the peers). PNDM runs
``set_timesteps(k - 1)`` so that it, too, makes k model calls. AYS is Sabour et al. (2024)'s
StableDiffusionTimesteps, log-linearly interpolated to k steps, run with DPM-Solver++(2M).

``--guidance-grid`` measures the other question: OLSS at guidance scales between the points of
a calibrated grid (:mod:`schedules.guidance_blend`) against a schedule fitted at exactly that
scale.

Run ``python -m bench.olss_quality`` (every case; long), ``--quick`` for a smoke run,
``--out results.json`` for the raw numbers, ``--markdown`` for the tables as Markdown, and
``--merge a.json b.json ...`` for the tables of runs made case by case.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import (
    DDIMScheduler,
    DEISMultistepScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    SASolverScheduler,
    UniPCMultistepScheduler,
)

from bench.olss_search_baseline import baseline_search
from devtools.analytic import (
    GaussianMixtureDiffusion,
    MixtureConfig,
    ays_timesteps,
    record_trajectories,
)
from devtools.sd_configs import SD_DDIM_CONFIG, sd_scheduler
from schedules import Method, OLSSScheduler, search
from schedules.calibration import DEFAULT_MAX_EVALUATIONS, DEFAULT_SEARCH_EXAMPLES, DEFAULT_STEPS
from schedules.closed_loop import EvaluationBudget, FitGroup
from schedules.guidance_blend import schedule_for_guidance
from schedules.heldout import example_errors
from schedules.olss_search import search_guidance_grid, search_steps
from schedules.sampling import ModelFn, run_sampler
from schedules.schedule_file import Schedule
from schedules.teachers import DEFAULT_TEACHER, Teacher, parse_teacher

OLD = "closed-loop (old)"
OLSS_METHODS = (Method.CLOSED_LOOP.value, OLD, Method.PAPER.value, Method.UNIFORM.value)
SPACINGS = ("leading", "linspace", "trailing")
ERROR_CAP = 1e3

MIXTURES: dict[str, MixtureConfig] = {
    "sharp-d16": MixtureConfig(
        dim=16, num_classes=4, components_per_class=2, separation=3.0, component_std=0.3
    ),
    "sharp-d64": MixtureConfig(
        dim=64, num_classes=8, components_per_class=2, separation=4.0, component_std=0.2
    ),
    "broad-d32": MixtureConfig(
        dim=32, num_classes=4, components_per_class=3, separation=2.0, component_std=0.7
    ),
    "lowrank-d64": MixtureConfig(
        dim=64, num_classes=6, components_per_class=2, separation=3.0, component_std=0.3, rank=4
    ),
    "many-d24": MixtureConfig(
        dim=24, num_classes=16, components_per_class=1, separation=4.0, component_std=0.15
    ),
    "lowrank-d128": MixtureConfig(
        dim=128,
        num_classes=10,
        components_per_class=3,
        separation=2.5,
        component_std=0.4,
        rank=8,
        off_subspace_std=0.05,
    ),
}
HELD_OUT_MIXTURES = ("many-d24", "lowrank-d128")
"""Kept out of the development of the search: run only for the final tables."""
QUICK_MIXTURE = MixtureConfig(dim=8, num_classes=3, components_per_class=2, separation=3.0)
TARGETS = {4: 0.25, 5: 0.25, 6: 0.25, 8: 0.5, 10: 0.5}
"""Issue 9: OLSS error at most this times the best peer's, by step count."""
TEACHER_FACTOR_AT_10 = 1.5
WORST_CONDITION_FACTOR = 3.0


@dataclass(frozen=True)
class Peer:
    """A diffusers sampler to compare against, built with SD's betas.

    Args:
        name: label in the tables.
        cls: the diffusers scheduler class.
        kwargs: config overrides.
        spacings: ``timestep_spacing`` values to try (the best one is reported).
        extra_calls: model calls beyond ``num_inference_steps`` (1 for PNDM with
            ``skip_prk_steps``), subtracted so every sampler makes the same number of calls.
        timesteps_fn: explicit timesteps for k calls (AYS) instead of ``set_timesteps(k)``.
    """

    name: str
    cls: type
    kwargs: dict[str, Any] = field(default_factory=dict)
    spacings: tuple[str, ...] = SPACINGS
    extra_calls: int = 0
    timesteps_fn: Callable[[int], list[int]] | None = None

    def make(self, spacing: str | None, prediction_type: str = "epsilon") -> Any:
        """A fresh scheduler; ``"leading"`` gets SD's ``steps_offset=1``."""
        extra: dict[str, Any] = {"prediction_type": prediction_type}
        if spacing is not None:
            extra |= {"timestep_spacing": spacing, "steps_offset": int(spacing == "leading")}
        return sd_scheduler(self.cls, **self.kwargs, **extra)

    def run(
        self,
        model_fn: ModelFn,
        noise: torch.Tensor,
        num_calls: int,
        spacing: str | None,
        prediction_type: str = "epsilon",
    ) -> torch.Tensor:
        """The final samples of a run with ``num_calls`` model calls."""
        if self.timesteps_fn is not None:
            scheduler = self.make(None, prediction_type)
            return run_sampler(scheduler, model_fn, noise, timesteps=self.timesteps_fn(num_calls))
        n = num_calls - self.extra_calls
        scheduler = self.make(spacing, prediction_type)
        return run_sampler(scheduler, model_fn, noise, num_inference_steps=n)


def deterministic_tau(_: float) -> float:
    """SA-Solver's stochasticity tau(t) = 0: its deterministic (ODE) predictor-corrector."""
    return 0.0


_DDIM = {"set_alpha_to_one": True, "clip_sample": False}
_KARRAS = {"use_karras_sigmas": True}
_DPM_SOLVER = {"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"}
_UNIPC_BH1 = {"solver_type": "bh1", "final_sigmas_type": "sigma_min"}
"""bh1's last step to sigma = 0 gives NaN in diffusers 0.42.1; it ends at sigma_min instead."""
PEERS: tuple[Peer, ...] = (
    Peer("DDIM", DDIMScheduler, _DDIM),
    Peer("PNDM", PNDMScheduler, {"skip_prk_steps": True, "set_alpha_to_one": True}, SPACINGS, 1),
    Peer("Euler", EulerDiscreteScheduler),
    Peer("Euler Karras", EulerDiscreteScheduler, _KARRAS, ("linspace",)),
    Peer("LMS", LMSDiscreteScheduler),
    Peer("LMS Karras", LMSDiscreteScheduler, _KARRAS, ("linspace",)),
    Peer("DEIS", DEISMultistepScheduler),
    Peer("DEIS-3", DEISMultistepScheduler, {"solver_order": 3}),
    Peer("DEIS Karras", DEISMultistepScheduler, _KARRAS, ("linspace",)),
    Peer("DPM-Solver-2M", DPMSolverMultistepScheduler, _DPM_SOLVER),
    Peer("DPM++2M", DPMSolverMultistepScheduler),
    Peer("DPM++2M Karras", DPMSolverMultistepScheduler, _KARRAS, ("linspace",)),
    Peer("DPM++3M", DPMSolverMultistepScheduler, {"solver_order": 3}),
    Peer(
        "DPM++3M Karras", DPMSolverMultistepScheduler, {"solver_order": 3, **_KARRAS}, ("linspace",)
    ),
    Peer("UniPC", UniPCMultistepScheduler),
    Peer("UniPC-3", UniPCMultistepScheduler, {"solver_order": 3}),
    Peer("UniPC bh1", UniPCMultistepScheduler, _UNIPC_BH1),
    Peer("UniPC Karras", UniPCMultistepScheduler, _KARRAS, ("linspace",)),
    Peer("SA-Solver", SASolverScheduler, {"tau_func": deterministic_tau}),
    Peer("AYS DPM++2M", DPMSolverMultistepScheduler, timesteps_fn=ays_timesteps),
)
"""Every deterministic multistep sampler of diffusers that runs on SD's VP betas (each order
and solver variant that changes its steps), with Karras sigmas where it takes them, plus AYS."""


@dataclass(frozen=True)
class BenchConfig:
    """What one run measures."""

    steps: tuple[int, ...] = (4, 5, 6, 8, 10)
    guidances: tuple[float, ...] = (1.5, 3.0, 5.0, 7.5, 12.0)
    mixtures: tuple[str, ...] = tuple(MIXTURES)
    num_calibration: int = 1024
    num_heldout: int = 128
    teacher: str = DEFAULT_TEACHER
    prediction_type: str = "epsilon"
    reference_steps: int = 1000
    old_search: bool = True
    seed: int = 0
    search_examples: int | None = DEFAULT_SEARCH_EXAMPLES
    max_evaluations: int | None = DEFAULT_MAX_EVALUATIONS

    def search_budget(self) -> EvaluationBudget:
        """``olss calibrate``'s search budget (``max_evaluations`` for its default step counts),
        scaled to this run's step counts so that each k gets about the share it gets there."""
        if self.max_evaluations is None:
            return EvaluationBudget()
        scale = sum(self.steps) / sum(DEFAULT_STEPS)
        return EvaluationBudget(max_evaluations=round(self.max_evaluations * scale))


@dataclass
class CaseResult:
    """Errors of every sampler for one (mixture, guidance) case, keyed by step count."""

    mixture: str
    guidance: float
    errors: dict[str, dict[int, float]]
    peer_spacing: dict[str, dict[int, str]]
    teacher_error: float
    reference_check: float
    search_seconds: dict[str, dict[int, float]]
    olss_paths: dict[str, dict[int, list[int]]]
    p95: dict[str, dict[int, float]]
    worst_condition: dict[str, dict[int, float]]
    evaluations: dict[int, int]

    def best_peer(self, k: int) -> tuple[str, float]:
        """The peer with the lowest error at k steps."""
        peers = [(name, errs[k]) for name, errs in self.errors.items() if name not in OLSS_METHODS]
        return min(peers, key=lambda item: item[1])


def mean_relative_error(sample: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean over examples of ``||x - x_ref|| / ||x_ref||`` (capped at ``ERROR_CAP``)."""
    value = float(example_errors(sample, reference).mean())
    return value if math.isfinite(value) else ERROR_CAP


def bench_teacher(spec: str, prediction_type: str = "epsilon") -> Teacher:
    """The teacher ``spec`` (:func:`schedules.teachers.parse_teacher`) on SD 1.5's scheduler
    config, as ``olss calibrate`` builds it for an SD model."""
    return parse_teacher(spec, {**SD_DDIM_CONFIG, "prediction_type": prediction_type})


def _noise(n: int, dim: int, seed: int) -> torch.Tensor:
    return torch.randn(n, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


@dataclass
class Testbed:
    """One (mixture, guidance): calibration trajectories, held-out noises, reference, teacher."""

    mixture: MixtureConfig
    guidance: float
    cfg: BenchConfig

    def __post_init__(self) -> None:
        cfg, mixture = self.cfg, self.mixture
        self.model = GaussianMixtureDiffusion(mixture)
        labels = torch.arange(cfg.num_calibration) % mixture.num_classes
        self.heldout_labels = torch.arange(cfg.num_heldout) % mixture.num_classes
        self.heldout_noise = _noise(cfg.num_heldout, mixture.dim, 2 * cfg.seed + 2)
        self.cal_fn = self.model.model_fn(labels, self.guidance, cfg.prediction_type)
        self.heldout_fn = self.model.model_fn(
            self.heldout_labels, self.guidance, cfg.prediction_type
        )
        self.teacher = bench_teacher(cfg.teacher, cfg.prediction_type)
        noise = _noise(cfg.num_calibration, mixture.dim, 2 * cfg.seed + 1)
        traj = record_trajectories(
            self.teacher.scheduler, self.cal_fn, noise, **self.teacher.run_kwargs()
        )
        self.traj = traj.with_metadata(
            conditions=tuple(str(int(c)) for c in labels), guidance_scale=float(self.guidance)
        )
        self.reference = self.reference_run(3)

    def reference_run(self, order: int) -> torch.Tensor:
        scheduler = sd_scheduler(
            DPMSolverMultistepScheduler,
            solver_order=order,
            timestep_spacing="trailing",
            prediction_type=self.cfg.prediction_type,
        )
        return run_sampler(scheduler, self.heldout_fn, self.heldout_noise, self.cfg.reference_steps)

    def errors(self, sample: torch.Tensor) -> np.ndarray:
        """Per held-out example ``||x - x_ref|| / ||x_ref||`` (non-finite: ``ERROR_CAP``)."""
        errors = example_errors(sample, self.reference).numpy()
        return np.where(np.isfinite(errors), errors, ERROR_CAP)

    def olss_errors(self, schedule: Schedule) -> np.ndarray:
        scheduler = OLSSScheduler.from_schedule(schedule)
        out = run_sampler(scheduler, self.heldout_fn, self.heldout_noise, schedule.num_steps)
        return self.errors(out)

    def worst_condition(self, errors: np.ndarray) -> float:
        labels = self.heldout_labels.numpy()
        return float(max(errors[labels == c].mean() for c in np.unique(labels)))


def fit_olss(bed: Testbed, method: str, steps: Sequence[int]) -> dict[int, tuple[Schedule, float]]:
    """Schedules of ``method`` for every step count, with the seconds each took."""
    if method == Method.CLOSED_LOOP:
        schedules = search_steps(
            bed.traj,
            steps,
            bed.cal_fn,
            budget=bed.cfg.search_budget(),
            search_examples=bed.cfg.search_examples,
        )
        return {s.num_steps: (s, s.fit_report.cost.seconds) for s in schedules}
    fitted = {}
    for k in steps:
        start = time.perf_counter()
        try:
            if method == OLD:
                schedule = baseline_search(bed.traj, k, bed.cal_fn)
            else:
                schedule = search(bed.traj, k, method=method)
        except ValueError:
            continue
        fitted[k] = (schedule, time.perf_counter() - start)
    return fitted


def evaluate_case(
    mixture_name: str, mixture: MixtureConfig, guidance: float, cfg: BenchConfig
) -> CaseResult:
    """Fit OLSS on calibration noises and score it and every peer on held-out noises."""
    bed = Testbed(mixture, guidance, cfg)
    reference_check = mean_relative_error(bed.reference_run(2), bed.reference)
    teacher_out = run_sampler(
        bed.teacher.scheduler, bed.heldout_fn, bed.heldout_noise, **bed.teacher.run_kwargs()
    )
    teacher_error = float(bed.errors(teacher_out).mean())
    errors: dict[str, dict[int, float]] = {}
    seconds: dict[str, dict[int, float]] = {}
    paths: dict[str, dict[int, list[int]]] = {}
    p95: dict[str, dict[int, float]] = {}
    worst: dict[str, dict[int, float]] = {}
    evaluations: dict[int, int] = {}
    methods = [m for m in OLSS_METHODS if cfg.old_search or m != OLD]
    for method in methods:
        errors[method], seconds[method], paths[method] = {}, {}, {}
        p95[method], worst[method] = {}, {}
        fitted = fit_olss(bed, method, cfg.steps)
        for k in cfg.steps:
            if k not in fitted:
                errors[method][k] = p95[method][k] = worst[method][k] = ERROR_CAP
                continue
            schedule, spent = fitted[k]
            per_example = bed.olss_errors(schedule)
            errors[method][k] = float(per_example.mean())
            p95[method][k] = float(np.percentile(per_example, 95))
            worst[method][k] = bed.worst_condition(per_example)
            seconds[method][k] = spent
            paths[method][k] = list(schedule.fit_report.path)
            if method == Method.CLOSED_LOOP and schedule.fit_report.cost is not None:
                evaluations[k] = schedule.fit_report.cost.evaluations
    spacing: dict[str, dict[int, str]] = {}
    for peer in PEERS:
        errors[peer.name], spacing[peer.name] = {}, {}
        for k in cfg.steps:
            options = peer.spacings if peer.timesteps_fn is None else ("ays",)
            scored = []
            for s in options:
                out = peer.run(bed.heldout_fn, bed.heldout_noise, k, s, cfg.prediction_type)
                scored.append((float(bed.errors(out).mean()), s))
            errors[peer.name][k], spacing[peer.name][k] = min(scored)
    return CaseResult(
        mixture_name,
        guidance,
        errors,
        spacing,
        teacher_error,
        reference_check,
        seconds,
        paths,
        p95,
        worst,
        evaluations,
    )


@dataclass
class Table:
    """A titled table of strings that prints as aligned text or as Markdown."""

    title: str
    header: list[str]
    rows: list[list[str]]

    def to_text(self) -> str:
        widths = [
            max(len(r[i]) for r in [self.header, *self.rows]) for i in range(len(self.header))
        ]
        lines = [self.title]
        for row in [self.header, *self.rows]:
            lines.append(
                "  ".join(
                    cell.rjust(w) if i else cell.ljust(w)
                    for i, (cell, w) in enumerate(zip(row, widths, strict=True))
                )
            )
        return "\n".join(lines)

    def to_markdown(self) -> str:
        lines = [f"**{self.title}**", ""]
        lines.append("| " + " | ".join(self.header) + " |")
        lines.append(
            "|" + "|".join("---" if i == 0 else "---:" for i in range(len(self.header))) + "|"
        )
        lines.extend("| " + " | ".join(row) + " |" for row in self.rows)
        return "\n".join(lines)


def _fmt(value: float) -> str:
    return f"{value:.2e}" if value < ERROR_CAP else "diverged"


def case_table(result: CaseResult, steps: Sequence[int]) -> Table:
    """Every sampler's held-out error for one case (best spacing per peer)."""
    header = ["sampler", *(f"k={k}" for k in steps)]
    rows = []
    for name, errs in result.errors.items():
        label = f"OLSS {name}" if name in OLSS_METHODS else name
        rows.append([label, *(_fmt(errs[k]) for k in steps)])
    title = (
        f"{result.mixture}, guidance {result.guidance:g}: mean relative L2 error to the reference "
        f"(teacher error {result.teacher_error:.1e}, reference check {result.reference_check:.1e})"
    )
    return Table(title, header, rows)


def summary_table(results: Sequence[CaseResult], steps: Sequence[int]) -> Table:
    """OLSS closed-loop vs the best peer per step count, as ``olss / best (ratio)``."""
    header = ["case", "teacher", *(f"k={k}" for k in steps)]
    rows = []
    for r in results:
        cells = []
        for k in steps:
            name, best = r.best_peer(k)
            olss = r.errors[Method.CLOSED_LOOP][k]
            cells.append(f"{olss:.1e} / {best:.1e} {name} **{olss / best:.2f}x**")
        rows.append([f"{r.mixture} g={r.guidance:g}", f"{r.teacher_error:.1e}", *cells])
    return Table("OLSS closed-loop error / best peer error (ratio)", header, rows)


def old_new_table(results: Sequence[CaseResult], steps: Sequence[int]) -> Table:
    """The new search against the old one: ``new / old`` errors per case and step count."""
    header = ["case", *(f"k={k}" for k in steps)]
    rows = []
    for r in results:
        if OLD not in r.errors:
            continue
        cells = []
        for k in steps:
            new, old = r.errors[Method.CLOSED_LOOP][k], r.errors[OLD][k]
            cells.append(f"{new:.1e} / {old:.1e} ({new / old:.2f}x)")
        rows.append([f"{r.mixture} g={r.guidance:g}", *cells])
    return Table("OLSS closed-loop, new search / old search (ratio)", header, rows)


def robustness_table(results: Sequence[CaseResult], steps: Sequence[int]) -> Table:
    """Per case and step count: mean / p95 / worst class mean of the new closed-loop search."""
    header = ["case", *(f"k={k}" for k in steps)]
    rows = []
    for r in results:
        m = Method.CLOSED_LOOP
        cells = [
            f"{r.errors[m][k]:.1e} / {r.p95[m][k]:.1e} / {r.worst_condition[m][k]:.1e}"
            for k in steps
        ]
        rows.append([f"{r.mixture} g={r.guidance:g}", *cells])
    return Table("OLSS closed-loop: mean / 95th percentile / worst class mean", header, rows)


def targets_table(results: Sequence[CaseResult]) -> Table:
    """Per case, issue 9's targets in one line: the largest ratio to the best peer at 4-6 and
    at 8-10 steps, 10 steps against the teacher, the largest worst-class / mean and
    mean / p95 ratios over the step counts, and whether the error falls with k."""
    m = Method.CLOSED_LOOP
    header = ["case", "4-6 / peer", "8-10 / peer", "10 / teacher", "worst / mean"]
    header += ["mean / p95", "monotone"]
    rows = []
    for r in results:
        errs = r.errors[m]
        ks = sorted(errs)
        few = [errs[k] / r.best_peer(k)[1] for k in ks if TARGETS.get(k) == 0.25]
        more = [errs[k] / r.best_peer(k)[1] for k in ks if TARGETS.get(k) == 0.5]
        rows.append(
            [
                f"{r.mixture} g={r.guidance:g}",
                f"{max(few):.2f}x" if few else "-",
                f"{max(more):.2f}x" if more else "-",
                f"{errs[10] / r.teacher_error:.2f}x" if 10 in errs else "-",
                f"{max(r.worst_condition[m][k] / errs[k] for k in ks):.2f}x",
                f"{max(errs[k] / r.p95[m][k] for k in ks):.2f}",
                "yes" if all(errs[b] <= errs[a] for a, b in itertools.pairwise(ks)) else "NO",
            ]
        )
    title = (
        "Targets: <= 0.25x at 4-6, <= 0.5x at 8-10, <= 1.5x teacher at 10, worst class <= 3x "
        "mean, mean <= p95, monotone"
    )
    return Table(title, header, rows)


def check_targets(results: Sequence[CaseResult]) -> list[str]:
    """Issue 9's targets on every case: ratio to the best peer (:data:`TARGETS`), 10 steps
    within 1.5x of the teacher's own error, mean <= p95, worst class <= 3x the mean, and the
    error never rising with the step count."""
    lines = []
    m = Method.CLOSED_LOOP
    for r in results:
        case = f"{r.mixture} g={r.guidance:g}"
        errs = r.errors[m]
        for k in sorted(errs):
            _, best = r.best_peer(k)
            limit = TARGETS.get(k)
            if limit is not None and errs[k] > limit * best:
                lines.append(f"MISSED {case} k={k}: {errs[k] / best:.2f}x the best peer > {limit}x")
            if errs[k] > r.p95[m][k]:
                lines.append(f"MISSED {case} k={k}: mean {errs[k]:.2e} > p95 {r.p95[m][k]:.2e}")
            if r.worst_condition[m][k] > WORST_CONDITION_FACTOR * errs[k]:
                ratio = r.worst_condition[m][k] / errs[k]
                lines.append(f"MISSED {case} k={k}: worst class {ratio:.1f}x the mean > 3x")
        if 10 in errs and errs[10] > TEACHER_FACTOR_AT_10 * r.teacher_error:
            ratio = errs[10] / r.teacher_error
            lines.append(f"MISSED {case} k=10: {ratio:.1f}x the teacher's error > 1.5x")
        ks = sorted(errs)
        for a, b in itertools.pairwise(ks):
            if errs[b] > errs[a]:
                lines.append(
                    f"MISSED {case}: k={b} ({errs[b]:.2e}) worse than k={a} ({errs[a]:.2e})"
                )
    return lines


def run_cases(cfg: BenchConfig, mixtures: dict[str, MixtureConfig]) -> list[CaseResult]:
    """Every (mixture, guidance) case of ``cfg``."""
    results = []
    for name in cfg.mixtures:
        for guidance in cfg.guidances:
            start = time.perf_counter()
            results.append(evaluate_case(name, mixtures[name], guidance, cfg))
            print(f"[{name} g={guidance:g}] {time.perf_counter() - start:.0f}s", file=sys.stderr)
    return results


def load_cases(paths: Sequence[Path]) -> list[CaseResult]:
    """The cases of earlier ``--out`` files (JSON keys back to step counts)."""

    def by_step(table: dict[str, Any]) -> dict[int, Any]:
        return {int(k): v for k, v in table.items()}

    results = []
    for path in paths:
        for case in json.loads(path.read_text())["cases"]:
            for name in ("errors", "peer_spacing", "search_seconds", "olss_paths"):
                case[name] = {m: by_step(t) for m, t in case[name].items()}
            for name in ("p95", "worst_condition"):
                case[name] = {m: by_step(t) for m, t in case[name].items()}
            case["evaluations"] = by_step(case["evaluations"])
            results.append(CaseResult(**case))
    return results


def analytic_tables(
    results: Sequence[CaseResult], steps: Sequence[int], old_search: bool = True
) -> dict[str, Table]:
    """The summary, robustness, old-vs-new and per-case tables of ``results``."""
    tables = {
        "analytic-summary": summary_table(results, steps),
        "analytic-robustness": robustness_table(results, steps),
        "analytic-targets": targets_table(results),
    }
    if old_search:
        tables["analytic-old-vs-new"] = old_new_table(results, steps)
    for r in results:
        tables[f"analytic-{r.mixture}-g{r.guidance:g}"] = case_table(r, steps)
    return tables


@dataclass(frozen=True)
class GridResult:
    """Off-grid guidance: blended schedules against schedules fitted at exactly that scale."""

    mixture: str
    grid: list[float]
    guidance: float
    label: dict[int, str]
    blended: dict[int, float]
    exact: dict[int, float]
    best_peer: dict[int, float]


def guidance_grid_results(
    cfg: BenchConfig,
    mixtures: dict[str, MixtureConfig],
    grid: Sequence[float],
    between: Sequence[float],
) -> list[GridResult]:
    """For each mixture: one grid search over ``grid`` (its calibration noises at every grid
    scale), then at each scale of ``between``: the blended schedule
    (:func:`schedules.guidance_blend.schedule_for_guidance`), a schedule searched at exactly
    that scale on the same noises, and the best peer."""
    results = []
    for name in cfg.mixtures:
        beds = [Testbed(mixtures[name], g, cfg) for g in grid]
        schedules = search_guidance_grid([FitGroup(b.traj, b.cal_fn) for b in beds], cfg.steps)
        for guidance in between:
            bed = Testbed(mixtures[name], guidance, cfg)
            exact = {s.num_steps: s for s in search_steps(bed.traj, cfg.steps, bed.cal_fn)}
            labels, blended, fitted, peers = {}, {}, {}, {}
            for k in cfg.steps:
                choice = schedule_for_guidance([s for s in schedules if s.num_steps == k], guidance)
                labels[k] = choice.label
                blended[k] = float(bed.olss_errors(choice.schedule).mean())
                fitted[k] = float(bed.olss_errors(exact[k]).mean())
                peers[k] = min(
                    float(bed.errors(peer.run(bed.heldout_fn, bed.heldout_noise, k, s)).mean())
                    for peer in PEERS
                    for s in (peer.spacings if peer.timesteps_fn is None else ("ays",))
                )
            results.append(GridResult(name, list(grid), guidance, labels, blended, fitted, peers))
            print(f"[grid {name} g={guidance:g}]", file=sys.stderr)
    return results


def grid_table(results: Sequence[GridResult], steps: Sequence[int]) -> Table:
    header = ["case", *(f"k={k}" for k in steps)]
    rows = []
    for r in results:
        cells = [
            f"{r.blended[k]:.1e} / {r.exact[k]:.1e} ({r.blended[k] / r.exact[k]:.2f}x)"
            for k in steps
        ]
        rows.append([f"{r.mixture} g={r.guidance:g}", *cells])
    grid = ", ".join(f"{g:g}" for g in results[0].grid) if results else ""
    return Table(f"Off-grid guidance (grid {grid}): blended / fitted at that scale", header, rows)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke run (seconds)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--markdown", action="store_true", help="print tables as Markdown")
    parser.add_argument("--teacher", default=BenchConfig.teacher, help="teacher spec name:T")
    parser.add_argument("--prediction-type", default="epsilon", choices=["epsilon", "v_prediction"])
    parser.add_argument("--calibration", type=int, default=BenchConfig.num_calibration)
    parser.add_argument("--heldout", type=int, default=BenchConfig.num_heldout)
    parser.add_argument("--mixtures", nargs="+", choices=list(MIXTURES), default=list(MIXTURES))
    parser.add_argument("--steps", nargs="+", type=int, default=list(BenchConfig.steps))
    parser.add_argument("--guidance", nargs="+", type=float, default=list(BenchConfig.guidances))
    parser.add_argument("--no-old-search", action="store_true", help="skip the old search")
    parser.add_argument(
        "--search-examples",
        type=int,
        default=BenchConfig.search_examples,
        help="examples the closed-loop path search runs on (default: olss calibrate's)",
    )
    parser.add_argument(
        "--max-evaluations",
        type=int,
        default=BenchConfig.max_evaluations,
        help="closed-loop search budget for olss calibrate's default step counts, scaled to "
        "--steps (default: olss calibrate's; 0: no limit)",
    )
    parser.add_argument(
        "--guidance-grid",
        nargs="+",
        type=float,
        help="measure off-grid guidance: fit this grid, score at the --guidance scales",
    )
    parser.add_argument(
        "--merge",
        nargs="+",
        type=Path,
        help="print the tables of earlier --out files instead of running (one case per file ok)",
    )
    parser.add_argument(
        "--digits", action="store_true", help="the olss-digits table (bench/digits_quality.py)"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.digits:
        from bench.digits_quality import main as digits_main

        return digits_main(["--threads", "1"])
    torch.set_num_threads(1)
    mixtures = dict(MIXTURES)
    if args.quick:
        mixtures = {"quick-d8": QUICK_MIXTURE}
        cfg = BenchConfig(
            steps=(4, 6),
            guidances=(7.5,),
            mixtures=("quick-d8",),
            num_calibration=64,
            num_heldout=32,
            teacher="dpmsolver++3m:100",
            reference_steps=500,
        )
    else:
        cfg = BenchConfig(
            steps=tuple(args.steps),
            guidances=tuple(args.guidance),
            mixtures=tuple(args.mixtures),
            num_calibration=args.calibration,
            num_heldout=args.heldout,
            teacher=args.teacher,
            prediction_type=args.prediction_type,
            old_search=not args.no_old_search,
            search_examples=args.search_examples,
            max_evaluations=args.max_evaluations or None,
        )
    payload: dict[str, Any] = {"config": asdict(cfg)}
    if args.guidance_grid:
        grid_results = guidance_grid_results(cfg, mixtures, args.guidance_grid, cfg.guidances)
        table = grid_table(grid_results, cfg.steps)
        print(table.to_markdown() if args.markdown else table.to_text())
        payload["grid"] = [asdict(r) for r in grid_results]
    else:
        if args.merge:
            results = load_cases(args.merge)
            steps = sorted({k for r in results for k in r.errors[Method.CLOSED_LOOP]})
            tables = analytic_tables(results, steps, all(OLD in r.errors for r in results))
        else:
            results = run_cases(cfg, mixtures)
            tables = analytic_tables(results, cfg.steps, cfg.old_search)
        for table in tables.values():
            print(table.to_markdown() if args.markdown else table.to_text(), end="\n\n")
        missed = check_targets(results)
        print("targets met" if not missed else "\n".join(missed))
        payload |= {
            "mixtures": {name: asdict(mixtures[name]) for name in cfg.mixtures},
            "cases": [asdict(r) for r in results],
            "targets_missed": missed,
            "tables": {name: asdict(t) for name, t in tables.items()},
        }
    if args.out is not None:
        args.out.write_text(json.dumps(payload, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

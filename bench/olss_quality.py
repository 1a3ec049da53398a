"""OLSS quality on an analytic diffusion testbed, against diffusers' few-step samplers.

The model is exact (:mod:`devtools.analytic`: class-conditional Gaussian mixtures under Stable
Diffusion's VP schedule, classifier-free guidance), so every error below is the sampler's own.
For each mixture and guidance scale:

1. Reference: DPM-Solver++(3M) with 1000 trailing steps (every integer timestep, ending at
   sigma = 0) from each held-out noise; DPM-Solver++(2M) with 1000 steps checks it.
2. Teacher: a sampler run on *separate* calibration noises and recorded with
   ``TrajectoryRecorder``; OLSS (closed-loop, paper, uniform) is fitted on it by ``search``.
3. Every sampler runs k model evaluations from the held-out noises; the metric is the mean over
   examples of ``||x - x_ref|| / ||x_ref||``.

Peers run at each of the timestep spacings "leading" (SD's shipped config, steps_offset=1),
"linspace" and "trailing"; the table shows each peer at its best spacing for that step count,
chosen on the held-out set itself (which favours the peers). PNDM runs
``set_timesteps(k - 1)`` so that it, too, makes k model calls. AYS is Sabour et al. (2024)'s
StableDiffusionTimesteps, log-linearly interpolated to k steps, run with DPM-Solver++(2M).

Run ``python -m bench.olss_quality`` (all cases, a few minutes on 2 CPU cores),
``--quick`` for a smoke run, ``--out results.json`` for the raw numbers, ``--markdown`` for the
tables as Markdown.
"""

from __future__ import annotations

import argparse
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
    PNDMScheduler,
    UniPCMultistepScheduler,
)

from devtools.analytic import (
    GaussianMixtureDiffusion,
    MixtureConfig,
    ays_timesteps,
    record_trajectories,
)
from devtools.sd_configs import sd_scheduler
from schedules import Method, OLSSScheduler, search
from schedules.gram import gram_matrix
from schedules.sampling import ModelFn, run_sampler

OLSS_METHODS = tuple(Method)
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
}
QUICK_MIXTURE = MixtureConfig(dim=8, num_classes=3, components_per_class=2, separation=3.0)


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

    def make(self, spacing: str | None) -> Any:
        """A fresh scheduler; ``"leading"`` gets SD's ``steps_offset=1``."""
        extra: dict[str, Any] = {}
        if spacing is not None:
            extra = {"timestep_spacing": spacing, "steps_offset": int(spacing == "leading")}
        return sd_scheduler(self.cls, **self.kwargs, **extra)

    def run(
        self, model_fn: ModelFn, noise: torch.Tensor, num_calls: int, spacing: str | None
    ) -> torch.Tensor:
        """The final samples of a run with ``num_calls`` model calls."""
        if self.timesteps_fn is not None:
            return run_sampler(
                self.make(None), model_fn, noise, timesteps=self.timesteps_fn(num_calls)
            )
        n = num_calls - self.extra_calls
        return run_sampler(self.make(spacing), model_fn, noise, num_inference_steps=n)


_DDIM = {"set_alpha_to_one": True, "clip_sample": False}
PEERS: tuple[Peer, ...] = (
    Peer("DDIM", DDIMScheduler, _DDIM),
    Peer("PNDM", PNDMScheduler, {"skip_prk_steps": True, "set_alpha_to_one": True}, SPACINGS, 1),
    Peer("Euler", EulerDiscreteScheduler),
    Peer("DEIS", DEISMultistepScheduler),
    Peer("DPM++2M", DPMSolverMultistepScheduler),
    Peer("DPM++2M Karras", DPMSolverMultistepScheduler, {"use_karras_sigmas": True}, ("linspace",)),
    Peer("DPM++3M", DPMSolverMultistepScheduler, {"solver_order": 3}),
    Peer(
        "DPM++3M Karras",
        DPMSolverMultistepScheduler,
        {"solver_order": 3, "use_karras_sigmas": True},
        ("linspace",),
    ),
    Peer("UniPC", UniPCMultistepScheduler),
    Peer("AYS DPM++2M", DPMSolverMultistepScheduler, timesteps_fn=ays_timesteps),
)


@dataclass(frozen=True)
class BenchConfig:
    """What one run measures."""

    steps: tuple[int, ...] = (4, 5, 6, 8, 10, 15, 20)
    guidances: tuple[float, ...] = (3.0, 7.5)
    mixtures: tuple[str, ...] = tuple(MIXTURES)
    num_calibration: int = 256
    num_heldout: int = 128
    teacher: str = "dpm3:250"
    reference_steps: int = 1000
    seed: int = 0


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

    def best_peer(self, k: int) -> tuple[str, float]:
        """The peer with the lowest error at k steps."""
        peers = [(name, errs[k]) for name, errs in self.errors.items() if name not in OLSS_METHODS]
        return min(peers, key=lambda item: item[1])


def mean_relative_error(sample: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean over examples of ``||x - x_ref|| / ||x_ref||`` (capped at ``ERROR_CAP``)."""
    diff = (sample.to(torch.float64) - reference).reshape(len(reference), -1).norm(dim=1)
    value = float((diff / reference.reshape(len(reference), -1).norm(dim=1)).mean())
    return value if math.isfinite(value) else ERROR_CAP


def teacher_scheduler(spec: str) -> tuple[Any, dict[str, Any]]:
    """``"dpm3:250"``, ``"dpm2:250"`` or ``"ddim:100"`` -> scheduler and ``run_sampler`` kwargs.

    DPM-Solver++ teachers run on ``linspace(999, 0, T)`` rounded, so, like the reference, they
    end with a step from t=0 to sigma=0; DDIM uses trailing spacing and ``set_alpha_to_one``.
    """
    name, _, steps = spec.partition(":")
    num = int(steps or 100)
    if name in ("dpm2", "dpm3"):
        timesteps = np.unique(np.linspace(999, 0, num).round().astype(int))[::-1].tolist()
        scheduler = sd_scheduler(DPMSolverMultistepScheduler, solver_order=int(name[-1]))
        return scheduler, {"timesteps": timesteps}
    if name == "ddim":
        scheduler = sd_scheduler(DDIMScheduler, timestep_spacing="trailing", **_DDIM)
        return scheduler, {"num_inference_steps": num}
    raise ValueError(f"unknown teacher {spec!r}; use dpm3:T, dpm2:T or ddim:T")


def _noise(n: int, dim: int, seed: int) -> torch.Tensor:
    return torch.randn(n, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def evaluate_case(
    mixture_name: str, mixture: MixtureConfig, guidance: float, cfg: BenchConfig
) -> CaseResult:
    """Fit OLSS on calibration noises and score it and every peer on held-out noises."""
    model = GaussianMixtureDiffusion(mixture)
    cal_labels = torch.arange(cfg.num_calibration) % mixture.num_classes
    ho_labels = torch.arange(cfg.num_heldout) % mixture.num_classes
    cal_noise = _noise(cfg.num_calibration, mixture.dim, 2 * cfg.seed + 1)
    ho_noise = _noise(cfg.num_heldout, mixture.dim, 2 * cfg.seed + 2)
    cal_fn = model.model_fn(cal_labels, guidance)
    ho_fn = model.model_fn(ho_labels, guidance)

    def reference(order: int) -> torch.Tensor:
        scheduler = sd_scheduler(
            DPMSolverMultistepScheduler, solver_order=order, timestep_spacing="trailing"
        )
        return run_sampler(scheduler, ho_fn, ho_noise, cfg.reference_steps)

    ref = reference(3)
    reference_check = mean_relative_error(reference(2), ref)

    teacher, teacher_kwargs = teacher_scheduler(cfg.teacher)
    traj = record_trajectories(teacher, cal_fn, cal_noise, **teacher_kwargs)
    teacher_error = mean_relative_error(
        run_sampler(teacher, ho_fn, ho_noise, **teacher_kwargs), ref
    )
    gram = gram_matrix(traj)

    errors: dict[str, dict[int, float]] = {}
    seconds: dict[str, dict[int, float]] = {}
    paths: dict[str, dict[int, list[int]]] = {}
    for method in OLSS_METHODS:
        errors[method], seconds[method], paths[method] = {}, {}, {}
        for k in cfg.steps:
            start = time.perf_counter()
            try:
                schedule = search(traj, num_steps=k, model_fn=cal_fn, method=method, gram=gram)
            except ValueError:
                errors[method][k] = ERROR_CAP
                continue
            seconds[method][k] = time.perf_counter() - start
            paths[method][k] = list(schedule.fit_report.path)
            out = run_sampler(OLSSScheduler.from_schedule(schedule), ho_fn, ho_noise, k)
            errors[method][k] = mean_relative_error(out, ref)

    spacing: dict[str, dict[int, str]] = {}
    for peer in PEERS:
        errors[peer.name], spacing[peer.name] = {}, {}
        for k in cfg.steps:
            options = peer.spacings if peer.timesteps_fn is None else ("ays",)
            scored = [
                (mean_relative_error(peer.run(ho_fn, ho_noise, k, s), ref), s) for s in options
            ]
            errors[peer.name][k], spacing[peer.name][k] = min(scored)
    return CaseResult(
        mixture_name, guidance, errors, spacing, teacher_error, reference_check, seconds, paths
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
    header = ["case", *(f"k={k}" for k in steps)]
    rows = []
    for r in results:
        cells = []
        for k in steps:
            name, best = r.best_peer(k)
            olss = r.errors["closed-loop"][k]
            cells.append(f"{olss:.1e} / {best:.1e} {name} ({olss / best:.2f}x)")
        rows.append([f"{r.mixture} g={r.guidance:g}", *cells])
    return Table("OLSS closed-loop error / best peer error (ratio)", header, rows)


def check_targets(results: Sequence[CaseResult]) -> list[str]:
    """The issue's targets: <= 0.25x the best peer at 4-6 steps, <= 1x up to 10 steps."""
    lines = []
    for r in results:
        for k in sorted(r.errors["closed-loop"]):
            _, best = r.best_peer(k)
            ratio = r.errors["closed-loop"][k] / best
            limit = 0.25 if 4 <= k <= 6 else 1.0 if k <= 10 else None
            if limit is not None and ratio > limit:
                lines.append(f"MISSED {r.mixture} g={r.guidance:g} k={k}: {ratio:.2f}x > {limit}x")
    return lines


def analytic_tables(
    cfg: BenchConfig, mixtures: dict[str, MixtureConfig]
) -> tuple[dict[str, Table], list[CaseResult]]:
    """Run every (mixture, guidance) case and build the summary and per-case tables."""
    results = []
    for name in cfg.mixtures:
        for guidance in cfg.guidances:
            start = time.perf_counter()
            results.append(evaluate_case(name, mixtures[name], guidance, cfg))
            print(f"[{name} g={guidance:g}] {time.perf_counter() - start:.0f}s", file=sys.stderr)
    tables = {"analytic-summary": summary_table(results, cfg.steps)}
    for r in results:
        tables[f"analytic-{r.mixture}-g{r.guidance:g}"] = case_table(r, cfg.steps)
    return tables, results


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke run (seconds)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--markdown", action="store_true", help="print tables as Markdown")
    parser.add_argument("--teacher", default=BenchConfig.teacher, help="dpm3:T, dpm2:T or ddim:T")
    parser.add_argument("--calibration", type=int, default=BenchConfig.num_calibration)
    parser.add_argument("--heldout", type=int, default=BenchConfig.num_heldout)
    parser.add_argument("--mixtures", nargs="+", choices=list(MIXTURES), default=list(MIXTURES))
    parser.add_argument("--steps", nargs="+", type=int, default=list(BenchConfig.steps))
    parser.add_argument("--guidance", nargs="+", type=float, default=list(BenchConfig.guidances))
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
            teacher="dpm3:100",
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
        )
    tables: dict[str, Table] = {}
    analytic, results = analytic_tables(cfg, mixtures)
    tables.update(analytic)
    for table in tables.values():
        print(table.to_markdown() if args.markdown else table.to_text(), end="\n\n")
    missed = check_targets(results)
    print("targets met" if not missed else "\n".join(missed))
    if args.out is not None:
        payload = {
            "config": asdict(cfg),
            "mixtures": {name: asdict(mixtures[name]) for name in cfg.mixtures},
            "cases": [asdict(r) for r in results],
            "targets_missed": missed,
            "tables": {name: asdict(t) for name, t in tables.items()},
        }
        args.out.write_text(json.dumps(payload, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

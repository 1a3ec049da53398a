"""OLSS against diffusers' samplers on ``olss-digits``, a learned model.

For held-out (prompt, seed) pairs that no schedule was fitted on, every sampler starts from the
same unit noise and runs the standard diffusers loop on the same classifier-free-guided UNet
(:class:`schedules.calibration.GuidedModel`). Two numbers per sampler and step count, at each
guidance scale asked for:

* relative L2 error ``||x - x_ref|| / ||x_ref||`` of the final latents against the reference
  :data:`REFERENCE`: DPM-Solver++(3M) with 1,000 steps down to sigma 0, built like a teacher
  (:func:`schedules.teachers.parse_teacher`), so it is more accurate than the default teacher
  (:data:`schedules.teachers.DEFAULT_TEACHER`) the schedules distil; that teacher, run from the
  same noise, is reported too (its error is the floor OLSS can reach;
  :func:`schedules.heldout.relative_error`, over all pairs);
* accuracy of the digit classifier of :mod:`bench.digits_eval` on the decoded images.

OLSS rows (Duan et al., arXiv:2305.14677), each at the requested guidance as a worker builds it
(:func:`schedules.guidance_blend.schedule_for_guidance`: the calibrated schedule, a fit in g
between two calibrated scales, else the nearest): ``closed-loop`` is the built-in registry's
schedules for the model's identity (what a worker preloads; fitted here like ``olss calibrate``
when the registry lacks them), ``paper`` and ``uniform`` (OLSS-P) are fitted here by
:func:`schedules.calibration.calibrate` with ``olss calibrate``'s defaults (teacher, guidance
grid, held-out prompts, seed) on the same prompts, only the method differs. A worker serves a
schedule's best held-out peer instead when that peer did better (``workers/schedulers.py``); the
rows show the schedule itself. Peers: DDIM, Euler, DPM-Solver++(2M), UniPC and DEIS from the
model's scheduler config.

    .venv/bin/python -m bench.digits_quality --guidance 4 7.5 --out /tmp/digits_quality.json
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DEISMultistepScheduler, StableDiffusionPipeline

from bench.digits_eval import EvalCase, accuracy, eval_cases
from schedules.calibration import DEFAULT_GUIDANCE_GRID, DEFAULT_STEPS
from schedules.samplers import build_sampler
from schedules.schedule_file import Method, Schedule
from schedules.teachers import DEFAULT_TEACHER

PEERS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "DDIM": functools.partial(build_sampler, "ddim"),
    "Euler": functools.partial(build_sampler, "euler"),
    "DPM-Solver++(2M)": functools.partial(build_sampler, "dpmsolver++"),
    "UniPC": functools.partial(build_sampler, "unipc"),
    "DEIS": DEISMultistepScheduler.from_config,
}
OLSS_METHODS = tuple(Method)
PEER_STEPS = (*DEFAULT_STEPS, 10)
REFERENCE = "dpmsolver++3m:1000"
"""The reference sampler, a teacher spec: 1,000 steps is every training timestep."""
HELDOUT_SEED_OFFSET = 50_000

BySteps = dict[int, list[Schedule]]
"""Schedules by step count, one per calibrated guidance scale."""


@dataclass(frozen=True)
class Row:
    """One sampler at one step count."""

    sampler: str
    steps: int
    rel_l2: float
    accuracy: float


@dataclass(frozen=True)
class DigitsTable:
    """The olss-digits comparison at one guidance scale and the settings that produced it."""

    model: str
    guidance_scale: float
    num_pairs: int
    reference: str
    reference_accuracy: float
    teacher: str
    teacher_rel_l2: float
    teacher_accuracy: float
    closed_loop_source: str
    rows: list[Row]

    def to_markdown(self) -> str:
        """A markdown table: one line per sampler, ``rel. L2 / accuracy`` per step count."""
        steps = sorted({row.steps for row in self.rows})
        samplers = list(dict.fromkeys(row.sampler for row in self.rows))
        cell = {(row.sampler, row.steps): row for row in self.rows}
        header = "| sampler | " + " | ".join(f"{k} steps" for k in steps) + " |"
        lines = [header, "|---|" + "---|" * len(steps)]
        for name in samplers:
            values = []
            for k in steps:
                row = cell.get((name, k))
                values.append(f"{row.rel_l2:.3f} / {row.accuracy:.0%}" if row else "-")
            lines.append(f"| {name} | " + " | ".join(values) + " |")
        return "\n".join(lines)


def load_pipeline(model: str) -> StableDiffusionPipeline:
    """The pipeline for an embedded name or a folder, on CPU, fp32, progress bars off."""
    from workers.embedded_model import resolve_model

    pipe = StableDiffusionPipeline.from_pretrained(resolve_model(model))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def by_steps(schedules: Sequence[Schedule]) -> BySteps:
    """``schedules`` grouped by step count."""
    grouped: BySteps = {}
    for schedule in schedules:
        grouped.setdefault(schedule.num_steps, []).append(schedule)
    return grouped


def builtin_schedules(model: str, steps: Sequence[int]) -> BySteps | None:
    """The built-in registry's closed-loop schedules for ``model``'s identity at ``steps``, as
    a worker preloads them; ``None`` when some step count has none."""
    from schedules import ScheduleRegistry
    from schedules.model_identity import model_identity
    from schedules.registry import BUILTIN_DIR, model_key
    from workers.embedded_model import resolve_model
    from workers.schedulers import load_model_schedules

    source = resolve_model(model)
    loaded = load_model_schedules(
        ScheduleRegistry(BUILTIN_DIR), model_key(source), model_identity(source)
    )
    found = by_steps([s for s in loaded if s.method == Method.CLOSED_LOOP])
    return found if all(k in found for k in steps) else None


def olss_schedules(
    pipe: StableDiffusionPipeline,
    model: str,
    steps: Sequence[int],
    guidance_grid: Sequence[float],
    prompts: Sequence[str],
    seed: int,
) -> tuple[dict[str, BySteps], str]:
    """Schedules per method and step count, and where the closed-loop ones come from: the
    built-in registry if it has them all, everything else fitted with
    :func:`schedules.calibration.calibrate` at ``olss calibrate``'s defaults."""
    from schedules.calibration import CalibrationConfig, calibrate

    found: dict[str, BySteps] = {}
    source = "fitted here with olss calibrate's defaults"
    for method in OLSS_METHODS:
        if method == Method.CLOSED_LOOP:
            shipped = builtin_schedules(model, steps)
            if shipped is not None:
                found[method] = shipped
                source = "the built-in registry"
                continue
        config = CalibrationConfig(
            num_steps=list(steps), guidance_scale=list(guidance_grid), seed=seed, method=method
        )
        found[method] = by_steps(calibrate(pipe, prompts, config, model_id=model, progress=False))
    return found, source


@torch.no_grad()
def decode(pipe: StableDiffusionPipeline, latents: torch.Tensor) -> np.ndarray:
    """Latents -> images ``(N, H, W, 3)`` in [0, 1], as the pipeline would return them."""
    images = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    return pipe.image_processor.postprocess(images, output_type="np")


def guidance_table(
    pipe: StableDiffusionPipeline,
    model: str,
    model_fn: Any,
    noise: torch.Tensor,
    digits: Sequence[int],
    schedules: dict[str, BySteps],
    closed_loop_source: str,
    steps: Sequence[int],
    olss_steps: Sequence[int],
) -> DigitsTable:
    """The table at ``model_fn``'s guidance scale (a :class:`schedules.calibration.GuidedModel`)
    for the held-out ``noise`` and requested ``digits``."""
    from schedules.guidance_blend import schedule_for_guidance
    from schedules.heldout import relative_error
    from schedules.sampling import run_sampler
    from schedules.scheduler import OLSSScheduler
    from schedules.teachers import parse_teacher

    config = dict(pipe.scheduler.config)
    guidance = model_fn.guidance_scale

    def run_spec(spec: str) -> torch.Tensor:
        sampler = parse_teacher(spec, config)
        return run_sampler(sampler.scheduler, model_fn, noise, **sampler.run_kwargs())

    reference = run_spec(REFERENCE)
    teacher = run_spec(DEFAULT_TEACHER)
    rows: list[Row] = []

    def measure(name: str, scheduler: Any, k: int) -> None:
        final = run_sampler(scheduler, model_fn, noise, k)
        rows.append(
            Row(name, k, relative_error(final, reference), accuracy(decode(pipe, final), digits))
        )

    for method, fitted in schedules.items():
        for k in olss_steps:
            served = schedule_for_guidance(fitted[k], guidance).schedule
            measure(f"OLSS {method}", OLSSScheduler.from_schedule(served), k)
    for name, factory in PEERS.items():
        for k in steps:
            measure(name, factory(config), k)
    return DigitsTable(
        model=model,
        guidance_scale=guidance,
        num_pairs=len(digits),
        reference=REFERENCE,
        reference_accuracy=accuracy(decode(pipe, reference), digits),
        teacher=DEFAULT_TEACHER,
        teacher_rel_l2=relative_error(teacher, reference),
        teacher_accuracy=accuracy(decode(pipe, teacher), digits),
        closed_loop_source=closed_loop_source,
        rows=rows,
    )


def digits_tables(
    model: str = "olss-digits",
    steps: Sequence[int] = PEER_STEPS,
    olss_steps: Sequence[int] = DEFAULT_STEPS,
    guidance_scales: Sequence[float] | None = None,
    num_pairs: int = 100,
    prompts_file: str | None = None,
    seed: int = 0,
) -> list[DigitsTable]:
    """Compare OLSS with diffusers' samplers on held-out pairs of ``model`` (see module doc),
    one table per guidance scale.

    Args:
        model: embedded name or diffusers folder.
        steps: step counts for the diffusers samplers.
        olss_steps: step counts for OLSS (those calibrated).
        guidance_scales: CFG scales (default: the model's ``olss_defaults.json``, else 4); the
            OLSS fits here use the default guidance grid and these scales.
        num_pairs: held-out (prompt, seed) pairs, seeds from 50,000 on.
        prompts_file: calibration prompts (default: the model folder's
            ``calibration_prompts.txt``).
        seed: as for ``olss calibrate``.
    """
    from schedules.calibration import GuidedModel, load_prompts
    from workers.embedded_model import model_defaults, resolve_model

    folder = Path(resolve_model(model))
    if guidance_scales is None:
        guidance_scales = [model_defaults(model).guidance_scale or 4.0]
    prompts = load_prompts(prompts_file or folder / "calibration_prompts.txt")
    pipe = load_pipeline(model)
    grid = sorted({*DEFAULT_GUIDANCE_GRID, *guidance_scales})
    schedules, closed_loop_source = olss_schedules(pipe, model, olss_steps, grid, prompts, seed)

    cases: list[EvalCase] = eval_cases(num_pairs, seed_offset=HELDOUT_SEED_OFFSET)
    digits = [case.digit for case in cases]
    with torch.no_grad():
        cond, uncond = pipe.encode_prompt(
            [case.prompt for case in cases], pipe.device, 1, True, [""] * len(cases)
        )
    size = pipe.unet.config.sample_size
    noise = torch.stack(
        [
            torch.randn(
                (pipe.unet.config.in_channels, size, size),
                generator=torch.Generator().manual_seed(case.seed),
            )
            for case in cases
        ]
    )
    tables = []
    for guidance in guidance_scales:
        model_fn = GuidedModel(pipe, cond, uncond, guidance, batch_size=len(cases))
        tables.append(
            guidance_table(
                pipe,
                model,
                model_fn,
                noise,
                digits,
                schedules,
                closed_loop_source,
                steps,
                olss_steps,
            )
        )
    return tables


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: print the tables as markdown; ``--out`` also writes them as JSON."""
    parser = argparse.ArgumentParser(description="OLSS vs diffusers samplers on olss-digits")
    parser.add_argument("--model", default="olss-digits")
    parser.add_argument("--steps", type=int, nargs="+", default=list(PEER_STEPS))
    parser.add_argument("--olss-steps", type=int, nargs="+", default=list(DEFAULT_STEPS))
    parser.add_argument(
        "--guidance",
        type=float,
        nargs="+",
        default=None,
        help="CFG scales, one table each (default: the model's default guidance)",
    )
    parser.add_argument("--pairs", type=int, default=100)
    parser.add_argument("--prompts", default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    tables = digits_tables(
        model=args.model,
        steps=args.steps,
        olss_steps=args.olss_steps,
        guidance_scales=args.guidance,
        num_pairs=args.pairs,
        prompts_file=args.prompts,
    )
    seconds = time.perf_counter() - start
    for table in tables:
        print(
            f"{table.model}, guidance {table.guidance_scale:g}, {table.num_pairs} held-out pairs, "
            f"reference {table.reference} (accuracy {table.reference_accuracy:.0%}), teacher "
            f"{table.teacher} (rel. L2 {table.teacher_rel_l2:.4f}, accuracy "
            f"{table.teacher_accuracy:.0%}), closed-loop: {table.closed_loop_source}; "
            "cells: rel. L2 to reference / classifier accuracy"
        )
        print(table.to_markdown())
    print(f"{seconds:.0f} s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        data = {"seconds": seconds, "tables": [asdict(table) for table in tables]}
        args.out.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
